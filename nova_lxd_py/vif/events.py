"""Wait for Neutron to report a new instance's ports wired.

A port is plugged on the host at once, but its backend (the OVS agent,
ovn-controller, the Linux bridge agent) wires it later: flows, VLAN tags,
security groups. A guest started before that sends its first DHCP requests
into nothing. Neutron reports each port it has wired with a
``network-vif-plugged`` event; as the libvirt driver does, spawn plugs the
ports and defines the container inside
``virtapi.wait_for_instance_event`` and starts the guest only once the
events came, or ``[DEFAULT] vif_plugging_timeout`` passed.

Only ports Nova knows to be down (``active`` False) are waited for: a port
already up makes no down -> up transition, so no event would come. Power
on and reboot plug nothing new (the host ends stay wired while the guest
is stopped), so they wait for nothing, as libvirt's do not.
"""

import contextlib

from nova import exception as nova_exception
from nova.network import model
from oslo_log import log as logging

from nova_lxd_py import conf

CONF = conf.CONF
LOG = logging.getLogger(__name__)

PLUGGED = 'network-vif-plugged'


def expected(network_info):
    """The (name, tag) events Neutron will send for these ports."""
    # A remote-managed port is wired by its SmartNIC, which sends nothing.
    return [(PLUGGED, vif['id']) for vif in network_info or ()
            if vif.get('active', True) is False and
            vif.get('vnic_type') != model.VNIC_TYPE_REMOTE_MANAGED]


def _failed(event_name, instance):
    """Neutron reported that it could not wire a port."""
    LOG.error('Neutron reported a failure on event %s', event_name,
              instance=instance)
    if CONF.vif_plugging_is_fatal:
        raise nova_exception.VirtualInterfaceCreateException()
    return True   # keep waiting for the other ports


@contextlib.contextmanager
def plugged(virtapi, instance, network_info, wait=True):
    """Run the body (which plugs the ports), then wait for their events.

    Raises VirtualInterfaceCreateException when an event does not come in
    time or reports a failure and ``vif_plugging_is_fatal`` is set; the
    caller undoes what the body did. Otherwise a missing event is only
    logged and the caller goes on. ``wait`` False, or a timeout of 0,
    waits for nothing.
    """
    timeout = CONF.vif_plugging_timeout
    events = expected(network_info) if wait and timeout else []
    try:
        with virtapi.wait_for_instance_event(
                instance, events, timeout=timeout, error_callback=_failed):
            yield
    except nova_exception.InstanceEventTimeout:
        if CONF.vif_plugging_is_fatal:
            raise nova_exception.VirtualInterfaceCreateException()
        LOG.warning('Neutron did not report every port plugged within '
                    '%d s; starting the guest anyway', timeout,
                    instance=instance)
