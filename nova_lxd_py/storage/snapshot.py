"""Live snapshots of a container's root file system, streamed to Glance.

A snapshot is consistent and the guest is not stopped:

1. **take** (privileged): the guest's writable overlay layer (only what
   it changed over the cached image; the whole tree for a ``dir`` root) is
   copied with ``cp -a --reflink=auto`` into ``<container dir>/snapshot/
   tree`` while the guest runs; then the guest is frozen through its
   freezer cgroup, the copy is brought up to date (what changed since the
   copy began, found by ctime, is copied again; what was removed is
   removed), and the guest is thawed. It is frozen for a walk of the layer
   plus what it wrote meanwhile, not for a copy of all it ever changed. A
   btrfs root is instead snapshotted read-only while the guest is frozen.
   A guest the user paused stays frozen and a stopped one stays stopped;
   both are copied once, so a start or an unpause cannot race the read.
   (See :mod:`frozen_copy`.)
2. **stream** (privileged): the copy and the cached image are stacked as a
   read-only overlay (the copy on top: its whiteouts hide what the guest
   deleted) and GNU tar reads the tree, as the guest's root in a user
   namespace with the guest's id map, so owners come out as the image's
   own (root = 0) with no rewriting pass. The mount lives in a private
   mount namespace that dies with the tar process: nothing is ever mounted
   on the host, even if we are killed. zstd compresses (``[lxc]
   snapshot_compression``); the driver's image path reads the result as
   any rootfs tarball.
3. **upload** (nova-compute): the stream reaches nova-compute through a
   FIFO (privsep cannot pass file descriptors) and goes to Glance as it is
   produced: no full copy of the tree is ever written.

Everything ``take`` made is removed by ``discard``, on success or not.
"""

import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time

from nova.compute import task_states
from nova.image import glance
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import excutils

from nova_lxd_py import privsep
from nova_lxd_py.storage.backends import btrfs
from nova_lxd_py.storage import frozen_copy
from nova_lxd_py.virt import config
from nova_lxd_py.virt import container

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

SNAPSHOT_DIR = 'snapshot'     # in the container dir; one snapshot at a time
LAYER = 'tree'                # the copy (writable layer or whole root)
ROOT = 'root'                 # where the overlay is mounted (privately)
OVERLAY_PREFIX = 'overlay:'
DIR_PREFIX = 'dir:'
# [lxc] snapshot_compression: the compressor's argv, None for none. On a
# 2-CPU host level 1 runs at 100-200 MB/s of tree, --fast=4 near twice
# that for a third more bytes (benchmarks/snapshot.py).
COMPRESSORS = {
    'zstd': ('zstd', '-q', '-1', '-T0', '-c'),
    'zstd-fast': ('zstd', '-q', '--fast=4', '-T0', '-c'),
    'none': None,
}
CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)
# Characters that the overlay option string or the shell would split.
UNSAFE_PATH_CHARS = (',', ':', '\\', '\n')
SLOW_FREEZE_SECONDS = 1.0
SnapshotFailed = frozen_copy.SnapshotFailed


# -- privileged: the privsep daemon's side ----------------------------------

def _inside(path, root):
    real, root = os.path.realpath(path), os.path.realpath(root)
    return real.startswith(root + os.sep)


def _config_text(cdir):
    try:
        with open(os.path.join(cdir, container.CONFIG_FILE)) as f:
            return f.read()
    except FileNotFoundError:
        raise SnapshotFailed('the container has no config: it is gone')


def _idmap(cdir):
    """(uid, gid, count) of the guest's root on the host; 0s if privileged."""
    idmap = config.idmap_of(_config_text(cdir))
    if idmap is None:
        return 0, 0, 65536
    return idmap.uid_start, idmap.gid_start, idmap.size


def _source(cdir):
    """(cached image tree or None, the tree to copy) of a container's root.

    An overlay root (``overlay:<image>:<upper>``) is copied as its writable
    layer, later stacked again over the image; a directory root (the
    ``dir`` backend) as a whole. Read from the container's own config and
    checked: the image must be in the image cache and the copied tree in
    the container's directory, so the stream only ever reads a guest's
    tree.
    """
    paths = config.config_values(_config_text(cdir), 'lxc.rootfs.path')
    if len(paths) != 1:
        raise SnapshotFailed('the container config has %d root file '
                             'systems' % len(paths))
    value = paths[0]
    if value.startswith(OVERLAY_PREFIX):
        parts = value[len(OVERLAY_PREFIX):].split(':')
        if len(parts) != 2:
            raise SnapshotFailed('overlay roots with %d layers are not '
                                 'supported' % len(parts))
        lower, tree = parts
        if not _inside(lower, CONF.lxc.image_cache_path):
            raise SnapshotFailed('the root disk %s is not one this driver '
                                 'made' % value)
    else:
        lower, tree = None, value[len(DIR_PREFIX):] \
            if value.startswith(DIR_PREFIX) else value
    if not _inside(tree, cdir) or not os.path.isdir(tree):
        raise SnapshotFailed('the root disk %s is not one this driver made'
                             % value)
    for path in (lower or '', cdir):
        if any(c in path for c in UNSAFE_PATH_CHARS):
            raise SnapshotFailed(
                'paths with any of %s cannot be mounted as overlay layers: '
                '%s' % (' '.join(UNSAFE_PATH_CHARS[:3]), path))
    return lower, tree


def _drop_host_lost_found(tree, uid, gid, count):
    """Leave out mkfs's lost+found of a root that is a file system.

    A size-limited root disk is a file system of its own; its lost+found
    belongs to host root, not to the guest, which can neither read it nor
    would get it back in a new instance (mkfs makes its own).
    """
    path = os.path.join(tree, 'lost+found')
    try:
        owner = os.lstat(path).st_uid
    except FileNotFoundError:
        return
    if (uid, gid) != (0, 0) and not uid <= owner < uid + count:
        frozen_copy.remove(path)


def _remove_snapshot_dir(snap):
    """Remove a snapshot dir, with the btrfs snapshot it may hold."""
    layer = os.path.join(snap, LAYER)
    if btrfs.is_subvolume(layer):
        btrfs.delete_subvolume(layer)
    frozen_copy.remove(snap)


@privsep.sys_admin_pctxt.entrypoint
def take(name: str) -> dict:
    """Copy the guest's writable layer, consistently, leaving it running.

    Returns the guest's state, how long it took and how long the guest
    was frozen (seconds), and how many entries were copied while it was
    (-1: all). A leftover of an earlier (killed) snapshot is replaced: Nova
    runs one snapshot of an instance at a time.
    """
    started = time.monotonic()
    cdir = container.container_dir(name)
    _, tree = _source(cdir)
    snap = os.path.join(cdir, SNAPSHOT_DIR)
    _remove_snapshot_dir(snap)
    # The guest's root (a user namespace) must reach the copy: 0711.
    os.mkdir(snap, 0o711)
    lxc_state, _ = container.state(name)
    if lxc_state == 'UNDEFINED':
        raise SnapshotFailed('the container is gone')
    if lxc_state not in ('RUNNING', 'FROZEN', 'STOPPED'):
        raise SnapshotFailed('the container is %s; try again once it is '
                             'running or stopped' % lxc_state)
    dest = os.path.join(snap, LAYER)
    if btrfs.is_subvolume(tree):
        lxc_state, frozen = frozen_copy.snapshot_subvolume(
            name, lxc_state, tree, dest)
        recopied = 0
    elif lxc_state == 'RUNNING':
        lxc_state, recopied, frozen = frozen_copy.copy_running(
            name, tree, dest)
    else:
        frozen_copy.copy(tree, dest)
        recopied, frozen = -1, 0.0
    _drop_host_lost_found(dest, *_idmap(cdir))
    return {'state': lxc_state, 'seconds': time.monotonic() - started,
            'frozen_seconds': frozen, 'recopied': recopied}


@privsep.sys_admin_pctxt.entrypoint
def discard(name: str) -> None:
    """Remove what ``take`` made; no error if there is nothing."""
    _remove_snapshot_dir(os.path.join(container.container_dir(name),
                                      SNAPSHOT_DIR))


def _open_fifo(path):
    """A write end of the FIFO ``path``, whose reader must be open.

    Only a FIFO is accepted (checked on the very inode opened, never
    through a symlink), so the entrypoint cannot be made to write anywhere
    else; with no reader the open fails at once instead of blocking.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise SnapshotFailed('%s is not a FIFO' % path)
        out = os.open('/proc/self/fd/%d' % fd,
                      os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(fd)
    os.set_blocking(out, True)
    _widen(out)
    return out


def _widen(fd):
    """Let a whole chunk sit in the pipe: fewer wake-ups on both ends."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass


def tar_argv(layer, lower, root, uid, gid, count):
    """GNU tar of the copy ``layer`` (stacked over ``lower`` if not None).

    An overlay is mounted at ``root`` by the guest's root in a user
    namespace with the guest's map (``userxattr``: overlay metadata made in
    a user namespace is kept in user.overlay.* xattrs), or by host root for
    a privileged guest; either way in a mount namespace of its own, gone
    when tar exits. Paths go to the shell as arguments, never as code.
    """
    tar = ['tar', '-c', '-f', '-', '--numeric-owner', '--sparse',
           '--warning=no-file-ignored', '.']
    privileged = (uid, gid) == (0, 0)
    if lower is None:
        argv = ['sh', '-c', 'cd "$1" && shift && exec "$@"', 'sh',
                layer] + tar
    else:
        options = 'ro,%slowerdir=%s:%s' % (
            '' if privileged else 'userxattr,', layer, lower)
        argv = ['unshare', '--mount', '--propagation', 'private', '--',
                'sh', '-c', 'mount -t overlay -o "$1" overlay "$2" && '
                'cd "$2" && shift 2 && exec "$@"', 'sh', options, root] + tar
    if privileged:
        return argv
    return ['lxc-usernsexec', '-m', 'u:0:%d:%d' % (uid, count),
            '-m', 'g:0:%d:%d' % (gid, count), '--'] + argv


def _first_error(f, proc):
    f.seek(0)
    lines = [line.strip() for line in f.read().decode(
        errors='replace').splitlines()
        if line.strip() and 'Exiting with failure status' not in line]
    return lines[0] if lines else 'exit status %s' % proc.returncode


@privsep.sys_admin_pctxt.entrypoint
def stream(name: str, fifo: str, compression: str) -> dict:
    """Write the snapshot ``take`` made, as a tar stream compressed as
    ``compression`` (a key of COMPRESSORS), to ``fifo``.

    Returns when every byte is written and both tools have exited; raises
    SnapshotFailed if either failed (the reader must then drop what it
    read). Its duration in seconds is returned.
    """
    if compression not in COMPRESSORS:
        raise SnapshotFailed('unknown compression %r' % compression)
    compressor = COMPRESSORS[compression]
    cdir = container.container_dir(name)
    lower, _ = _source(cdir)
    snap = os.path.join(cdir, SNAPSHOT_DIR)
    layer, root = os.path.join(snap, LAYER), os.path.join(snap, ROOT)
    if not os.path.isdir(layer):
        raise SnapshotFailed('no snapshot was taken')
    if lower is not None:
        os.makedirs(root, mode=0o755, exist_ok=True)
    argv = tar_argv(layer, lower, root, *_idmap(cdir))
    started = time.monotonic()
    out = _open_fifo(fifo)
    procs = []
    try:
        with tempfile.TemporaryFile() as tar_err, \
                tempfile.TemporaryFile() as zstd_err:
            tar = subprocess.Popen(
                argv, stdout=subprocess.PIPE if compressor else out,
                stderr=tar_err)
            procs.append((tar, tar_err, 'tar'))
            if compressor:
                _widen(tar.stdout.fileno())
                procs.append((subprocess.Popen(
                    compressor, stdin=tar.stdout, stdout=out,
                    stderr=zstd_err), zstd_err, 'zstd'))
                tar.stdout.close()
            os.close(out)
            out = None
            failed = [(what, _first_error(err, proc))
                      for proc, err, what in procs if proc.wait() != 0]
    finally:
        if out is not None:
            os.close(out)
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failed:
        raise SnapshotFailed('; '.join('%s: %s' % f for f in failed))
    return {'seconds': time.monotonic() - started}


# -- nova-compute's side -----------------------------------------------------

class _Reader:
    """The file Glance's client reads: the FIFO, then the writer's outcome.

    The end of the data is only seen once the privileged stream returned
    (see send()), so the outcome is known by then: a failure raises from
    read(), which aborts the upload, and a truncated tree never becomes an
    active image. Only blocking reads of a pipe here: Nova may call read()
    from a native thread (tpool) while the writer is a green thread.
    """

    def __init__(self, fd, outcome):
        self.fd = fd
        self.outcome = outcome
        self.bytes = 0
        self.eof = False

    def read(self, size=-1):
        if self.eof:
            return b''
        if size is None or size < 0:
            return b''.join(iter(lambda: self.read(CHUNK), b''))
        if size == 0:
            return b''
        data = os.read(self.fd, min(size, CHUNK))
        if data:
            self.bytes += len(data)
            return data
        self.eof = True
        if not self.outcome.get('done'):
            raise SnapshotFailed('the snapshot stream failed: %s' % (
                self.outcome.get('error') or 'it ended early'))
        return b''


def _writer(name, fifo, compression, hold, outcome):
    """Run the privileged stream, then let the reader see the end."""
    try:
        outcome.update(stream(name, fifo, compression), done=True)
    except Exception as e:   # reported by the reader and by send()
        outcome['error'] = str(e) or type(e).__name__
    finally:
        os.close(hold)


def send(name, consumer, compression='zstd'):
    """Stream the taken snapshot of ``name`` into ``consumer(reader)``.

    ``consumer`` reads a file-like object to its end (Glance's upload);
    its result is returned with the stream's facts. Raises SnapshotFailed
    if the stream failed, or what ``consumer`` raised.

    A FIFO has no end of data while no writer has opened it yet, and
    reads as ended again once the tools exit, before their exit status is
    known: this side keeps a write end of its own open (``hold``) until
    the privileged call has returned, so the reader's end of data comes
    after the outcome, never before.
    """
    workdir = tempfile.mkdtemp(prefix='.snapshot-', dir=CONF.instances_path)
    fifo = os.path.join(workdir, 'stream')
    fds = []
    outcome = {}
    try:
        os.mkfifo(fifo, 0o600)
        # Non-blocking opens never wait for the other end; reads block.
        fds.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        os.set_blocking(fds[0], True)
        _widen(fds[0])
        fds.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        reader = _Reader(fds[0], outcome)
        thread = threading.Thread(
            target=_writer, args=(name, fifo, compression, fds[1], outcome),
            name='snapshot-%s' % name, daemon=True)
        thread.start()
        del fds[1]     # the writer closes it
        started = time.monotonic()
        try:
            result = consumer(reader)
        finally:
            # Whatever happened, the tools see the reader go and end.
            os.close(fds.pop())
            thread.join()
        if not reader.eof:
            raise SnapshotFailed('the upload stopped reading the snapshot '
                                 'after %d bytes' % reader.bytes)
        if not outcome.get('done'):
            raise SnapshotFailed('the snapshot stream failed: %s'
                                 % outcome.get('error'))
        took = max(time.monotonic() - started, 1e-6)
        return result, {'bytes': reader.bytes, 'seconds': took}
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def upload(context, instance, image_id, metadata, update_task_state):
    """Snapshot ``instance``'s root into the Glance image ``image_id``,
    compressed as ``[lxc] snapshot_compression`` says.

    ``metadata`` is what the image record gets (formats, properties);
    Nova's compute manager made the record and deletes it if this raises.
    Returns the figures that were logged.
    """
    try:
        taken = take(instance.uuid)
        LOG.info('Snapshot of the root disk taken in %(took).3f s; the '
                 'guest (%(state)s) was frozen for %(frozen).3f s',
                 {'took': taken['seconds'], 'state': taken['state'],
                  'frozen': taken['frozen_seconds']}, instance=instance)
        if taken['frozen_seconds'] > SLOW_FREEZE_SECONDS:
            LOG.warning('The guest was frozen for %.1f s during its '
                        'snapshot: it changed many files while its root '
                        'disk was being copied', taken['frozen_seconds'],
                        instance=instance)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)
        api = glance.API()
        _, sent = send(instance.uuid, lambda data: api.update(
            context, image_id, metadata, data=data, purge_props=False),
            CONF.lxc.snapshot_compression)
    except Exception:
        with excutils.save_and_reraise_exception():
            _discard_quietly(instance)
    discard(instance.uuid)
    LOG.info('Snapshot uploaded to image %(image)s: %(mib).1f MiB in '
             '%(s).1f s (%(rate).1f MiB/s)',
             {'image': image_id, 'mib': sent['bytes'] / 2**20,
              's': sent['seconds'],
              'rate': sent['bytes'] / 2**20 / sent['seconds']},
             instance=instance)
    return dict(taken, **sent)


def _discard_quietly(instance):
    try:
        discard(instance.uuid)
    except Exception as e:
        LOG.error('Could not remove the snapshot of the root disk: %s', e,
                  instance=instance)
