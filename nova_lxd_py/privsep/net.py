"""Privileged netlink work for VIFs: veth pairs and the bridges they join.

Each entrypoint does one thing to devices named by the caller, checks the
names, and refuses to touch a device of another kind than it would create
itself (a veth, a bridge): a bad name cannot delete the host's uplink or
enslave it to a bridge. Everything goes through pyroute2 (netlink), not
``ip``, so no shell or parsing is involved.
"""

import errno

from pyroute2 import IPRoute
from pyroute2.netlink import exceptions as nl_exceptions

from nova_lxd_py import privsep
from nova_lxd_py.vif import naming


def _kind(link):
    info = link.get_attr('IFLA_LINKINFO')
    return info.get_attr('IFLA_INFO_KIND') if info else None


def _lookup(ipr, name, kind):
    """The device's index, None if there is none; ValueError if it is not
    a ``kind`` device (someone else's, which we must leave alone)."""
    try:
        link = ipr.link('get', ifname=name)[0]
    except nl_exceptions.NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    if _kind(link) != kind:
        raise ValueError('%s exists and is not a %s device' % (name, kind))
    return link['index']


@privsep.sys_admin_pctxt.entrypoint
def ensure_bridge(name: str) -> None:
    """Create the Linux bridge if it is missing and bring it up.

    What os-vif's old linux_bridge plugin did before a tap joined it: the
    port's agent may create the bridge only once it sees the device, so
    the device must not wait for it. Forwarding starts at once (no STP
    listening delay), as on Neutron's own bridges.
    """
    name = naming.checked_ifname(name)
    with IPRoute() as ipr:
        index = _lookup(ipr, name, 'bridge')
        if index is None:
            try:
                ipr.link('add', ifname=name, kind='bridge',
                         br_stp_state=0, br_forward_delay=0)
            except nl_exceptions.NetlinkError as e:
                if e.code != errno.EEXIST:   # made meanwhile: fine
                    raise
            index = _lookup(ipr, name, 'bridge')
        ipr.link('set', index=index, state='up')


@privsep.sys_admin_pctxt.entrypoint
def ensure_veth(host: str, peer: str, mac: str, mtu: int,
                bridge: str) -> None:
    """Make the veth pair host <-> peer, or bring an existing one in line.

    The host end gets ``mtu`` (0: the kernel's default), joins ``bridge``
    ('' for none: a routed port's agent sets its routes itself) and goes
    up. The peer, while it is still in the host's namespace (the container
    is stopped), gets the port's MAC and the MTU and stays down: nothing on
    the host may send through it; liblxc brings it up in the guest.
    """
    host, peer = naming.checked_ifname(host), naming.checked_ifname(peer)
    with IPRoute() as ipr:
        master = _lookup(ipr, bridge, 'bridge') if bridge else 0
        if bridge and master is None:
            raise ValueError('bridge %s does not exist' % bridge)
        index = _lookup(ipr, host, 'veth')
        if index is None:
            # A peer alone is half of a pair whose host end was renamed or
            # is being removed: it cannot be ours to reuse.
            stale = _lookup(ipr, peer, 'veth')
            if stale is not None:
                ipr.link('del', index=stale)
            peer_spec = {'ifname': peer, 'address': mac}
            if mtu:
                peer_spec['mtu'] = mtu
            ipr.link('add', ifname=host, kind='veth', peer=peer_spec)
            index = _lookup(ipr, host, 'veth')
        peer_index = _lookup(ipr, peer, 'veth')
        if peer_index is not None:
            settings = {'address': mac}
            if mtu:
                settings['mtu'] = mtu
            ipr.link('set', index=peer_index, **settings)
        settings = {'master': master}
        if mtu:
            settings['mtu'] = mtu
        ipr.link('set', index=index, **settings)
        ipr.link('set', index=index, state='up')


@privsep.sys_admin_pctxt.entrypoint
def delete_veth(name: str) -> bool:
    """Delete a veth pair by either end; False if there was none.

    Deleting one end deletes the other, wherever it is: a running guest
    loses the device at once.
    """
    name = naming.checked_ifname(name)
    with IPRoute() as ipr:
        index = _lookup(ipr, name, 'veth')
        if index is None:
            return False
        try:
            ipr.link('del', index=index)
        except nl_exceptions.NetlinkError as e:
            if e.code != errno.ENODEV:   # gone meanwhile: fine
                raise
        return True
