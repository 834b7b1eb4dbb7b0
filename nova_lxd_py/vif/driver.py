"""Plug Neutron ports into containers: one veth pair per port.

The host end, named as Neutron's agents expect (``naming.host_name``), is
what the port's backend wires: it joins the network's Linux bridge
('bridge' VIFs) or is left to the agent that routes to it ('tap' VIFs, as
Calico binds them). The other end waits on the host, down, under a
temporary name (``naming.peer_name``) until liblxc moves it into the
container at start (``lxc.net.N.type = phys``, see ``virt.config``): the
guest's ethN, with the port's MAC and MTU, exists before its init runs.
When the container stops, liblxc gives the device back to the host under
the same temporary name, so the next start finds it again.

The pair is made here for every VIF type; what the port's backend expects
around its host end is a ``wiring.Wiring`` per type (HOST_SIDES). 'bridge'
and 'tap' are wired here with pyroute2, not by os-vif: Nova 34 no longer
converts 'bridge' VIFs to os-vif objects (``nova_to_osvif_vif`` raises
"Linux bridge VIF type is no longer supported"), it leaves 'tap' VIFs to
the legacy path (no object), and os-vif 5.3 no longer ships a linux_bridge
plugin. 'ovs' ports go through os-vif's ovs plugin (``vif.ovs``).
"""

from nova import exception as nova_exception
from nova.network import model
from oslo_log import log as logging

from nova_lxd_py import exception
from nova_lxd_py.privsep import net
from nova_lxd_py.vif import naming
from nova_lxd_py.vif import ovs
from nova_lxd_py.vif import qos
from nova_lxd_py.vif import wiring

LOG = logging.getLogger(__name__)


# vif_type -> what its host side needs around the veth pair.
HOST_SIDES = {
    model.VIF_TYPE_BRIDGE: wiring.LinuxBridge(),
    model.VIF_TYPE_TAP: wiring.Routed(),
    model.VIF_TYPE_OVS: ovs.OpenVSwitch(),
}


def check(vif):
    """Refuse a VIF we cannot plug, before anything is created for it."""
    if vif.get('type') not in HOST_SIDES:
        raise exception.VifTypeNotSupported(
            port=vif.get('id'), vif_type=vif.get('type'),
            supported=', '.join(sorted(HOST_SIDES)))
    try:
        naming.host_name(vif)
        naming.peer_name(vif)
        naming.mac(vif)
        naming.mtu(vif)
        HOST_SIDES[vif['type']].check(vif)
    except naming.InvalidVif as e:
        raise exception.VifPlugFailed(port=vif.get('id'), reason=e)


def check_all(instance, network_info):
    """Refuse ports, or the flavor's limits on them, before anything is
    made."""
    for vif in network_info:
        check(vif)
    if network_info:
        qos.check(instance)


def plug(instance, vif):
    """Make the port's veth pair, wire its host end and give it the
    flavor's bandwidth limits; idempotent."""
    check(vif)
    qos.check(instance)
    _plug(instance, vif)


def _plug(instance, vif):
    side = HOST_SIDES[vif['type']]
    try:
        bridge = side.bridge(instance, vif)
        net.ensure_veth(naming.host_name(vif), naming.peer_name(vif),
                        naming.mac(vif), naming.mtu(vif) or 0, bridge,
                        side.host_netns(vif))
        side.attach(instance, vif)
        qos.apply(instance, vif, side)
    except Exception as e:
        raise exception.VifPlugFailed(port=vif['id'], reason=e) from e
    LOG.debug('Port %(port)s plugged as %(dev)s', {
        'port': vif['id'], 'dev': naming.host_name(vif)}, instance=instance)


def unplug(instance, vif):
    """Unwire the port and delete its veth pair, wherever its guest end is.

    The pair goes even if unwiring fails: a guest must not keep a device
    of a port that Nova considers gone.
    """
    try:
        names = (naming.host_name(vif), naming.peer_name(vif))
    except naming.InvalidVif as e:
        LOG.warning('Not unplugging a VIF: %s', e, instance=instance)
        return
    errors = []
    side = HOST_SIDES.get(vif.get('type'))
    if side is not None:
        try:
            side.detach(instance, vif)
        except Exception as e:
            errors.append(e)
    try:
        _delete_pair(names, side.host_netns(vif) if side else '')
    except Exception as e:
        errors.append(e)
    try:
        qos.remove(vif)
    except Exception as e:
        errors.append(e)
    if errors:
        raise nova_exception.VirtualInterfaceUnplugException(
            reason='port %s: %s' % (vif.get('id'), errors[0])) from errors[0]


def _delete_pair(names, host_netns):
    """Delete the pair by its host end, in its namespace or (a plug
    stopped before the move, or the option changed since) in ours, else
    by its peer: the peer alone is left only by a pair made half way."""
    host, peer = names
    if host_netns and net.delete_veth(host, host_netns):
        return
    if not net.delete_veth(host):
        net.delete_veth(peer)


def delete_by_peer(peer):
    """Delete a port's devices known only by its guest end (a stopped
    orphan's config names it): the pair, host end included, and the ifb
    of its outbound limit. True if there was a pair."""
    deleted = net.delete_veth(peer)
    try:
        net.delete_ifb(naming.ifb_of_peer(peer))
    except naming.InvalidVif:
        pass   # not a name of ours: no ifb either
    return deleted


def plug_all(instance, network_info):
    """Plug ports that passed check_all (spawn checks before it makes
    anything). On a failure the caller unplugs them all: unplug takes
    what a plug left half way."""
    for vif in network_info:
        _plug(instance, vif)


def unplug_all(instance, network_info):
    """Unplug every port; the first error is raised after trying all."""
    errors = []
    for vif in network_info or ():
        try:
            unplug(instance, vif)
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]
