"""The privsep context for every privileged operation of nova-lxd-py.

Entrypoints live next to the code that needs them
(``nova_lxd_py.virt.container`` for liblxc, ``nova_lxd_py.privsep.fs`` for
file system work); each takes plain typed arguments and checks that paths
stay inside the directories this driver owns.
"""

from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

# The daemon imports this module first: it must know the [lxc] options.
from nova_lxd_py import conf  # noqa: F401


def _bounding_set():
    """Capabilities any process on this host may hold; None if unknown."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('CapBnd:'):
                    mask = int(line.split()[1], 16)
                    return {cap for cap in range(64) if mask >> cap & 1}
    except OSError:
        pass
    return None


def _available(wanted):
    # Some hosts (sandboxes, nested containers) keep a capability even from
    # root's bounding set; asking for it makes the daemon fail to start
    # with EPERM ("Privsep daemon failed to start").
    bounding = _bounding_set()
    return [cap for cap in wanted if bounding is None or cap in bounding]


sys_admin_pctxt = priv_context.PrivContext(
    'nova_lxd_py',
    cfg_section='nova_lxd_py_privileged',
    pypath=__name__ + '.sys_admin_pctxt',
    # liblxc needs most of root's powers to set up a container; the
    # container's own capability set is restricted by its config.
    capabilities=_available([
        caps.CAP_CHOWN, caps.CAP_DAC_OVERRIDE, caps.CAP_DAC_READ_SEARCH,
        caps.CAP_FOWNER, caps.CAP_FSETID, caps.CAP_KILL, caps.CAP_SETGID,
        caps.CAP_SETUID, caps.CAP_SETPCAP, caps.CAP_NET_ADMIN,
        caps.CAP_NET_RAW, caps.CAP_SYS_CHROOT, caps.CAP_SYS_PTRACE,
        caps.CAP_SYS_ADMIN, caps.CAP_SYS_RESOURCE, caps.CAP_MKNOD,
        caps.CAP_AUDIT_WRITE, caps.CAP_SETFCAP, caps.CAP_SYS_NICE,
        caps.CAP_IPC_LOCK, caps.CAP_SYS_BOOT, caps.CAP_LEASE]),
)
