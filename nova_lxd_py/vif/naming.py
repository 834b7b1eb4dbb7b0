"""Deterministic host-side names and facts of a Neutron port's VIF.

Neutron's agents find a port's device by its name, never by asking Nova:
the Linux bridge agent and routed backends such as Calico look for ``tap``
followed by the first 11 characters of the port id, the name Nova itself
puts in ``vif['devname']``. Deriving every name from the port id alone
means plug, unplug and a restart after a host reboot all agree on the
devices without keeping any state.

Everything here is a pure function of the VIF; values that end up in a
liblxc config file or a netlink request are checked, so a malformed port
can neither inject config lines nor name an arbitrary device.
"""

import re

from nova.network import model

HOST_PREFIX = 'tap'
# The container end of the veth pair, on the host until liblxc moves it
# into the container's network namespace (and back when it stops).
PEER_PREFIX = 'tin'
# The ifb device whose egress shapes what the guest sends through the port
# (flavor outbound bandwidth limits, see vif.qos).
IFB_PREFIX = 'ifb'

# Linux allows 15 bytes (IFNAMSIZ - 1); ':' would read as an IPv4 alias and
# '/' as a path in /sys and /proc.
_IFNAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$')
_MAC = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')


# A name `ip netns add` accepts that stays a file of /run/netns.
_NETNS = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')


class InvalidVif(ValueError):
    """The VIF lacks a field we need or has one we cannot use safely."""


def checked_ifname(name):
    if not isinstance(name, str) or not _IFNAME.match(name):
        raise InvalidVif('%r is not a usable network device name' % (name,))
    return name


def checked_netns(name):
    """A named network namespace's name (``ip netns``), checked."""
    if not isinstance(name, str) or not _NETNS.match(name):
        raise InvalidVif('%r is not a network namespace name' % (name,))
    return name


def _port_id(vif):
    port_id = vif.get('id')
    if not port_id or not isinstance(port_id, str):
        raise InvalidVif('the VIF has no port id')
    return port_id


def host_name(vif):
    """The host end of the port's veth pair: Nova's devname if given."""
    name = vif.get('devname') or (
        HOST_PREFIX + _port_id(vif))[:model.NIC_NAME_LEN]
    return checked_ifname(name)


def peer_name(vif):
    """The container end's name while it sits in the host's namespace."""
    return checked_ifname(
        (PEER_PREFIX + _port_id(vif))[:model.NIC_NAME_LEN])


def ifb_name(vif):
    """The port's ifb device; named from the peer, whose name is a pure
    function of the port id, so an orphan's config suffices to find it."""
    return ifb_of_peer(peer_name(vif))


def ifb_of_peer(peer):
    if not isinstance(peer, str) or not peer.startswith(PEER_PREFIX):
        raise InvalidVif('%r is not the guest end of a port' % (peer,))
    return checked_ifname(IFB_PREFIX + peer[len(PEER_PREFIX):])


def guest_name(index):
    """The device name the guest sees: eth0, eth1 ... in port order."""
    return 'eth%d' % index


_GUEST_NAME = re.compile(r'^eth(0|[1-9][0-9]*)$')


def free_guest_name(existing):
    """The lowest ethN not among the device names ``existing``: the name
    of a device hot-plugged into a running guest, which may have renamed
    or lost some of its own since it started."""
    taken = {int(m.group(1)) for m in map(_GUEST_NAME.match, existing) if m}
    index = 0
    while index in taken:
        index += 1
    return guest_name(index)


def checked_mac(address):
    if not isinstance(address, str) or not _MAC.match(address.lower()):
        raise InvalidVif('%r is not a usable MAC address' % (address,))
    return address.lower()


def mac(vif):
    try:
        return checked_mac(vif.get('address'))
    except InvalidVif as e:
        raise InvalidVif('port %s: %s' % (vif.get('id'), e))


def mtu(vif):
    """The network's MTU, or None to keep the kernel's default (1500).

    Neutron reports it per network (``network.meta.mtu``); a VIF may carry
    its own in ``meta.mtu``.
    """
    network = vif.get('network') or {}
    value = (network.get('meta') or {}).get('mtu') or \
        (vif.get('meta') or {}).get('mtu')
    if value in (None, ''):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    # 68: IPv4's minimum; 65535: the largest a veth accepts.
    if not 68 <= number <= 65535:
        raise InvalidVif('port %s has an invalid MTU %r'
                         % (vif.get('id'), value))
    return number


def bridge_name(vif):
    """The Linux bridge a 'bridge' VIF joins (``network.bridge``)."""
    network = vif.get('network') or {}
    name = network.get('bridge') or \
        (vif.get('details') or {}).get(model.VIF_DETAILS_BRIDGE_NAME)
    if not name:
        raise InvalidVif('port %s names no bridge' % vif.get('id'))
    return checked_ifname(name)
