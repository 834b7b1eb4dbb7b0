"""Facts about the compute host: capacity, id ranges, cgroups, liblxc."""

import os
import time

from oslo_config import cfg

from nova_lxd_py import exception
from nova_lxd_py.virt import config

CONF = cfg.CONF
CGROUP_ROOT = '/sys/fs/cgroup'
SUBUID = '/etc/subuid'
SUBGID = '/etc/subgid'


def subordinate_start(user, path, size):
    """First id of ``user``'s first range in ``path`` of at least ``size``."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        fields = line.strip().split(':')
        if len(fields) == 3 and fields[0] == user and \
                fields[1].isdigit() and fields[2].isdigit() and \
                int(fields[2]) >= size:
            return int(fields[1])
    return None


def idmap():
    """The IdMap for unprivileged containers, or NoSubordinateIds."""
    user, size = CONF.lxc.idmap_user, CONF.lxc.idmap_size
    starts = {}
    for kind, path in (('uid', SUBUID), ('gid', SUBGID)):
        starts[kind] = subordinate_start(user, path, size)
        if starts[kind] is None:
            raise exception.NoSubordinateIds(user=user, kind=kind,
                                             size=size, path=path)
    return config.IdMap(starts['uid'], starts['gid'], size)


def cgroup_version():
    """2 when the memory controller is on the unified hierarchy, else 1."""
    if os.path.exists(os.path.join(CGROUP_ROOT, 'memory')):
        return 1
    return 2


def lxcfs_active():
    path = CONF.lxc.lxcfs_path
    return bool(path) and os.path.exists(os.path.join(path, 'proc/meminfo'))


def machine():
    """The host's architecture, e.g. 'x86_64'."""
    with open('/proc/sys/kernel/arch') as f:
        return f.read().strip()


def cpus():
    return sorted(os.sched_getaffinity(0))


def memory_mb():
    """(total, available) memory in MiB from /proc/meminfo."""
    info = {}
    with open('/proc/meminfo') as f:
        for line in f:
            key, value = line.split(':', 1)
            info[key] = int(value.split()[0])
    return info['MemTotal'] // 1024, info['MemAvailable'] // 1024


def disk_gb(path):
    """(total, free) GiB of the file system holding ``path``."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    gib = 1024 ** 3
    return st.f_blocks * st.f_frsize // gib, st.f_bavail * st.f_frsize // gib


def uptime():
    with open('/proc/uptime') as f:
        seconds = float(f.read().split()[0])
    with open('/proc/loadavg') as f:
        load = f.read().split()[:3]
    return '%s up %d min, load average: %s' % (
        time.strftime('%H:%M:%S'), seconds // 60, ', '.join(load))


def swap_accounting():
    """True if the memory cgroup can limit a container's swap use."""
    if cgroup_version() == 1:
        return os.path.exists(os.path.join(
            CGROUP_ROOT, 'memory', 'memory.memsw.limit_in_bytes'))
    try:
        children = os.scandir(CGROUP_ROOT)
        return any(os.path.exists(os.path.join(e.path, 'memory.swap.max'))
                   for e in children if e.is_dir())
    except OSError:
        return False
