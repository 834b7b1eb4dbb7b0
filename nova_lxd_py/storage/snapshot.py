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
   guest the user paused stays frozen and a stopped one stays stopped; both
   are copied once, so a start or an unpause cannot race the read.
2. **stream** (privileged): the copy and the cached image are stacked as a
   read-only overlay (the copy on top: its whiteouts hide what the guest
   deleted) and GNU tar reads the tree, as the guest's root in a user
   namespace with the guest's id map, so owners come out as the image's
   own (root = 0) with no rewriting pass. The mount lives in a private
   mount namespace that dies with the tar process: nothing is ever mounted
   on the host, even if we are killed. zstd compresses; the driver's image
   path reads the result as any tar.zst rootfs.
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
from nova_lxd_py.virt import container

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

SNAPSHOT_DIR = 'snapshot'     # in the container dir; one snapshot at a time
LAYER = 'tree'                # the copy (writable layer or whole root)
ROOT = 'root'                 # where the overlay is mounted (privately)
OVERLAY_PREFIX = 'overlay:'
DIR_PREFIX = 'dir:'
# Fast levels: on a 2-CPU host level 1 runs near 230 MB/s of tree, level 3
# at 150 MB/s for a few per cent less data (benchmarks/snapshot.py).
COMPRESSOR = ('zstd', '-q', '-1', '-T0', '-c')
CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)
# Characters that the overlay option string or the shell would split.
UNSAFE_PATH_CHARS = (',', ':', '\\', '\n')
SLOW_FREEZE_SECONDS = 1.0
# File times come from a coarse clock (up to a jiffy behind time.time()).
CTIME_MARGIN_NS = 1000000000
CLOCK_DRIFT_NS = 250000000


class SnapshotFailed(Exception):
    """The snapshot could not be made; str() says why."""


# -- privileged: the privsep daemon's side ----------------------------------

def _inside(path, root):
    real, root = os.path.realpath(path), os.path.realpath(root)
    return real.startswith(root + os.sep)


def _config_values(cdir, key):
    try:
        with open(os.path.join(cdir, container.CONFIG_FILE)) as f:
            return [line.split('=', 1)[1].strip() for line in f
                    if line.split('=', 1)[0].strip() == key]
    except FileNotFoundError:
        raise SnapshotFailed('the container has no config: it is gone')


def _idmap(cdir):
    """(uid, gid, count) of the guest's root on the host; 0s if privileged."""
    maps = {}
    for value in _config_values(cdir, 'lxc.idmap'):
        kind, inside, outside, count = value.split()
        if inside == '0':
            maps[kind] = (int(outside), int(count))
    if not maps:
        return 0, 0, 65536
    return maps['u'][0], maps['g'][0], min(maps['u'][1], maps['g'][1])


def _source(cdir):
    """(cached image tree or None, the tree to copy) of a container's root.

    An overlay root (``overlay:<image>:<upper>``) is copied as its writable
    layer, later stacked again over the image; a directory root (the
    ``dir`` backend) as a whole. Read from the container's own config and
    checked: the image must be in the image cache and the copied tree in
    the container's directory, so the stream only ever reads a guest's
    tree.
    """
    paths = _config_values(cdir, 'lxc.rootfs.path')
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


def _remove(path):
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        raise SnapshotFailed('could not remove %s' % path)


def _copy(src, dest, check=True):
    """``cp -a`` (reflinks where the file system can); seconds taken.

    ``check=False`` for a copy of a tree that changes meanwhile: a file
    the guest removed under cp is an error to cp, not to us (the frozen
    pass that follows puts the copy right).
    """
    started = time.monotonic()
    proc = subprocess.run(['cp', '-a', '--reflink=auto', '--', src, dest],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0 and (check or not os.path.isdir(dest)):
        err = proc.stderr.decode(errors='replace').strip().splitlines()
        raise SnapshotFailed('copying the root disk failed: %s' % (
            err[0] if err else 'exit status %d' % proc.returncode))
    return time.monotonic() - started


# -- the frozen pass: bring a copy made while the guest ran up to date -------
#
# A change to a file, its metadata, its names or a directory's entries sets
# the inode's ctime, which no one but the kernel sets (utimensat cannot).
# An entry whose ctime is older than the start of the running copy (less a
# margin: file times are taken from a coarse clock, a jiffy behind) was
# final before cp read it, so the copy of it is right; everything newer is
# copied again while the guest is frozen, and what the guest removed is
# removed. The frozen time is then a walk of the tree plus what the guest
# changed during the first copy, instead of a copy of every changed file.

def _recent(st, since_ns):
    return st.st_ctime_ns >= since_ns


def _remove_entry(path, st):
    if stat.S_ISDIR(st.st_mode):
        _remove(path)
    else:
        os.unlink(path)


def _copy_meta(src, dst, st):
    """Owner, mode, xattrs and times of ``src`` on ``dst`` (no links
    followed). chown first: it clears set-id bits and file capabilities."""
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    names = set(os.listxattr(src, follow_symlinks=False))
    for name in set(os.listxattr(dst, follow_symlinks=False)) - names:
        os.removexattr(dst, name, follow_symlinks=False)
    for name in names:
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                    follow_symlinks=False)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_entry(src, dst, st, linked):
    """One non-directory, as cp -a would; hard links kept among copies."""
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in linked:
        os.link(linked[key], dst)
        return
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFREG:
        shutil.copyfile(src, dst, follow_symlinks=False)
    elif kind == stat.S_IFLNK:
        os.symlink(os.readlink(src), dst)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        os.mknod(dst, st.st_mode, st.st_rdev)   # overlay whiteouts
    elif kind == stat.S_IFIFO:
        os.mkfifo(dst, 0o600)
    else:
        return   # a socket: tar leaves it out anyway
    _copy_meta(src, dst, st)
    if st.st_nlink > 1:
        linked[key] = dst


def _sync_dir(src, dst, since_ns, linked):
    """Make ``dst`` equal to ``src``; the number of entries copied again."""
    found = {e.name: e for e in os.scandir(src)}
    copies = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(dst)}
    changed = 0
    for name in copies.keys() - found.keys():
        _remove_entry(os.path.join(dst, name), copies[name])
        changed += 1
    for name, entry in found.items():
        st = entry.stat(follow_symlinks=False)
        old = copies.get(name)
        path, copy = os.path.join(src, name), os.path.join(dst, name)
        if stat.S_ISDIR(st.st_mode):
            fresh = old is None or not stat.S_ISDIR(old.st_mode)
            if fresh:
                if old is not None:
                    _remove_entry(copy, old)
                os.mkdir(copy, 0o700)
            changed += _sync_dir(path, copy, since_ns, linked) + fresh
            if fresh or _recent(st, since_ns):
                _copy_meta(path, copy, st)
        elif old is None or _recent(st, since_ns) or \
                stat.S_IFMT(old.st_mode) != stat.S_IFMT(st.st_mode):
            if old is not None:
                _remove_entry(copy, old)
            _copy_entry(path, copy, st, linked)
            changed += 1
    if changed:
        # Entries made or removed above moved the copy's times.
        _copy_meta(src, dst, os.lstat(src))
    return changed


def _thaw(name):
    try:
        container.set_frozen(name, False)
    except ValueError:   # it is not running (any more): nothing is frozen
        pass


def _frozen_copy(name, src, dest):
    """Copy while running, freeze, bring the copy up to date, thaw.

    Returns (state the guest had, entries copied while frozen, seconds
    frozen). If the wall clock jumped during the running copy, file times
    cannot be compared with it: the whole tree is copied while frozen.
    """
    wall, mono = time.time_ns(), time.monotonic_ns()
    _copy(src, dest, check=False)
    drift = abs((time.time_ns() - wall) - (time.monotonic_ns() - mono))
    started = time.monotonic()
    try:
        container.set_frozen(name, True)
    except (OSError, ValueError, TimeoutError) as e:
        # A half-frozen cgroup must not stay so; it may also have stopped.
        _thaw(name)
        if container.state(name)[0] != 'STOPPED':
            raise SnapshotFailed('could not freeze the guest: %s' % e)
        _remove(dest)
        _copy(src, dest)
        return 'STOPPED', -1, 0.0
    try:
        if drift > CLOCK_DRIFT_NS:
            _remove(dest)
            _copy(src, dest)
            changed = -1
        else:
            changed = _sync_dir(src, dest, wall - CTIME_MARGIN_NS, {})
    finally:
        _thaw(name)
        frozen = time.monotonic() - started
    return 'RUNNING', changed, frozen


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
        _remove(path)


def _subvolume_snapshot(src, dest):
    """A read-only btrfs snapshot of ``src`` at ``dest``: O(1)."""
    btrfs.run(['btrfs', 'subvolume', 'snapshot', '-r', src, dest])


def _btrfs_take(name, lxc_state, tree, dest):
    """Snapshot the guest's subvolume, frozen while the snapshot is made.

    Returns (state the guest had, seconds frozen). A paused or stopped
    guest is snapshotted as it is.
    """
    if lxc_state in ('FROZEN', 'STOPPED'):
        _subvolume_snapshot(tree, dest)
        return lxc_state, 0.0
    if lxc_state != 'RUNNING':
        raise SnapshotFailed('the container is %s; try again once it is '
                             'running or stopped' % lxc_state)
    started = time.monotonic()
    try:
        container.set_frozen(name, True)
    except (OSError, ValueError, TimeoutError) as e:
        _thaw(name)
        if container.state(name)[0] != 'STOPPED':
            raise SnapshotFailed('could not freeze the guest: %s' % e)
        _subvolume_snapshot(tree, dest)
        return 'STOPPED', 0.0
    try:
        _subvolume_snapshot(tree, dest)
    finally:
        _thaw(name)
    return 'RUNNING', time.monotonic() - started


def _remove_snapshot_dir(snap):
    """Remove a snapshot dir, with the btrfs snapshot it may hold."""
    layer = os.path.join(snap, LAYER)
    if btrfs.is_subvolume(layer):
        btrfs.delete_subvolume(layer)
    _remove(snap)


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
    dest = os.path.join(snap, LAYER)
    if btrfs.is_subvolume(tree):
        lxc_state, frozen = _btrfs_take(name, lxc_state, tree, dest)
        recopied = 0
    elif lxc_state == 'RUNNING':
        lxc_state, recopied, frozen = _frozen_copy(name, tree, dest)
    elif lxc_state in ('FROZEN', 'STOPPED'):
        _copy(tree, dest)
        recopied, frozen = -1, 0.0
    elif lxc_state == 'UNDEFINED':
        raise SnapshotFailed('the container is gone')
    else:
        raise SnapshotFailed('the container is %s; try again once it is '
                             'running or stopped' % lxc_state)
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
def stream(name: str, fifo: str, compress: bool) -> dict:
    """Write the snapshot ``take`` made, as a tar (zstd) stream, to ``fifo``.

    Returns when every byte is written and both tools have exited; raises
    SnapshotFailed if either failed (the reader must then drop what it
    read). Its duration in seconds is returned.
    """
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
                argv, stdout=subprocess.PIPE if compress else out,
                stderr=tar_err)
            procs.append((tar, tar_err, 'tar'))
            if compress:
                _widen(tar.stdout.fileno())
                procs.append((subprocess.Popen(
                    COMPRESSOR, stdin=tar.stdout, stdout=out,
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


def _writer(name, fifo, compress, hold, outcome):
    """Run the privileged stream, then let the reader see the end."""
    try:
        outcome.update(stream(name, fifo, compress), done=True)
    except Exception as e:   # reported by the reader and by send()
        outcome['error'] = str(e) or type(e).__name__
    finally:
        os.close(hold)


def send(name, consumer, compress=True):
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
            target=_writer, args=(name, fifo, compress, fds[1], outcome),
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


def upload(context, instance, image_id, metadata, update_task_state,
           compress=True):
    """Snapshot ``instance``'s root into the Glance image ``image_id``.

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
            compress)
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
