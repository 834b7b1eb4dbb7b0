"""Privileged netlink work for VIFs: veth pairs and the bridges they join.

Each entrypoint does one thing to devices named by the caller, checks the
names, and refuses to touch a device of another kind than it would create
itself (a veth, a bridge): a bad name cannot delete the host's uplink or
enslave it to a bridge. Everything goes through pyroute2 (netlink), not
``ip``, so no shell or parsing is involved.
"""

import ctypes
import errno
import os
import platform
import struct
import threading
import typing

from pyroute2 import ethtool
from pyroute2 import IPRoute
from pyroute2 import netlink
from pyroute2 import netns
from pyroute2.netlink import exceptions as nl_exceptions
from pyroute2.netlink import rtnl
from pyroute2.netlink.rtnl import tcmsg
from pyroute2.netlink.rtnl.tcmsg import common as tc_common

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


def _open_netns(name):
    """A descriptor of the named network namespace ``name``; ValueError
    naming the namespace if there is none (a missing namespace is an
    operator's error, not a driver's)."""
    name = naming.checked_netns(name)
    try:
        return os.open(os.path.join(netns.NETNS_RUN_DIR, name), os.O_RDONLY)
    except FileNotFoundError as e:
        raise FileNotFoundError(e.errno, 'network namespace %s does not '
                                'exist (ip netns list)' % name)


def _is_host_netns(fd):
    host = os.stat('/proc/self/ns/net')
    target = os.fstat(fd)
    return (host.st_dev, host.st_ino) == (target.st_dev, target.st_ino)


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
                bridge: typing.Optional[str], host_netns: str = '') -> None:
    """Make the veth pair host <-> peer, or bring an existing one in line.

    The host end gets ``mtu`` (0: the kernel's default), joins ``bridge``
    ('' for none: a routed port's agent sets its routes itself; None to
    leave its master as it is: Open vSwitch's kernel datapath enslaves the
    device itself, and a re-plug must not take it away) and goes up. The
    peer, while it is still in the host's namespace (the container is
    stopped), gets the port's MAC and the MTU and stays down: nothing on
    the host may send through it; liblxc brings it up in the guest.

    ``host_netns``: the named network namespace the host end lives in
    ('' for this one), for a switch that runs there. The pair is made
    here and the host end moved there (a host end found here, from a
    plug stopped half way, is moved too); it can join no bridge.
    """
    host, peer = naming.checked_ifname(host), naming.checked_ifname(peer)
    fd = _open_netns(host_netns) if host_netns else None
    try:
        if fd is not None and bridge:
            raise ValueError('a host end in namespace %s joins no Linux '
                             'bridge' % host_netns)
        with IPRoute() as ipr:
            master = _lookup(ipr, bridge, 'bridge') if bridge else 0
            if bridge and master is None:
                raise ValueError('bridge %s does not exist' % bridge)
            if fd is None:
                index = _make_veth(ipr, host, peer, mac, mtu)
            else:
                index = _in_netns(fd, lambda r: _lookup(r, host, 'veth'))
                if index is None:
                    local = _make_veth(ipr, host, peer, mac, mtu)
                    ipr.link('set', index=local, net_ns_fd=fd)
            peer_index = _lookup(ipr, peer, 'veth')
            if peer_index is not None:
                settings = {'address': mac}
                if mtu:
                    settings['mtu'] = mtu
                ipr.link('set', index=peer_index, **settings)
            settings = {} if bridge is None else {'master': master}
            if mtu:
                settings['mtu'] = mtu
            if fd is None:
                _set_up(ipr, index, settings)
            else:
                _in_netns(fd, lambda r: _set_up(
                    r, _lookup(r, host, 'veth'), settings))
    finally:
        if fd is not None:
            os.close(fd)


def _make_veth(ipr, host, peer, mac, mtu):
    """The index of the veth ``host`` here, made with its peer if missing."""
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
    return index


def _set_up(ipr, index, settings):
    if index is None:
        raise ValueError('the host end vanished while it was plugged')
    if settings:
        ipr.link('set', index=index, **settings)
    ipr.link('set', index=index, state='up')


@privsep.sys_admin_pctxt.entrypoint
def delete_veth(name: str, host_netns: str = '') -> bool:
    """Delete a veth pair by either end; False if there was none.

    Deleting one end deletes the other, wherever it is: a running guest
    loses the device at once. ``host_netns``: the named network namespace
    to look in ('' for this one); one that is gone holds no device.
    """
    name = naming.checked_ifname(name)

    def delete(ipr):
        index = _lookup(ipr, name, 'veth')
        if index is None:
            return False
        try:
            ipr.link('del', index=index)
        except nl_exceptions.NetlinkError as e:
            if e.code != errno.ENODEV:   # gone meanwhile: fine
                raise
        return True

    if not host_netns:
        with IPRoute() as ipr:
            return delete(ipr)
    try:
        fd = _open_netns(host_netns)
    except FileNotFoundError:
        return False   # the namespace went, with its devices
    try:
        return _in_netns(fd, delete)
    finally:
        os.close(fd)


# Everything a veth can offload of its transmit checksums.
_TX_CHECKSUMS = ('tx-checksum-ip-generic', 'tx-checksum-ipv4',
                 'tx-checksum-ipv6', 'tx-checksum-sctp')


@privsep.sys_admin_pctxt.entrypoint
def disable_tx_checksum(name: str) -> bool:
    """Make the veth end ``name`` fill in its packets' checksums itself.

    A veth leaves TCP and UDP checksums to the receiver, which a packet
    socket reader does not do: behind OVS's userspace datapath (which
    reads the host end that way) a guest's TCP and UDP packets arrive with
    bad checksums and are dropped; only ICMP gets through. The kernel then
    also segments in software (no TSO without checksum offload), so the
    reader never sees packets above the MTU. False if ``name`` is not a
    veth in this namespace (a running guest has it, with the setting).
    """
    name = naming.checked_ifname(name)
    with IPRoute() as ipr:
        if _lookup(ipr, name, 'veth') is None:
            return False
    with ethtool.Ethtool() as tool:
        features = tool.get_features(name)
        for key in _TX_CHECKSUMS:
            feature = features.features.get(key)
            if feature is not None and feature.available:
                feature.enable = False
        tool.set_features(name, features)
    return True


def _in_netns(fd, work):
    """``work(ipr)`` with a netlink socket of the network namespace ``fd``.

    setns(2) moves only the calling thread: a thread of its own enters the
    namespace and ends there, so no other thread of the daemon ever runs
    in a guest's namespace.
    """
    outcome = {}

    def run():
        try:
            netns.setns(fd)
            with IPRoute() as ipr:
                outcome['value'] = work(ipr)
        except Exception as e:
            outcome['error'] = e

    thread = threading.Thread(target=run, name='netns-%d' % fd)
    thread.start()
    thread.join()
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


def _link_names(ipr):
    return [link.get_attr('IFLA_IFNAME') for link in ipr.link('dump')]


@privsep.sys_admin_pctxt.entrypoint
def move_into_netns(peer: str, pid: int, mac: str, mtu: int) -> str:
    """Hot-plug: give the veth end ``peer`` to the running guest whose
    init is ``pid``, as the guest's lowest free ethN; return that name.

    What liblxc does at start for a ``phys`` device, done to a running
    guest: moved and renamed in one request (the guest never sees the
    host's name for it), then given the port's MAC and MTU (0: leave it)
    and brought up. Only a veth on the host moves, and only into a
    namespace other than the host's.
    """
    peer, mac = naming.checked_ifname(peer), naming.checked_mac(mac)
    if pid <= 1:
        raise ValueError('%r is not the init of a container' % pid)
    fd = os.open('/proc/%d/ns/net' % pid, os.O_RDONLY)
    try:
        if _is_host_netns(fd):
            raise ValueError('process %d is in the host\'s network '
                             'namespace' % pid)
        with IPRoute() as ipr:
            index = _lookup(ipr, peer, 'veth')
            if index is None:
                raise ValueError('%s is not a veth on the host' % peer)
            name = naming.free_guest_name(_in_netns(fd, _link_names))
            ipr.link('set', index=index, net_ns_fd=fd, ifname=name)

        def configure(ipr):
            index = ipr.link_lookup(ifname=name)[0]
            settings = {'address': mac}
            if mtu:
                settings['mtu'] = mtu
            ipr.link('set', index=index, **settings)
            ipr.link('set', index=index, state='up')

        _in_netns(fd, configure)
    finally:
        os.close(fd)
    return name


# -- bandwidth limits (flavor quota:vif_* extra specs, see vif.qos) --------

_ROOT_QDISC = 0x10000        # 1:
_INGRESS_QDISC = 0xFFFF0000  # ffff:
_FILTER_NAME = 'nova-lxd-py-outbound'
# Queue a shaper holds beyond its burst: 200 ms at its rate, at least two
# 64 KiB segmentation-offloaded packets (a veth passes those whole).
_QUEUE_SECONDS = 0.2
_MIN_QUEUE = 2 * 65536
# Ethernet header and one VLAN tag on top of the device's MTU.
_FRAME_OVERHEAD = 18
_NEW_OR_REPLACE = (netlink.NLM_F_REQUEST | netlink.NLM_F_ACK |
                   netlink.NLM_F_CREATE | netlink.NLM_F_REPLACE)


def _replace_tbf(ipr, index, limits, frame):
    """Make (or change) the device's root qdisc a token bucket filter.

    ``limits``: (average, peak, burst), bytes/s and bytes; peak 0 for none.
    Built by hand: pyroute2's tbf drops the peak rate. The kernel takes
    the bucket sizes as the time they last at their rate, in ticks; the
    peak bucket holds one frame.
    """
    average, peak, burst = limits
    parms = {'rate': average,
             'buffer': tc_common.calc_xmittime(average, burst),
             'limit': burst + max(int(average * _QUEUE_SECONDS), _MIN_QUEUE),
             'mtu': tc_common.calc_xmittime(peak, frame) if peak else 0}
    options = [['TCA_TBF_PARMS', parms], ['TCA_TBF_RTAB', True]]
    if peak:
        parms['peak'] = peak
        options.append(['TCA_TBF_PTAB', True])
    msg = tcmsg.tcmsg()
    msg['index'], msg['handle'], msg['parent'] = (index, _ROOT_QDISC,
                                                  rtnl.TC_H_ROOT)
    msg['attrs'] = [['TCA_KIND', 'tbf'], ['TCA_OPTIONS', {'attrs': options}]]
    msg['header']['type'] = rtnl.RTM_NEWQDISC
    msg['header']['flags'] = _NEW_OR_REPLACE
    for reply in ipr.nlm_request_batch([msg]):
        if reply.get('error'):
            raise nl_exceptions.NetlinkError(abs(reply['error']))


def _delete_qdisc(ipr, index, kind, handle, parent):
    """Delete the device's qdisc ``handle`` if it is ours (``kind``)."""
    for qdisc in ipr.get_qdiscs(index=index):
        if qdisc['handle'] == handle and qdisc.get_attr('TCA_KIND') == kind:
            try:
                ipr.tc('del', index=index, handle=handle, parent=parent)
            except nl_exceptions.NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL):
                    raise


# bpf(2) by architecture; a program that matches every packet.
_SYS_BPF = {'x86_64': 321, 'aarch64': 280, 'ppc64le': 361, 's390x': 351,
            'riscv64': 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_MATCH_ALL = (struct.pack('<BBhi', 0xb7, 0, 0, -1) +   # r0 = -1
              struct.pack('<BBhi', 0x95, 0, 0, 0))    # exit


def _match_all_program():
    """A file descriptor of a loaded classifier program matching all.

    Kernels that build neither u32 nor matchall nor the police action
    (this project's hosts) do have cls_bpf: every packet the host end
    receives is redirected to the port's ifb, whose root tbf shapes it.
    """
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, 'bpf(2) number unknown on %s'
                      % platform.machine())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    insns = ctypes.create_string_buffer(_MATCH_ALL, len(_MATCH_ALL))
    license_ = ctypes.create_string_buffer(b'GPL')
    attr = ctypes.create_string_buffer(struct.pack(
        '<IIQQ', _BPF_PROG_TYPE_SCHED_CLS, len(_MATCH_ALL) // 8,
        ctypes.addressof(insns), ctypes.addressof(license_)), 64)
    fd = libc.syscall(number, _BPF_PROG_LOAD, attr, len(attr))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, 'loading a tc classifier: %s'
                      % os.strerror(code))
    return fd


def _ensure_ifb(ipr, name):
    index = _lookup(ipr, name, 'ifb')
    if index is None:
        try:
            ipr.link('add', ifname=name, kind='ifb')
        except nl_exceptions.NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        index = _lookup(ipr, name, 'ifb')
    ipr.link('set', index=index, state='up')
    return index


def _redirect_ingress(ipr, index, ifb_index):
    ipr.tc('replace', 'ingress', index, _INGRESS_QDISC)
    fd = _match_all_program()
    try:
        ipr.tc('replace-filter', 'bpf', index, 1, parent=_INGRESS_QDISC,
               prio=1, fd=fd, name=_FILTER_NAME,
               action={'kind': 'mirred', 'direction': 'egress',
                       'action': 'redirect', 'ifindex': ifb_index})
    finally:
        os.close(fd)


def _delete_ifb(ipr, name):
    index = _lookup(ipr, name, 'ifb')
    if index is not None:
        try:
            ipr.link('del', index=index)
        except nl_exceptions.NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
    return index is not None


Limits = typing.Optional[typing.Sequence[int]]


@privsep.sys_admin_pctxt.entrypoint
def set_bandwidth(dev: str, ifb: str, inbound: Limits,
                  outbound: Limits, host_netns: str = '') -> bool:
    """Bring the veth end ``dev``'s bandwidth limits in line; idempotent.

    ``inbound``/``outbound``: (average, peak, burst) in bytes/s and bytes
    (peak 0: none), or None for no limit. Inbound (towards the guest) is
    shaped by a tbf as ``dev``'s root qdisc; outbound (from the guest)
    is redirected at ``dev``'s ingress to the ifb device ``ifb``, made
    here, and shaped by a tbf there. Qdiscs are replaced, never added
    twice; what a direction no longer needs is removed, and only if it is
    ours: an ingress qdisc goes only with the port's ifb (another one on
    the port, a QoS agent's say, stays). ``host_netns``: the named
    namespace ``dev`` lives in ('' for this one), which takes no outbound
    limit. False if ``dev`` is not a veth there.
    """
    dev, ifb = naming.checked_ifname(dev), naming.checked_ifname(ifb)

    def work(ipr):
        index = _lookup(ipr, dev, 'veth')
        if index is None:
            return False
        frame = ipr.get_links(index)[0].get_attr('IFLA_MTU') + \
            _FRAME_OVERHEAD
        if inbound:
            _replace_tbf(ipr, index, inbound, frame)
        else:
            _delete_qdisc(ipr, index, 'tbf', _ROOT_QDISC, rtnl.TC_H_ROOT)
        if outbound:
            ifb_index = _ensure_ifb(ipr, ifb)
            _replace_tbf(ipr, ifb_index, outbound, frame)
            _redirect_ingress(ipr, index, ifb_index)
        elif _delete_ifb(ipr, ifb):
            _delete_qdisc(ipr, index, 'ingress', _INGRESS_QDISC,
                          rtnl.TC_H_INGRESS)
        return True

    if not host_netns:
        with IPRoute() as ipr:
            return work(ipr)
    if outbound:
        raise ValueError('no outbound limit in namespace %s' % host_netns)
    try:
        fd = _open_netns(host_netns)
    except FileNotFoundError:
        return False
    try:
        return _in_netns(fd, work)
    finally:
        os.close(fd)


@privsep.sys_admin_pctxt.entrypoint
def delete_ifb(name: str) -> bool:
    """Delete the ifb device ``name`` (a port's); False if there is none."""
    name = naming.checked_ifname(name)
    with IPRoute() as ipr:
        return _delete_ifb(ipr, name)
