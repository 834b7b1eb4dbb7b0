"""A consistent copy of a running guest's root, frozen as briefly as can be.

``copy_running``: the tree is copied with ``cp -a --reflink=auto`` while the
guest runs, then the guest is frozen through its freezer cgroup and the
copy is brought up to date (what changed since the copy began, found by
ctime, is copied again; what was removed is removed), and the guest is
thawed. ``snapshot_subvolume``: on btrfs the guest is frozen only while a
read-only subvolume snapshot is made. Either leaves a guest that stopped
meanwhile stopped. Runs in the privsep daemon (storage.snapshot.take).
"""

import os
import shutil
import stat
import subprocess
import time

from nova_lxd_py.storage.backends import btrfs
from nova_lxd_py.virt import container

# File times come from a coarse clock (up to a jiffy behind time.time()).
CTIME_MARGIN_NS = 1000000000
CLOCK_DRIFT_NS = 250000000
# Tries at freezing the guest, seconds each may take, and the pause
# (thawed) between them.
FREEZE_ATTEMPTS = 3
FREEZE_TIMEOUT = 2.0
FREEZE_RETRY_SECONDS = 0.5


class SnapshotFailed(Exception):
    """The snapshot could not be made; str() says why."""


def remove(path):
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        raise SnapshotFailed('could not remove %s' % path)


def copy(src, dest, check=True):
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
        remove(path)
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


def sync_dir(src, dst, since_ns, linked):
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
            changed += sync_dir(path, copy, since_ns, linked) + fresh
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


def _freeze(name):
    """Freeze the guest: True, or False if it stopped meanwhile.

    A task can hold a freeze back for a while (e.g. one waiting on a FUSE
    file system such as lxcfs's /proc): the guest is thawed again and the
    freeze retried, rather than left half frozen for long. A half-frozen
    cgroup is thawed before anything is raised.
    """
    attempt = 1
    while True:
        try:
            container.set_frozen(name, True, FREEZE_TIMEOUT)
            return True
        except (OSError, ValueError, TimeoutError) as e:
            _thaw(name)
            if container.state(name)[0] == 'STOPPED':
                return False
            if not isinstance(e, TimeoutError) or \
                    attempt == FREEZE_ATTEMPTS:
                raise SnapshotFailed('could not freeze the guest: %s'
                                     % e)
        attempt += 1
        time.sleep(FREEZE_RETRY_SECONDS)


def _thaw(name):
    try:
        container.set_frozen(name, False)
    except ValueError:   # it is not running (any more): nothing is frozen
        pass


def copy_running(name, src, dest):
    """Copy while running, freeze, bring the copy up to date, thaw.

    Returns (state the guest had, entries copied while frozen, seconds
    frozen). If the wall clock jumped during the running copy, file times
    cannot be compared with it: the whole tree is copied while frozen.
    """
    wall, mono = time.time_ns(), time.monotonic_ns()
    copy(src, dest, check=False)
    drift = abs((time.time_ns() - wall) - (time.monotonic_ns() - mono))
    started = time.monotonic()
    if not _freeze(name):
        remove(dest)
        copy(src, dest)
        return 'STOPPED', -1, 0.0
    try:
        if drift > CLOCK_DRIFT_NS:
            remove(dest)
            copy(src, dest)
            changed = -1
        else:
            changed = sync_dir(src, dest, wall - CTIME_MARGIN_NS, {})
    finally:
        _thaw(name)
        frozen = time.monotonic() - started
    return 'RUNNING', changed, frozen


def subvolume_snapshot(src, dest):
    """A read-only btrfs snapshot of ``src`` at ``dest``: O(1)."""
    btrfs.run(['btrfs', 'subvolume', 'snapshot', '-r', src, dest])


def snapshot_subvolume(name, lxc_state, src, dest):
    """Snapshot the guest's subvolume ``src``, frozen meanwhile if it runs.

    Returns (state the guest had, seconds frozen).
    """
    if lxc_state == 'RUNNING':
        started = time.monotonic()
        if _freeze(name):
            try:
                subvolume_snapshot(src, dest)
            finally:
                _thaw(name)
            return 'RUNNING', time.monotonic() - started
        lxc_state = 'STOPPED'
    subvolume_snapshot(src, dest)
    return lxc_state, 0.0
