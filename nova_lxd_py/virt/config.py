"""Pure translation: flavor, image facts and host facts -> liblxc config.

Nothing here touches the host; every function is data in, data out, so it
is tested with tables.
"""

import dataclasses
import re
import typing
import zlib

from oslo_utils import strutils

from nova_lxd_py import exception
from nova_lxd_py.vif import naming

SPEC_PRIVILEGED = 'lxc:privileged'
SPEC_NESTING = 'lxc:nesting'
SPEC_PIDS_MAX = 'lxc:pids_max'

# Host devices a privileged container may use (the rest are denied); an
# unprivileged container cannot create device nodes at all.
_PRIVILEGED_DEVICES = ('c *:* m', 'b *:* m', 'c 1:3 rwm', 'c 1:5 rwm',
                       'c 1:7 rwm', 'c 1:8 rwm', 'c 1:9 rwm', 'c 5:0 rwm',
                       'c 5:1 rwm', 'c 5:2 rwm', 'c 136:* rwm', 'c 10:229 rwm')
# Dropped in every container. In a user namespace they are no use (the
# kernel checks them in the host's namespace), but systemd judges its units'
# ConditionCapability= by the bounding set: with them there, an unprivileged
# systemd guest tries to mount debugfs and configfs, fails, and says
# 'degraded'.
_CAP_DROP = 'mac_admin mac_override sys_time sys_module sys_rawio'

# Files lxcfs virtualises; bound over the guest's own only when present.
_LXCFS_FILES = ('proc/meminfo', 'proc/cpuinfo', 'proc/stat', 'proc/uptime',
                'proc/loadavg', 'proc/swaps', 'proc/diskstats',
                'sys/devices/system/cpu')

# (halt signal, reboot signal) that make each kind of init shut down or
# restart cleanly; liblxc's own defaults are SIGPWR and SIGINT.
INIT_SIGNALS = {
    'busybox': ('SIGUSR2', 'SIGTERM'),
    'systemd': ('SIGRTMIN+4', 'SIGINT'),
    'sysv': ('SIGPWR', 'SIGINT'),
}


@dataclasses.dataclass(frozen=True)
class IdMap:
    """Host ids that container ids 0..size-1 map to."""
    uid_start: int
    gid_start: int
    size: int


@dataclasses.dataclass(frozen=True)
class Security:
    privileged: bool = False
    nesting: bool = False


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_period_us: int
    cpu_quota_us: int       # -1: no quota
    cpu_shares: int
    cpuset: str             # '' means every host CPU
    pids_max: int           # 0 means unlimited
    swap_bytes: int = -1    # flavor swap; -1: the host cannot limit swap


def _bool(value):
    return strutils.bool_from_string(value, strict=True)


def _spec(specs, key, default, convert):
    # InvalidInput, not ValueError: the compute manager then aborts the build
    # with this message instead of rescheduling it to every other host.
    value = specs.get(key, default)
    try:
        return convert(value)
    except ValueError:
        raise exception.InvalidExtraSpec(spec=key, value=value)


def security_from_flavor(extra_specs, allow_privileged, allow_nesting):
    """Return the flavor's Security, refusing what the operator forbids."""
    privileged = _spec(extra_specs, SPEC_PRIVILEGED, 'false', _bool)
    nesting = _spec(extra_specs, SPEC_NESTING, 'false', _bool)
    if privileged and not allow_privileged:
        raise exception.PrivilegedNotAllowed(
            spec=SPEC_PRIVILEGED, what='privileged',
            option='allow_privileged')
    if nesting and not allow_nesting:
        raise exception.PrivilegedNotAllowed(
            spec=SPEC_NESTING, what='nesting', option='allow_nesting')
    return Security(privileged=privileged, nesting=nesting)


def pick_cpuset(vcpus, host_cpus, seed):
    """Choose ``vcpus`` of the host CPUs, spreading guests by ``seed``.

    Restricting affinity is what makes ``nproc`` in the guest show the
    flavor's vCPUs; the start CPU is derived from the instance so that
    one-vCPU guests do not all land on CPU 0.
    """
    if vcpus >= len(host_cpus):
        return ''
    start = zlib.crc32(seed.encode()) % len(host_cpus)
    chosen = sorted(host_cpus[(start + i) % len(host_cpus)]
                    for i in range(vcpus))
    return ','.join(str(c) for c in chosen)


def limits_from_flavor(flavor, host_cpus, default_pids_max, seed,
                       swap_accounting=False):
    """Cgroup limits for a flavor; ``quota:cpu_*`` extra specs override.

    A container has no swap device of its own: the flavor's swap (MB) is
    how much of the host's swap it may use, where the host's cgroups can
    account swap (``swap_accounting``).
    """
    specs = flavor.extra_specs or {}
    period = _spec(specs, 'quota:cpu_period', 100000, int)
    quota = _spec(specs, 'quota:cpu_quota', flavor.vcpus * period, int)
    shares = _spec(specs, 'quota:cpu_shares', 1024 * flavor.vcpus, int)
    pids = _spec(specs, SPEC_PIDS_MAX, default_pids_max, int)
    return Limits(memory_bytes=flavor.memory_mb * 1024 * 1024,
                  cpu_period_us=period,
                  cpu_quota_us=quota if quota > 0 else -1,
                  cpu_shares=shares,
                  cpuset=pick_cpuset(flavor.vcpus, host_cpus, seed),
                  pids_max=pids,
                  swap_bytes=(flavor.swap or 0) * 1024 * 1024
                  if swap_accounting else -1)


def _shares_to_weight(shares):
    # cgroup v1 cpu.shares [2, 262144] onto v2 cpu.weight [1, 10000].
    shares = min(max(shares, 2), 262144)
    return 1 + (shares - 2) * 9999 // 262142


def cgroup_lines(limits, cgroup_version):
    """liblxc cgroup keys for the given hierarchy (1: legacy, 2: unified)."""
    if cgroup_version == 2:
        quota = 'max' if limits.cpu_quota_us < 0 else limits.cpu_quota_us
        lines = [('lxc.cgroup2.memory.max', limits.memory_bytes),
                 ('lxc.cgroup2.cpu.max', '%s %d' % (quota,
                                                    limits.cpu_period_us)),
                 ('lxc.cgroup2.cpu.weight',
                  _shares_to_weight(limits.cpu_shares))]
        prefix = 'lxc.cgroup2.'
    else:
        lines = [('lxc.cgroup.memory.limit_in_bytes', limits.memory_bytes),
                 ('lxc.cgroup.cpu.cfs_period_us', limits.cpu_period_us),
                 ('lxc.cgroup.cpu.cfs_quota_us', limits.cpu_quota_us),
                 ('lxc.cgroup.cpu.shares', limits.cpu_shares)]
        prefix = 'lxc.cgroup.'
    if limits.swap_bytes >= 0:
        # v1 limits memory+swap together (after memory, which it must not
        # be below); v2 limits swap alone.
        lines.append(('lxc.cgroup2.memory.swap.max', limits.swap_bytes)
                     if cgroup_version == 2 else
                     ('lxc.cgroup.memory.memsw.limit_in_bytes',
                      limits.memory_bytes + limits.swap_bytes))
    if limits.cpuset:
        lines.append((prefix + 'cpuset.cpus', limits.cpuset))
    if limits.pids_max:
        lines.append((prefix + 'pids.max', limits.pids_max))
    return lines


@dataclasses.dataclass(frozen=True)
class Nic:
    """A guest network device: the host device liblxc moves in for it."""
    link: str               # the veth peer's name on the host
    hwaddr: str
    mtu: typing.Optional[int] = None   # None: the kernel's default


def nics(network_info):
    """The guest's devices for Nova's network_info, in port order."""
    return [Nic(link=naming.peer_name(vif), hwaddr=naming.mac(vif),
                mtu=naming.mtu(vif)) for vif in network_info or ()]


def network_lines(guest_nics):
    """liblxc keys giving the guest ``guest_nics`` as eth0, eth1 ...

    ``phys``: liblxc moves the existing host device into the container's
    network namespace before init runs, and back to the host (under its
    old name) when the container stops; the veth pair itself is made and
    removed by ``nova_lxd_py.vif``. With no NIC the guest still gets a
    network namespace of its own, with only a loopback device.
    """
    if not guest_nics:
        return [('lxc.net.0.type', 'empty')]
    lines = []
    for index, nic in enumerate(guest_nics):
        key = 'lxc.net.%d.' % index
        lines += [(key + 'type', 'phys'),
                  (key + 'link', naming.checked_ifname(nic.link)),
                  (key + 'name', naming.guest_name(index)),
                  (key + 'hwaddr', naming.checked_mac(nic.hwaddr)),
                  (key + 'flags', 'up')]
        if nic.mtu:
            lines.append((key + 'mtu', int(nic.mtu)))
    return lines


_NET_KEY = re.compile(r'^lxc\.net\.(\d+)\.(\w+)$')


def _net_items(text):
    """(index, field, value) of a config text's ``lxc.net.N.*`` lines."""
    for line in text.splitlines():
        key, sep, value = line.partition('=')
        match = _NET_KEY.match(key.strip()) if sep else None
        if match:
            yield int(match.group(1)), match.group(2), value.strip()


def nics_of(text):
    """The guest's devices in a config text (see network_lines), in index
    order; what hot-plug adds to or takes from."""
    fields = {}
    for index, field, value in _net_items(text):
        fields.setdefault(index, {})[field] = value
    found = []
    for index in sorted(fields):
        nic = fields[index]
        if nic.get('type') != 'phys':
            continue
        mtu = nic.get('mtu')
        found.append(Nic(link=nic['link'], hwaddr=nic['hwaddr'],
                         mtu=int(mtu) if mtu else None))
    return found


def with_nics(text, guest_nics):
    """The config text with its network lines replaced by those for
    ``guest_nics``, where the old ones were; every other line unchanged.

    Hot-plug edits the config of a defined container this way: rebuilding
    it would need the flavor, image and disk facts of its spawn again.
    """
    kept, at = [], None
    for line in text.splitlines():
        key = line.partition('=')[0].strip()
        if key.startswith('lxc.net.'):
            at = len(kept) if at is None else at
            continue
        kept.append(line)
    if at is None:
        at = len(kept)
    network = ['%s = %s' % item for item in network_lines(guest_nics)]
    return '\n'.join(kept[:at] + network + kept[at:]) + '\n'


_HOSTNAME_BAD = re.compile(r'[^a-z0-9-]+')


def guest_hostname(instance_hostname, fallback):
    """A valid single-label host name for the guest's UTS namespace."""
    name = _HOSTNAME_BAD.sub('-', (instance_hostname or '').lower())
    name = name.strip('-')[:63].strip('-')
    return name or fallback


INSTANCE_NAME_KEY = '# nova.instance_name = '
OVERLAY_PREFIX = 'overlay:'
# liblxc mounts an overlay root in the guest's user namespace, where the
# kernel cannot write its trusted.overlay.* xattrs: without 'userxattr'
# (user.overlay.* instead) removing or renaming a directory of the image
# fails with EIO in the guest.
OVERLAY_USERNS_OPTIONS = 'userxattr'


def build(*, instance_name, hostname, rootfs, idmap, security, limits,
          cgroup_version, init_kind, console_log, console_size_kb,
          lxcfs_path='', seccomp_profile='', mounts=(), guest_nics=(),
          readonly_mounts=(), environment=()):
    """Return the full text of a container's liblxc config file.

    ``mounts``: (host directory, guest path) pairs bind-mounted read-write.
    ``readonly_mounts``: the same, read-only (e.g. the config drive).
    ``environment``: (name, value) pairs in the environment of the guest's
    init.
    ``guest_nics``: the guest's network devices (Nic), in port order.
    """
    halt, reboot = INIT_SIGNALS.get(init_kind, INIT_SIGNALS['sysv'])
    items = [
        ('lxc.uts.name', hostname),
        ('lxc.rootfs.path', rootfs),
        ('lxc.autodev', 1),
        ('lxc.pty.max', 64),
        ('lxc.tty.max', 0),
        ('lxc.signal.halt', halt),
        ('lxc.signal.reboot', reboot),
        ('lxc.console.logfile', console_log),
        ('lxc.console.size', console_size_kb * 1024),
        ('lxc.console.rotate', 1),
    ]
    items += network_lines(guest_nics)
    if security.nesting:
        items.append(('lxc.mount.auto', 'cgroup:rw:force proc:rw sys:rw'))
    else:
        items.append(('lxc.mount.auto', 'cgroup:mixed proc:mixed sys:mixed'))
    if idmap is None and not security.privileged:
        # Fail closed: never turn an unprivileged flavor into a container
        # without a user namespace.
        raise ValueError('an unprivileged container needs an id map')
    items.append(('lxc.cap.drop', _CAP_DROP))
    if not security.privileged:
        items += [('lxc.idmap', 'u 0 %d %d' % (idmap.uid_start, idmap.size)),
                  ('lxc.idmap', 'g 0 %d %d' % (idmap.gid_start, idmap.size))]
        if rootfs.startswith(OVERLAY_PREFIX):
            items.append(('lxc.rootfs.options', OVERLAY_USERNS_OPTIONS))
    else:
        key = 'lxc.cgroup2.devices' if cgroup_version == 2 else \
            'lxc.cgroup.devices'
        items.append((key + '.deny', 'a'))
        items += [(key + '.allow', rule) for rule in _PRIVILEGED_DEVICES]
    if seccomp_profile:
        items.append(('lxc.seccomp.profile', seccomp_profile))
    if lxcfs_path:
        items += [('lxc.mount.entry', '%s/%s %s none bind,optional 0 0'
                   % (lxcfs_path, f, f)) for f in _LXCFS_FILES]
    items += [('lxc.mount.entry', '%s %s none bind,create=dir 0 0'
               % (host_dir, guest_path.lstrip('/')))
              for host_dir, guest_path in mounts]
    items += [('lxc.mount.entry', '%s %s none bind,ro,create=dir 0 0'
               % (host_dir, guest_path.lstrip('/')))
              for host_dir, guest_path in readonly_mounts]
    items += [('lxc.environment', '%s=%s' % pair) for pair in environment]
    items += cgroup_lines(limits, cgroup_version)
    # A comment liblxc ignores, so list_instances can give Nova the names.
    return INSTANCE_NAME_KEY + instance_name + '\n' + ''.join(
        '%s = %s\n' % (k, v) for k, v in items)


# Where a rescue guest finds the instance's own root (see rescue_config).
RESCUE_MOUNT = '/mnt/rescue'
_MOUNT_UNSAFE = re.compile(r'[\s,\\:]')


def config_values(text, key):
    """The values of ``key`` in a liblxc config text, in order."""
    values = []
    for line in text.splitlines():
        name, sep, value = line.partition('=')
        if sep and name.strip() == key:
            values.append(value.strip())
    return values


def idmap_of(text):
    """The IdMap of a config's ``lxc.idmap`` lines; None: privileged."""
    starts = {}
    for value in config_values(text, 'lxc.idmap'):
        kind, inside, start, size = value.split()
        if inside == '0':
            starts[kind] = (int(start), int(size))
    if 'u' not in starts or 'g' not in starts:
        return None
    return IdMap(uid_start=starts['u'][0], gid_start=starts['g'][0],
                 size=min(starts['u'][1], starts['g'][1]))


def rescue_mount_entry(rootfs):
    """The ``lxc.mount.entry`` that shows an instance's root at
    RESCUE_MOUNT, read-write, from its ``lxc.rootfs.path`` value.

    An overlay root (``overlay:<lower>:<upper>``) has no merged view on the
    host, and the upper layer alone holds only the guest's changes: the
    same overlay is mounted again inside the rescue container, with the
    work directory liblxc gives it (``work`` next to the upper one; unused
    while the instance's own container is not running), so the rescue
    guest sees and changes exactly the root the instance boots from. The
    mount is made in the container's user namespace, like its root. A
    directory root is bind mounted.
    """
    if rootfs.startswith('overlay:'):
        parts = rootfs.split(':')
        if len(parts) != 3:
            raise ValueError('not an overlay root: %r' % rootfs)
        _, lower, upper = parts
        paths = (lower, upper)
        work = upper.rsplit('/', 1)[0] + '/work'
        entry = ('overlay %s overlay lowerdir=%s,upperdir=%s,workdir=%s,'
                 'create=dir 0 0' % (RESCUE_MOUNT.lstrip('/'), lower, upper,
                                     work))
    else:
        paths = (rootfs,)
        entry = '%s %s none bind,create=dir 0 0' % (
            rootfs, RESCUE_MOUNT.lstrip('/'))
    for path in paths:
        # Mount options and fstab fields have no escape liblxc honours
        # for all of these.
        if not path.startswith('/') or _MOUNT_UNSAFE.search(path):
            raise ValueError('cannot mount %r for a rescue' % path)
    return entry


def rescue_config(original, rootfs, init_kind, instance_dir, staying=()):
    """The rescue container's config, from the instance's own.

    Everything stays (name, id map, limits, console log, security) except
    the root, which is ``rootfs`` (the rescue image's), and the signals
    that stop and reboot the rescue image's init. The instance's root is
    added at RESCUE_MOUNT, and the instance's own disks (bind mounts from
    ``instance_dir``, e.g. ephemeral disks at /mnt) move below it, where
    the instance sees them: the rescue guest finds the instance's whole
    tree at RESCUE_MOUNT, and nothing is mounted over its own /mnt.
    Mounts of the host directories in ``staying`` (the config drive, which
    libvirt gives a rescue guest too) stay where they are.
    """
    halt, reboot = INIT_SIGNALS.get(init_kind, INIT_SIGNALS['sysv'])
    replaced = {'lxc.rootfs.path': rootfs, 'lxc.signal.halt': halt,
                'lxc.signal.reboot': reboot}
    own_root = config_values(original, 'lxc.rootfs.path')
    if len(own_root) != 1:
        raise ValueError('the instance config has %d lxc.rootfs.path lines'
                         % len(own_root))
    lines, moved = [], []
    for line in original.splitlines():
        name, sep, value = line.partition('=')
        name, value = name.strip(), value.strip()
        if sep and name in replaced:
            line = '%s = %s' % (name, replaced[name])
        elif sep and name == 'lxc.mount.entry' and value.startswith(
                instance_dir.rstrip('/') + '/') and \
                value.split(None, 1)[0] not in staying:
            source, target, rest = value.split(None, 2)
            moved.append('lxc.mount.entry = %s %s/%s %s' % (
                source, RESCUE_MOUNT.lstrip('/'), target.lstrip('/'), rest))
            continue
        lines.append(line)
    lines.append('lxc.mount.entry = %s' % rescue_mount_entry(own_root[0]))
    return '\n'.join(lines + moved) + '\n'
