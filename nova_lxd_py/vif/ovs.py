"""Open vSwitch ports ('ovs' VIFs), wired by os-vif's ovs plugin.

Neutron's OVS agent and ovn-controller find a port on the integration
bridge by its Interface row's ``external_ids:iface-id`` (with
``attached-mac`` and ``vm-uuid`` beside it), wire its flows and only then
report it up (network-vif-plugged). With KVM, libvirt adds its tap to OVS
with those ids; here nothing else would, so the port profile asks os-vif to
create the port (``create_port``) for the host end of our veth pair, which
exists by then.

With hybrid plug (Neutron's iptables firewall on ML2/OVS), os-vif makes
the per-port Linux bridge ``qbr<port>`` and the ``qvb``/``qvo`` pair into
OVS; the host end joins qbr where libvirt's tap would, so the firewall
finds it under the name it expects.

os-vif creates the integration bridge, if missing, with the binding's
``details.datapath_type``. With OVS's userspace ``netdev`` datapath
ovs-vswitchd reads and writes the veth through a packet socket, so a host
without the openvswitch kernel module can run OVS ports too; the guest's
end then computes its own checksums (``net.disable_tx_checksum``).

With ``[lxc] ovs_network_namespace`` set, ovs-vswitchd runs in that named
network namespace (as it can with the netdev datapath): the host end is
moved there before os-vif adds it, for ovs-vswitchd opens ports by name
in its own namespace. os-vif only talks to the switch's database then;
the device operations it would do itself look for the device in
nova-compute's namespace and find none. Hybrid plug is refused with it:
os-vif would make qbr and the qvb/qvo pair in nova-compute's namespace,
where ovs-vswitchd cannot open qvo.

os-vif reads ``[os_vif_ovs]`` (``ovsdb_connection`` ...) when it is
initialized, on the first OVS port, and does its privileged work through
its own privsep context (``[vif_plug_ovs_privileged]``).
"""

import os
import threading

from nova.network import model
from nova.network import os_vif_util
import os_vif
from os_vif import objects as osv_objects
from pyroute2 import netns as pyroute2_netns

from nova_lxd_py import conf
from nova_lxd_py.privsep import net
from nova_lxd_py.vif import naming
from nova_lxd_py.vif import wiring

CONF = conf.CONF
NETDEV = model.VIF_DETAILS_OVS_DATAPATH_NETDEV

_init_lock = threading.Lock()
_initialized = False


def _initialize():
    """Load os-vif's plugins once per process, on first use.

    Not at import: os-vif registers and reads its options when it loads
    its plugins, after nova-compute has parsed its config files.
    """
    global _initialized
    with _init_lock:
        if not _initialized:
            os_vif.initialize()
            _initialized = True


def to_osvif(vif):
    """os-vif's object for an 'ovs' VIF, naming the host end as ours."""
    _initialize()
    vnic_type = vif.get('vnic_type', model.VNIC_TYPE_NORMAL)
    if vnic_type != model.VNIC_TYPE_NORMAL:
        # Direct (SR-IOV) and remote-managed ports hand a VF to the guest.
        raise naming.InvalidVif('port %s has vnic_type %s; a container '
                                'gets normal ports only'
                                % (vif.get('id'), vnic_type))
    try:
        obj = os_vif_util.nova_to_osvif_vif(vif)
    except Exception as e:
        raise naming.InvalidVif('port %s: %s' % (vif.get('id'), e))
    obj.vif_name = naming.host_name(vif)
    profile = obj.port_profile
    if 'create_tap' in profile.fields:
        profile.create_tap = False   # the device is our veth
    if isinstance(obj, osv_objects.vif.VIFOpenVSwitch):
        profile.create_port = True
    return obj


def _hybrid(obj):
    return isinstance(obj, osv_objects.vif.VIFBridge)


def _instance_info(instance):
    return os_vif_util.nova_to_osvif_instance(instance)


class OpenVSwitch(wiring.Wiring):
    """'ovs': a port of the integration bridge, directly or hybrid."""

    def check(self, vif):
        obj = to_osvif(vif)
        if 'bridge' not in obj.network:
            raise naming.InvalidVif('port %s names no integration bridge'
                                    % vif.get('id'))
        naming.checked_ifname(obj.network.bridge)
        if _hybrid(obj):
            if CONF.lxc.ovs_network_namespace:
                raise naming.InvalidVif(
                    'port %s asks for hybrid plug (ovs_hybrid_plug, '
                    'Neutron\'s iptables_hybrid firewall), which [lxc] '
                    'ovs_network_namespace does not support; use the '
                    'openvswitch or noop firewall driver'
                    % vif.get('id'))
            naming.checked_ifname(obj.bridge_name)

        netns = CONF.lxc.ovs_network_namespace
        if netns and not os.path.exists(os.path.join(
                pyroute2_netns.NETNS_RUN_DIR, naming.checked_netns(netns))):
            raise naming.InvalidVif(
                'network namespace %s ([lxc] ovs_network_namespace) does '
                'not exist: is ovs-vswitchd running?' % netns)

    def host_netns(self, vif):
        return CONF.lxc.ovs_network_namespace

    def bridge(self, instance, vif):
        obj = to_osvif(vif)
        if not _hybrid(obj):
            return None   # OVS's kernel datapath enslaves the device
        os_vif.plug(obj, _instance_info(instance))
        return obj.bridge_name

    def reads_by_packet_socket(self, vif):
        return to_osvif(vif).port_profile.datapath_type == NETDEV

    def attach(self, instance, vif):
        obj = to_osvif(vif)
        if obj.port_profile.datapath_type == NETDEV:
            # ovs-vswitchd reads the host end (or qvo) through a packet
            # socket, which leaves checksums unfilled.
            net.disable_tx_checksum(naming.peer_name(vif))
        if not _hybrid(obj):
            os_vif.plug(obj, _instance_info(instance))

    def detach(self, instance, vif):
        # Removes the OVS port (and, hybrid, qbr with qvb/qvo); the ovs
        # plugin also deletes the device it named, i.e. our host end.
        os_vif.unplug(to_osvif(vif), _instance_info(instance))
