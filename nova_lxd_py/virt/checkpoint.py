"""Checkpoint/restore of guests with CRIU: what this host can do.

liblxc's ``lxc-checkpoint`` runs the ``criu`` it finds on PATH (the one
``tools/criu/build.sh`` installs comes first, in /usr/local/sbin). Whether
that CRIU works depends on its version and on this kernel, so nova-compute
finds out once, at start (``Checkpoints.probe``), and says so in its log:

- ``criu check`` must pass (Debian 12's CRIU 3.17 fails it on kernels with a
  larger vDSO);
- liblxc restores a guest's ports (``lxc.net.N.type = phys``) only with
  CRIU >= 3.15 (``--external netdev[...]``): the device is moved into the
  restored guest, never re-created inside its user namespace, which an
  unprivileged guest may not do (criu issue #3004);
- post-copy (lazy pages) needs userfaultfd (``uffd-noncoop``), pre-copy
  needs dirty memory tracking (``mem_dirty_track``, CONFIG_MEM_SOFT_DIRTY).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from oslo_config import cfg
from oslo_log import log as logging

from nova_lxd_py import privsep
from nova_lxd_py.virt import config as lxc_config
from nova_lxd_py.virt import container
from nova_lxd_py.virt import criu_shim

CONF = cfg.CONF

LOG = logging.getLogger(__name__)

# liblxc 5's restore of phys devices (CRIU_EXTERNAL_NETDEV in its criu.c).
MIN_VERSION = (3, 15)
FEATURES = ('uffd-noncoop', 'mem_dirty_track')
CHECK_TIMEOUT = 60

# In a checkpoint directory: liblxc's record of the console's tty (set
# aside while restoring, see criu_shim) and CRIU's logs.
TTY_INFO = 'tty.info'
TTY_INFO_KEPT = 'tty.info.kept'
RESTORE_CONFIG = 'config.restore'
RESTORE_ROOT = 'restore-root'
# A guest's checkpoint: in its container directory, nowhere else.
IMAGES_DIR = 'checkpoint'


def images_dir(name):
    """Where the guest ``name``'s checkpoint is (CRIU's images)."""
    return os.path.join(container.container_dir(name), IMAGES_DIR)


@privsep.sys_admin_pctxt.entrypoint
def criu_check(timeout: int) -> dict:
    """What the ``criu`` on PATH says about this host.

    {'path': its path or '', 'version': 'X.Y[.Z]' or '', 'check': '' unless
    ``criu check`` ran and failed, then its last lines, 'features':
    {name: bool}}.
    """
    result = {'path': shutil.which('criu') or '', 'version': '',
              'check': '', 'features': {}}
    if not result['path']:
        return result
    out = _run([result['path'], '--version'], timeout)
    match = re.search(r'^Version:\s*(\d+(?:\.\d+)+)', out[1], re.M)
    result['version'] = match.group(1) if match else ''
    code, text = _run([result['path'], 'check'], timeout)
    result['check'] = '' if code == 0 else (
        '; '.join(text.strip().splitlines()[-3:])[-500:] or
        'criu check exited with %d' % code)
    for feature in FEATURES:
        code, _ = _run([result['path'], 'check', '--feature', feature],
                       timeout)
        result['features'][feature] = code == 0
    return result


def _run(argv, timeout):
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, '%s did not answer within %d s' % (argv[1], timeout)
    except OSError as e:
        return 127, str(e)
    return done.returncode, done.stdout.decode(errors='replace')


def version_tuple(text):
    return tuple(int(p) for p in text.split('.')) if text else ()


class Checkpoints:
    """This host's CRIU, as probed at start: ``available`` and, if not,
    ``reason`` (for an operator: what to install or fix)."""

    def __init__(self):
        self.version = ''
        self.reason = 'not probed yet'
        self.features = {}

    @property
    def available(self):
        return not self.reason

    @property
    def lazy_pages(self):
        return self.available and self.features.get('uffd-noncoop', False)

    @property
    def dirty_tracking(self):
        return self.available and self.features.get('mem_dirty_track',
                                                    False)

    def probe(self):
        found = criu_check(CHECK_TIMEOUT)
        self.version = found['version']
        self.features = found['features']
        self.reason = self._reason(found)
        if self.reason:
            LOG.warning('Guests on this host cannot be checkpointed: %s. '
                        'tools/criu/build.sh builds a CRIU that works here.',
                        self.reason)
        else:
            LOG.info('CRIU %(version)s (%(path)s) passes criu check: '
                     'post-copy (lazy pages) %(lazy)s, pre-copy (dirty '
                     'memory tracking) %(dirty)s',
                     {'version': self.version, 'path': found['path'],
                      'lazy': 'yes' if self.lazy_pages else 'no',
                      'dirty': 'yes' if self.dirty_tracking else 'no'})
        return self.available

    @staticmethod
    def _reason(found):
        if not found['path']:
            return 'no criu on PATH'
        if not found['version']:
            return '%s reports no version' % found['path']
        if version_tuple(found['version']) < MIN_VERSION:
            return ('CRIU %s at %s is older than %s, which liblxc needs to '
                    'restore a guest\'s ports' % (
                        found['version'], found['path'],
                        '.'.join(map(str, MIN_VERSION))))
        if found['check']:
            return 'criu check fails with CRIU %s at %s: %s' % (
                found['version'], found['path'], found['check'])
        return ''


# -- dump and restore (liblxc's lxc-checkpoint) ------------------------------

@privsep.sys_admin_pctxt.entrypoint
def dump(name: str, timeout: int) -> str:
    """Checkpoint the running guest into ``images_dir(name)`` and stop it.

    Returns '' when done (the guest is stopped, its ports back on this
    host), else why not, from CRIU's log (the guest then still runs).
    """
    directory = images_dir(name)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    code, out = _lxc_checkpoint(name, ['-s', '-D', directory], timeout)
    if code == 0:
        return ''
    return _failure(os.path.join(directory, 'dump.log'), out, code)


@privsep.sys_admin_pctxt.entrypoint
def restore(name: str, timeout: int) -> str:
    """Restore the guest checkpointed in ``images_dir(name)``; '' when it
    runs again, else why not (nothing of the attempt is left then, the
    checkpoint is kept)."""
    cdir = container.container_dir(name)
    directory = images_dir(name)
    if not os.path.exists(os.path.join(directory, 'inventory.img')):
        return 'no checkpoint of the guest in %s' % directory
    text = container.read_config(name)
    root, mounted = _restore_root(cdir, text)
    tty_info = os.path.join(directory, TTY_INFO)
    kept = os.path.join(directory, TTY_INFO_KEPT)
    master = slave = -1
    shim_dir = tempfile.mkdtemp(prefix='nova-lxd-py-criu-')
    rcfile = os.path.join(cdir, RESTORE_CONFIG)
    try:
        _own_images(directory, lxc_config.idmap_of(text))
        env = dict(os.environ)
        real = shutil.which('criu')
        if not real:
            return 'no criu on PATH'
        env[criu_shim.CRIU] = real
        if os.path.exists(tty_info) or os.path.exists(kept):
            if os.path.exists(tty_info):
                os.replace(tty_info, kept)
            with open(kept) as f:
                tty = f.read().strip()
            master, slave = os.openpty()
            idmap = lxc_config.idmap_of(text)
            if idmap:
                os.fchown(slave, idmap.uid_start, idmap.gid_start)
            env[criu_shim.TTY] = 'fd[%d]:%s' % (slave, tty)
            env[criu_shim.CONSOLE] = os.ttyname(slave)
        _write_shim(shim_dir)
        env['PATH'] = shim_dir + os.pathsep + env.get('PATH', '')
        with open(rcfile, 'w') as f:
            f.write(_restore_config(text, root))
        code, out = _lxc_checkpoint(
            name, ['-r', '-D', directory, '--rcfile', rcfile], timeout,
            env=env, pass_fds=(slave,) if slave >= 0 else ())
        if code:
            if os.path.exists(kept):
                os.replace(kept, tty_info)
            return _failure(os.path.join(directory, 'restore.log'), out, code)
        if master >= 0:
            _start_keeper(master, cdir, text)
        return ''
    finally:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(shim_dir, ignore_errors=True)
        for path in (rcfile,):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if mounted:
            # The restored guest holds its own copy of the mount.
            subprocess.run(['umount', '-l', root], check=False,
                           capture_output=True)
            os.rmdir(root)


def _lxc_checkpoint(name, args, timeout, env=None, pass_fds=()):
    log = os.path.join(container.container_dir(name), container.LXC_LOG)
    argv = ['lxc-checkpoint', '-n', container._checked(name), '-P',
            CONF.lxc.container_path, '-o', log, '-l',
            container.LXC_LOG_LEVEL] + args
    # Its output goes to a file, not a pipe: the monitor that a restore
    # leaves running keeps lxc-checkpoint's descriptors.
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout,
                                  env=env, pass_fds=pass_fds)
        except subprocess.TimeoutExpired:
            return 124, 'lxc-checkpoint did not finish within %d s' % timeout
        out.seek(0)
        return done.returncode, out.read()[-4096:].decode(errors='replace')


def _failure(criu_log, out, code):
    lines = []
    try:
        with open(criu_log, errors='replace') as f:
            lines = [line.strip() for line in f if 'Error (' in line and
                     'RLIMIT_NOFILE' not in line]
    except OSError:
        pass
    if not lines:
        lines = out.strip().splitlines()[-1:] or [
            'lxc-checkpoint exited with %d' % code]
    return '; '.join(lines[-3:])[-800:]


def _restore_root(cdir, text):
    """(rootfs path for the restore, whether it was mounted here).

    liblxc's restore bind-mounts ``lxc.rootfs.path`` as a plain directory,
    so an overlay root is mounted here first as liblxc would have.
    """
    spec = lxc_config.config_values(text, 'lxc.rootfs.path')[-1]
    if not spec.startswith('overlay:'):
        return spec.split(':', 1)[1] if spec.startswith('dir:') else spec, \
            False
    _kind, lower, upper = spec.split(':', 2)
    work = os.path.join(os.path.dirname(upper), 'work')
    options = ['lowerdir=' + lower, 'upperdir=' + upper, 'workdir=' + work]
    options += [o for v in lxc_config.config_values(text,
                                                    'lxc.rootfs.options')
                for o in v.split(',') if o]
    root = os.path.join(cdir, RESTORE_ROOT)
    os.makedirs(root, exist_ok=True)
    done = subprocess.run(['mount', '-t', 'overlay', 'overlay', '-o',
                           ','.join(options), root], capture_output=True)
    if done.returncode:
        os.rmdir(root)
        raise OSError('cannot mount the guest\'s root for its restore: %s'
                      % done.stderr.decode(errors='replace').strip())
    return root, True


def _restore_config(text, root):
    out = []
    for line in text.splitlines():
        key = line.partition('=')[0].strip()
        if key == 'lxc.rootfs.options':
            continue
        out.append('lxc.rootfs.path = ' + root if key == 'lxc.rootfs.path'
                   else line)
    return '\n'.join(out) + '\n'


def _own_images(directory, idmap):
    # An unprivileged guest's CRIU reads some images from inside its user
    # namespace, as the guest's root.
    if not idmap:
        return
    for top, dirs, files in os.walk(directory):
        os.chown(top, idmap.uid_start, idmap.gid_start)
        for n in files:
            os.chown(os.path.join(top, n), idmap.uid_start, idmap.gid_start)


def _write_shim(directory):
    path = os.path.join(directory, 'criu')
    with open(path, 'w') as f:
        f.write('#!/bin/sh\nexec %s -I -m %s "$@"\n' % (
            sys.executable, criu_shim.__name__))
    os.chmod(path, 0o755)


def _start_keeper(master, cdir, text):
    log = (lxc_config.config_values(text, 'lxc.console.logfile') or
           [os.path.join(cdir, container.CONSOLE_LOG)])[-1]
    size = int((lxc_config.config_values(text, 'lxc.console.size') or
                [1 << 20])[-1])
    # setsid -f: the keeper is nobody's child here, in its own session.
    subprocess.run(
        ['setsid', '-f', sys.executable, '-I', '-m',
         'nova_lxd_py.virt.console_keeper', str(master), log, str(size)],
        pass_fds=(master,), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
