"""liblxc, and only here: define, start, stop, freeze and inspect containers.

Every function that touches a container runs in the privsep daemon. A
container is named after its instance's UUID and lives in
``[lxc] container_path``; entrypoints refuse any other name.

Starting and attaching run liblxc's own ``lxc-start``/``lxc-attach`` in a
fresh process (see start()), and so does opening the console
(send_console()); everything else uses liblxc through its Python
bindings. Freezing writes the freezer cgroup directly: liblxc's own freeze
polls with one-second sleeps on cgroup v1.
"""

import os
import re
import subprocess
import sys
import time

import lxc
from oslo_config import cfg
from oslo_utils import uuidutils

from nova_lxd_py import privsep
from nova_lxd_py.virt.host import CGROUP_ROOT

CONF = cfg.CONF

CONFIG_FILE = 'config'
CONSOLE_LOG = 'console.log'
LXC_LOG = 'lxc.log'
LXC_LOG_LEVEL = 'WARN'


def container_dir(name):
    return os.path.join(CONF.lxc.container_path, _checked(name))


def _checked(name):
    if not uuidutils.is_uuid_like(name) or '/' in name:
        raise ValueError('not a container name: %r' % name)
    return name


def _container(name):
    return lxc.Container(_checked(name), CONF.lxc.container_path)


@privsep.sys_admin_pctxt.entrypoint
def define(name: str, config_text: str) -> None:
    """Create or replace the container's config file."""
    path = container_dir(name)
    os.makedirs(CONF.lxc.container_path, mode=0o711, exist_ok=True)
    os.makedirs(path, mode=0o711, exist_ok=True)
    tmp = os.path.join(path, CONFIG_FILE + '.tmp')
    with open(tmp, 'w') as f:
        f.write(config_text)
    os.rename(tmp, os.path.join(path, CONFIG_FILE))


@privsep.sys_admin_pctxt.entrypoint
def read_config(name: str) -> str:
    """The container's config text; '' if it has none."""
    return _read_text(os.path.join(container_dir(name), CONFIG_FILE))


def _read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ''


@privsep.sys_admin_pctxt.entrypoint
def start(name: str, timeout: int) -> tuple:
    """Start the container; return (started, tail of its liblxc log).

    liblxc's own ``lxc-start`` runs in a fresh process: liblxc's start()
    moves its caller into the container's monitor cgroup, and the monitor
    it daemonises is a copy of that caller, so starting from this (large)
    process would cost a fork of it per start and keep a copy of it, tens
    of MiB, alive next to every container.
    """
    log = os.path.join(container_dir(name), LXC_LOG)
    try:
        # The log is named here, not in the config: liblxc opens a config's
        # lxc.log.file for every handle of the container (each state query
        # here) and never closes it, which would leak descriptors of this
        # long-lived daemon and pin deleted logs.
        result = subprocess.run(
            ['lxc-start', '-n', _checked(name), '-P',
             CONF.lxc.container_path, '-o', log, '-l', LXC_LOG_LEVEL],
            capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, 'no RUNNING state within %d s' % timeout
    if result.returncode == 0:
        return True, ''
    return False, _tail(log, 2048)


@privsep.sys_admin_pctxt.entrypoint
def state(name: str) -> tuple:
    """(liblxc state, init pid); ('UNDEFINED', -1) for no such container."""
    c = _container(name)
    if not c.defined:
        return 'UNDEFINED', -1
    lxc_state, pid = c.state, c.init_pid
    # We freeze through the cgroup, which liblxc's monitor never notices:
    # it keeps reporting the state of its own last freeze or thaw.
    if lxc_state in ('RUNNING', 'FROZEN', 'FREEZING', 'THAWED'):
        try:
            frozen = _freezer_state(pid)
        except OSError:   # init just exited
            frozen = None
        if frozen is not None:
            lxc_state = 'FROZEN' if frozen else 'RUNNING'
    return lxc_state, pid


@privsep.sys_admin_pctxt.entrypoint
def list_names() -> list:
    return list(lxc.list_containers(active=True, defined=True,
                                    config_path=CONF.lxc.container_path))


@privsep.sys_admin_pctxt.entrypoint
def instance_names(prefix: str) -> list:
    """Values of the first config line starting with ``prefix``, one per
    container that has one."""
    names = []
    for name in lxc.list_containers(config_path=CONF.lxc.container_path):
        try:
            with open(os.path.join(container_dir(name), CONFIG_FILE)) as f:
                first = f.readline()
        except (OSError, ValueError):
            continue
        if first.startswith(prefix):
            names.append(first[len(prefix):].strip())
    return names


@privsep.sys_admin_pctxt.entrypoint
def rootfs_paths() -> list:
    """``lxc.rootfs.path`` of every defined container."""
    paths = []
    for name in lxc.list_containers(config_path=CONF.lxc.container_path):
        try:
            with open(os.path.join(container_dir(name), CONFIG_FILE)) as f:
                paths += [line.split('=', 1)[1].strip() for line in f
                          if line.split('=', 1)[0].strip() ==
                          'lxc.rootfs.path']
        except (OSError, ValueError):
            continue
    return paths


@privsep.sys_admin_pctxt.entrypoint
def stop(name: str) -> bool:
    """Kill the container at once; True if it is stopped afterwards."""
    c = _container(name)
    if c.running:
        if _freezer_state(c.init_pid):
            # A frozen init cannot die: thaw first.
            _set_frozen(c.init_pid, False)
        c.stop()
    return not c.running


@privsep.sys_admin_pctxt.entrypoint
def request_shutdown(name: str) -> bool:
    """Send the guest init its halt signal; do not wait."""
    c = _container(name)
    return c.running and c.shutdown(0)


@privsep.sys_admin_pctxt.entrypoint
def request_reboot(name: str) -> bool:
    """Send the guest init its reboot signal; do not wait."""
    c = _container(name)
    return c.running and c.reboot()


@privsep.sys_admin_pctxt.entrypoint
def set_frozen(name: str, frozen: bool, timeout: float = 10.0) -> None:
    """Freeze or thaw the guest; TimeoutError if its cgroup does not
    reach that state within ``timeout`` seconds."""
    _set_frozen(_container(name).init_pid, frozen, timeout)


@privsep.sys_admin_pctxt.entrypoint
def read_console_log(name: str, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of the console, across one rotation."""
    log = os.path.join(container_dir(name), CONSOLE_LOG)
    data = _tail(log + '.1', max_bytes, binary=True)
    data += _tail(log, max_bytes, binary=True)
    return data[-max_bytes:]


@privsep.sys_admin_pctxt.entrypoint
def run_in_guest(name: str, argv: list, timeout: int,
                 stdin: bytes = b'') -> tuple:
    """Run ``argv`` inside the running guest; return (exit code, output).

    Like start, attaching runs in a fresh ``lxc-attach`` process. Exit
    code 124 means the command did not finish within ``timeout`` seconds.
    ``stdin`` is the command's input: secrets go there, never in argv
    (which any process of the guest or the host can read).
    """
    try:
        result = subprocess.run(
            ['lxc-attach', '-n', _checked(name), '-P',
             CONF.lxc.container_path, '--clear-env', '--'] + list(argv),
            input=stdin or None,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b'').decode(errors='replace')
    return result.returncode, result.stdout.decode(errors='replace')


# Run by send_console() in a fresh interpreter that imports nothing else
# (this module's imports take seconds). liblxc hands over the console as a
# pty master and keeps the console taken for as long as the command socket
# it opened for the request stays open; python-lxc returns only the pty,
# so the helper finds that socket among its own descriptors and passes
# both on. It exits 1 (with liblxc's reason on stderr) when the console
# cannot be had: container not running, or the console already taken.
_CONSOLE_HELPER = """
import os, socket, stat, sys
import lxc

def is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False

name, lxcpath, address = sys.argv[1:]
try:
    pty = lxc.Container(name, lxcpath).console_getfd(0)
except Exception as e:
    sys.exit(str(e))
if not os.isatty(pty):   # seen while the container stops
    sys.exit('no console pty: the container is stopping')
fds = [pty] + [fd for fd in range(3, 256) if fd != pty and is_socket(fd)]
with socket.socket(socket.AF_UNIX) as peer:
    peer.connect('\\0' + address)
    socket.send_fds(peer, [b'console'], fds)
"""
CONSOLE_ADDRESS_PREFIX = '\0nova-lxd-py-console-'


@privsep.sys_admin_pctxt.entrypoint
def send_console(name: str, address: str, timeout: int = 10) -> str:
    """Open the container's console and send it to the caller.

    The caller listens on the abstract unix socket ``address`` (which
    starts with CONSOLE_ADDRESS_PREFIX); it receives, with SCM_RIGHTS,
    the pty master of the console first and the descriptors that keep the
    console taken after it: closing them all frees the console. Returns ''
    when sent, else why not.
    """
    if not address.startswith(CONSOLE_ADDRESS_PREFIX) or \
            not address[1:].isprintable():
        raise ValueError('not a console address: %r' % address)
    try:
        result = subprocess.run(
            # -I: nothing from the environment or the working directory
            # on this root process's import path.
            [sys.executable, '-I', '-c', _CONSOLE_HELPER, _checked(name),
             CONF.lxc.container_path, address[1:]],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 'no console within %d s' % timeout
    if result.returncode:
        return result.stderr.decode(errors='replace').strip()[-500:] or \
            'console helper exited with %d' % result.returncode
    return ''


@privsep.sys_admin_pctxt.entrypoint
def monitor_pid(name: str) -> int:
    """Pid of the liblxc monitor of the running container; -1 if none.

    The monitor (``lxc-start``) holds the console; it exits when the
    container stops, and stays across a reboot from inside the guest.
    """
    c = _container(name)
    pid = c.init_pid if c.running else -1
    if pid <= 0:
        return -1
    try:
        with open('/proc/%d/status' % pid) as f:
            ppid = int(next(line for line in f
                            if line.startswith('PPid:')).split()[1])
        with open('/proc/%d/cmdline' % ppid, 'rb') as f:
            cmdline = f.read()
    except (OSError, StopIteration, ValueError):
        return -1
    return ppid if cmdline.startswith(b'[lxc monitor]') else -1


def _tail(path, max_bytes, binary=False):
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except FileNotFoundError:
        data = b''
    return data if binary else data.decode(errors='replace')


def _payload_cgroups(pid):
    """{controller: path} of the container's payload cgroup."""
    result = {}
    with open('/proc/%d/cgroup' % pid) as f:
        for line in f:
            _, controllers, path = line.rstrip('\n').split(':', 2)
            # Cut below the payload cgroup: init may sit in a child of it.
            path = re.sub(r'(/lxc\.payload\.[^/]+).*', r'\1', path)
            for ctrl in (controllers or 'unified').split(','):
                result[ctrl] = path
    return result


def _freezer_state(pid):
    if pid <= 0:
        return None
    groups = _payload_cgroups(pid)
    if 'freezer' in groups:
        path = os.path.join(CGROUP_ROOT, 'freezer',
                            groups['freezer'].lstrip('/'), 'freezer.state')
        with open(path) as f:
            return f.read().strip() != 'THAWED'
    path = _unified_dir(groups)
    with open(os.path.join(path, 'cgroup.freeze')) as f:
        return f.read().strip() == '1'


def _unified_dir(groups):
    base = CGROUP_ROOT
    if not os.path.exists(os.path.join(base, 'cgroup.controllers')):
        base = os.path.join(CGROUP_ROOT, 'unified')
    return os.path.join(base, groups['unified'].lstrip('/'))


def _set_frozen(pid, frozen, timeout=10.0):
    if pid <= 0:
        raise ValueError('container is not running')
    groups = _payload_cgroups(pid)
    if 'freezer' in groups:
        path = os.path.join(CGROUP_ROOT, 'freezer',
                            groups['freezer'].lstrip('/'), 'freezer.state')
        want = 'FROZEN' if frozen else 'THAWED'
        check = (path, want)
        with open(path, 'w') as f:
            f.write(want)
    else:
        path = _unified_dir(groups)
        with open(os.path.join(path, 'cgroup.freeze'), 'w') as f:
            f.write('1' if frozen else '0')
        check = (os.path.join(path, 'cgroup.events'),
                 'frozen %d' % int(frozen))
    deadline = time.monotonic() + timeout
    while True:
        with open(check[0]) as f:
            if check[1] in f.read():
                return
        if time.monotonic() > deadline:
            raise TimeoutError('cgroup did not reach %s' % check[1])
        time.sleep(0.002)


@privsep.sys_admin_pctxt.entrypoint
def mark(name: str, marker: str, present: bool) -> None:
    """Create or remove a flag file (e.g. 'suspended') in the container dir."""
    if marker not in ('suspended', 'checkpointed', 'hotplugged'):
        raise ValueError('unknown marker %r' % marker)
    path = os.path.join(container_dir(name), marker)
    if present:
        with open(path, 'w'):
            pass
    elif os.path.exists(path):
        os.unlink(path)


def is_marked(name, marker):
    return os.path.exists(os.path.join(container_dir(name), marker))


def lxc_version():
    return lxc.version


def lxc_version_int():
    """liblxc's version as Nova's integer form: 5.0.2 -> 5000002."""
    parts = [int(p) for p in re.findall(r'\d+', lxc.version)[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 1000000 + parts[1] * 1000 + parts[2]


# The instance's own config while a rescue container runs under its name.
RESCUE_KEPT = CONFIG_FILE + '.rescue-saved'


@privsep.sys_admin_pctxt.entrypoint
def keep_config(name: str) -> str:
    """Put the container's config aside for a rescue; return the kept text.

    Kept once: if a copy is there already (a rescue that failed half way
    and is tried again), that copy is the instance's own config and stays;
    the current one may be a rescue config.
    """
    path = container_dir(name)
    kept = os.path.join(path, RESCUE_KEPT)
    if not os.path.exists(kept):
        with open(os.path.join(path, CONFIG_FILE)) as f:
            text = f.read()
        with open(kept + '.tmp', 'w') as f:
            f.write(text)
        os.rename(kept + '.tmp', kept)
    with open(kept) as f:
        return f.read()


@privsep.sys_admin_pctxt.entrypoint
def kept_config(name: str) -> str:
    """The config keep_config put aside; '' if there is none."""
    return _read_text(os.path.join(container_dir(name), RESCUE_KEPT))


@privsep.sys_admin_pctxt.entrypoint
def restore_config(name: str) -> bool:
    """Make the kept config the container's again; False if none is kept."""
    path = container_dir(name)
    try:
        os.rename(os.path.join(path, RESCUE_KEPT),
                  os.path.join(path, CONFIG_FILE))
    except FileNotFoundError:
        return False
    return True
