"""btrfs: each instance's root is a snapshot of the cached image.

Needs ``[lxc] container_path`` and ``[lxc] image_cache_path`` on one btrfs
file system; the backend checks it when it is made (at driver start) and
raises HostCannotRunContainers with what to change otherwise.

A snapshot costs the same whatever the image's size (milliseconds, 16 KiB
of metadata), where ``cp -a --reflink=always`` into a new subvolume walks
every file (about 1.5-2.5 s and 10 MiB of metadata for a 230 MB tree of
12,500 files, measured with quotas on). A snapshot's source must be a
subvolume, and the image cache unpacks into a plain directory (some
formats rename their tree into place), so the first instance of a cache
entry turns it into one: ``<entry>/rootfs-btrfs``, a reflink copy of
``<entry>/rootfs`` (data blocks shared, done once per image, under a lock).
The image cache needs no change: entries made before the switch to btrfs
work, and removing an entry (``shutil.rmtree``) removes the subvolume too,
as the kernel lets root rmdir an empty subvolume since Linux 4.18.

With a root disk size (the flavor's ``root_gb``) the instance's subvolume
gets a btrfs qgroup limit on what it references: the image's blocks count,
as on a real disk of that size. A guest that writes past it gets EDQUOT
("Disk quota exceeded"). Quotas are enabled on the file system the first
time they are needed (a rescan of what it holds, once). Snapshots need no
mount, so there is nothing to do before a start.
"""

import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
import time
import uuid

from oslo_concurrency import lockutils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import excutils

from nova_lxd_py import exception
from nova_lxd_py import privsep
from nova_lxd_py.storage import images

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

ROOT = 'rootfs'
IMAGE_SUBVOLUME = 'rootfs-btrfs'
BTRFS_SUPER_MAGIC = 0x9123683E
# Every subvolume's root directory has this inode number.
SUBVOLUME_ROOT_INO = 256
# _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args): 1024 bytes, fsid at 16.
BTRFS_IOC_FS_INFO = 0x8400941F
FS_INFO_SIZE = 1024
# A deleted subvolume's qgroup can only be destroyed once the cleaner
# thread has dropped its blocks (about 2 s for 500 MB).
# <container dir>/rootfs, rescue/rootfs, snapshot/tree
SUBVOLUME_SEARCH_DEPTH = 2
QGROUP_WAIT_SECONDS = 60
QGROUP_POLL_SECONDS = 0.05

_libc = ctypes.CDLL(None, use_errno=True)


# -- which file system a path is on (no privileges needed) -----------------

def fs_magic(path):
    """statfs(2) ``f_type`` of the file system holding ``path``.

    Python's statvfs has no f_type. It is the first field of struct statfs,
    a long on the 64-bit Linux ABIs (a 512-byte buffer covers the rest).
    """
    buf = ctypes.create_string_buffer(512)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def fs_uuid(path):
    """The btrfs file system's UUID (BTRFS_IOC_FS_INFO).

    Not statvfs' f_fsid: btrfs mixes the subvolume into it, and two
    subvolumes of one file system can share blocks.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(FS_INFO_SIZE)
        fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, buf)
    finally:
        os.close(fd)
    return str(uuid.UUID(bytes=bytes(buf[16:32])))


def existing_ancestor(path):
    """``path`` or its nearest ancestor that exists (where it would be)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def placement_problem(places):
    """Why ``places`` ({option: (magic, uuid)}) cannot hold this backend.

    '' when every one is on the same btrfs file system.
    """
    for option, (magic, _) in sorted(places.items()):
        if magic != BTRFS_SUPER_MAGIC:
            return ('[lxc] %s is not on a btrfs file system (statfs magic '
                    '%#x)' % (option, magic))
    uuids = {fsid for _, fsid in places.values()}
    if len(uuids) > 1:
        return ('[lxc] %s are on different btrfs file systems (%s): a '
                'snapshot cannot cross file systems'
                % (' and '.join(sorted(places)), ', '.join(sorted(uuids))))
    return ''


def qgroup_limit_arg(size_gb):
    """``btrfs qgroup limit`` size for a flavor's root_gb (binary units)."""
    if size_gb <= 0:
        raise ValueError('a root disk size must be positive: %r' % size_gb)
    return '%dG' % size_gb


# -- privileged work, confined to the driver's two directories -------------

def _inside(path, *options):
    """realpath of ``path`` if strictly inside one of the [lxc] dirs."""
    real = os.path.realpath(path)
    for option in options:
        root = os.path.realpath(getattr(CONF.lxc, option))
        if real.startswith(root + os.sep):
            return real
    raise ValueError('%s is outside [lxc] %s' % (path, ' / '.join(options)))


def run(argv):
    """Run a btrfs tool; OSError with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True,
                          env=dict(os.environ, LC_ALL='C'))
    if proc.returncode:
        raise OSError('%s failed: %s' % (' '.join(argv[:3]),
                                         proc.stderr.strip()))
    return proc.stdout


def is_subvolume(path):
    """True if ``path`` is the top of a btrfs subvolume."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == SUBVOLUME_ROOT_INO and \
        os.lstat(os.path.dirname(path)).st_dev != st.st_dev


def _subvolume_id(path):
    return int(run(['btrfs', 'inspect-internal', 'rootid', path]))


def _quota_enabled(path):
    return os.path.isdir('/sys/fs/btrfs/%s/qgroups' % fs_uuid(path))


@privsep.sys_admin_pctxt.entrypoint
def place(path: str) -> list:
    """[statfs magic, btrfs UUID or ''] of [lxc] container_path or
    image_cache_path (or the ancestor it would be made in)."""
    if os.path.realpath(path) not in (
            os.path.realpath(CONF.lxc.container_path),
            os.path.realpath(CONF.lxc.image_cache_path)):
        raise ValueError('%s is not one of the [lxc] directories' % path)
    where = existing_ancestor(path)
    magic = fs_magic(where)
    return [magic, fs_uuid(where) if magic == BTRFS_SUPER_MAGIC else '']


@privsep.sys_admin_pctxt.entrypoint
def image_subvolume(tree: str, dest: str) -> bool:
    """Make ``dest`` a subvolume holding a reflink copy of ``tree``.

    Both are in the image cache. False if ``dest`` was there already. The
    copy is made in ``dest``.tmp and renamed, so ``dest`` is whole or
    absent; the caller holds the entry's lock.
    """
    tree = _inside(tree, 'image_cache_path')
    dest = _inside(dest, 'image_cache_path')
    if is_subvolume(dest):
        return False
    _subvolume_of_tree(tree, dest)
    return True


@privsep.sys_admin_pctxt.entrypoint
def tree_to_subvolume(tree: str) -> None:
    """Turn an instance's root tree that arrived by a move (a plain
    directory) into a subvolume of the same name, data blocks shared."""
    tree = _inside(tree, 'container_path')
    if is_subvolume(tree):
        return
    _subvolume_of_tree(tree, tree + '.subvolume')
    shutil.rmtree(tree)
    os.rename(tree + '.subvolume', tree)


def _subvolume_of_tree(tree, dest):
    tmp = dest + '.tmp'
    delete_subvolume(tmp)   # a crash's leftover
    run(['btrfs', 'subvolume', 'create', tmp])
    try:
        # -T: tree's contents into tmp, and tree's owner and mode on it.
        run(['cp', '-a', '--reflink=always', '-T', tree, tmp])
        os.rename(tmp, dest)
    except Exception:
        with excutils.save_and_reraise_exception():
            delete_subvolume(tmp)


@privsep.sys_admin_pctxt.entrypoint
def snapshot(source: str, dest: str) -> None:
    """A writable snapshot of the image subvolume at ``dest`` (absent)."""
    source = _inside(source, 'image_cache_path')
    dest = _inside(dest, 'container_path')
    if not is_subvolume(source):
        raise ValueError('%s is not a btrfs subvolume' % source)
    os.makedirs(os.path.dirname(dest), mode=0o711, exist_ok=True)
    run(['btrfs', 'subvolume', 'snapshot', source, dest])


@privsep.sys_admin_pctxt.entrypoint
def enable_quota() -> bool:
    """Enable qgroups on the file system of [lxc] container_path.

    True if they were off. Waits for the rescan that counts what the file
    system holds already, so the next snapshot is accounted right.
    """
    path = CONF.lxc.container_path
    if _quota_enabled(path):
        return False
    run(['btrfs', 'quota', 'enable', path])
    run(['btrfs', 'quota', 'rescan', '-W', path])
    return True


@privsep.sys_admin_pctxt.entrypoint
def limit(subvolume: str, size_gb: int) -> None:
    """Cap what the subvolume references at ``size_gb`` GiB."""
    subvolume = _inside(subvolume, 'container_path')
    if not is_subvolume(subvolume):
        raise ValueError('%s is not a btrfs subvolume' % subvolume)
    run(['btrfs', 'qgroup', 'limit', qgroup_limit_arg(size_gb), subvolume])


@privsep.sys_admin_pctxt.entrypoint
def delete(subvolume: str) -> None:
    """Delete an instance's (or an image's) subvolume and its qgroups.

    No error if it is gone. Subvolumes the guest made inside its root are
    deleted first (a subvolume with children cannot be).
    """
    delete_subvolume(_inside(subvolume, 'container_path', 'image_cache_path'))


@privsep.sys_admin_pctxt.entrypoint
def delete_in(container_dir: str) -> None:
    """Delete the subvolumes at most two levels down a container's dir.

    Its root, a rescue root (``rescue/rootfs``) and a snapshot being
    taken (``snapshot/tree``): whatever a delete of the instance finds
    while another operation is half way. Not walked further: subvolumes
    below those go with them.
    """
    top = _inside(container_dir, 'container_path')
    for path in _subvolumes_near(top, SUBVOLUME_SEARCH_DEPTH):
        delete_subvolume(path)


def _subvolumes_near(top, depth):
    """Subvolume tops below ``top`` down to ``depth`` levels, not
    entering any (so none of those found nests another)."""
    found, level = [], [top]
    for _ in range(depth):
        below = []
        for parent in level:
            try:
                entries = list(os.scandir(parent))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if is_subvolume(entry.path):
                    found.append(entry.path)
                else:
                    below.append(entry.path)
        level = below
    return found


def delete_subvolume(path):
    """Delete a subvolume, those made in it and their qgroups (in the
    privsep daemon: callers check the path); no error if it is gone."""
    if not os.path.lexists(path):
        return
    if not is_subvolume(path):
        # An interrupted create's plain directory.
        shutil.rmtree(path)
        return
    ids = [_subvolume_id(path)]
    try:
        run(['btrfs', 'subvolume', 'delete', path])
    except OSError as e:
        if 'Directory not empty' not in str(e):
            raise
        nested = _nested_subvolumes(path)
        ids += [_subvolume_id(p) for p in nested]
        # The guest may have made them read-only, its root too: a child
        # cannot be unlinked from a read-only parent.
        for sub in [path] + nested:
            run(['btrfs', 'property', 'set', '-ts', sub, 'ro', 'false'])
        run(['btrfs', 'subvolume', 'delete'] + nested + [path])
    _destroy_qgroups(os.path.dirname(path), ids)


def _nested_subvolumes(top):
    """Subvolumes below ``top``, deepest first (symlinks not followed).

    Walks the tree, so only when a delete failed for them: a guest can
    create subvolumes (an ioctl needing no capability) unless the
    container's seccomp policy forbids it.
    """
    found = []
    for dirpath, dirnames, _ in os.walk(top):
        dev = os.lstat(dirpath).st_dev
        for name in dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino == SUBVOLUME_ROOT_INO and st.st_dev != dev:
                found.append(os.path.join(dirpath, name))
    return sorted(found, key=lambda p: p.count(os.sep), reverse=True)


def _destroy_qgroups(fs_path, ids):
    """Destroy the level-0 qgroups of deleted subvolumes.

    Recent kernels drop them with the subvolume's blocks; older ones leave
    them "stale". Either way btrfs refuses (EBUSY) until the cleaner has
    run, which a file system sync wakes.
    """
    if not _quota_enabled(fs_path):
        return
    run(['btrfs', 'filesystem', 'sync', fs_path])
    deadline = time.monotonic() + QGROUP_WAIT_SECONDS
    for subvolume_id in ids:
        while True:
            proc = subprocess.run(
                ['btrfs', 'qgroup', 'destroy', '0/%d' % subvolume_id,
                 fs_path], capture_output=True, text=True,
                env=dict(os.environ, LC_ALL='C'))
            busy = os.strerror(errno.EBUSY) in proc.stderr
            if proc.returncode == 0 or not busy:
                break
            if time.monotonic() > deadline:
                LOG.warning('btrfs qgroup 0/%d is still in use %d s after '
                            'its subvolume was deleted; "btrfs qgroup '
                            'clear-stale %s" removes it later',
                            subvolume_id, QGROUP_WAIT_SECONDS, fs_path)
                return
            time.sleep(QGROUP_POLL_SECONDS)


# -- the backend -----------------------------------------------------------

class BtrfsBackend:
    name = 'btrfs'
    # A guest could create subvolumes of its own, which its qgroup limit
    # does not count: the driver adds these to the container's seccomp
    # policy (btrfs ioctls SUBVOL_CREATE, SNAP_CREATE_V2, SUBVOL_CREATE_V2,
    # SNAP_CREATE; masked, since the high bits are ignored by the kernel).
    seccomp_rules = tuple(
        'ioctl errno 1 [1,0x%08x,SCMP_CMP_MASKED_EQ,0xffffffff]' % number
        for number in (0x5000940e, 0x50009417, 0x50009418, 0x50009401))

    def __init__(self):
        self._quota_checked = False
        self.check_host()

    @staticmethod
    def check_host():
        """HostCannotRunContainers unless this host can use the backend."""
        if not shutil.which('btrfs'):
            raise exception.HostCannotRunContainers(
                reason='[lxc] root_disk_backend = btrfs needs the btrfs '
                       'command (Debian package btrfs-progs)')
        places = {option: tuple(place(getattr(CONF.lxc, option)))
                  for option in ('container_path', 'image_cache_path')}
        problem = placement_problem(places)
        if problem:
            raise exception.HostCannotRunContainers(
                reason='[lxc] root_disk_backend = btrfs needs [lxc] '
                       'container_path (%s) and image_cache_path (%s) on '
                       'one btrfs file system, but %s. Mount one there '
                       '(e.g. at [DEFAULT] instances_path) or choose '
                       'another backend.' % (
                           CONF.lxc.container_path,
                           CONF.lxc.image_cache_path, problem))

    def _image_subvolume(self, image_rootfs):
        """The cache entry's subvolume, made by its first instance."""
        entry = os.path.dirname(image_rootfs)
        dest = os.path.join(entry, IMAGE_SUBVOLUME)
        if is_subvolume(dest):
            return dest
        cache = CONF.lxc.image_cache_path
        with lockutils.lock('btrfs-' + os.path.basename(entry),
                            external=True,
                            lock_path=os.path.join(cache, images.LOCKS)):
            started = time.monotonic()
            if image_subvolume(image_rootfs, dest):
                LOG.info('Image cache entry %(entry)s made a btrfs '
                         'subvolume in %(sec).2f s',
                         {'entry': os.path.basename(entry),
                          'sec': time.monotonic() - started})
        return dest

    def _quota(self):
        if not self._quota_checked:
            if enable_quota():
                LOG.warning('btrfs quotas enabled on the file system of %s '
                            'to hold root disks to the flavor\'s size',
                            CONF.lxc.container_path)
            self._quota_checked = True

    def create(self, container_dir, image_rootfs, uid, gid, size_gb=0):
        # The snapshot keeps the image's owners, already the guest's ids.
        root = os.path.join(container_dir, ROOT)
        snapshot(self._image_subvolume(image_rootfs), root)
        try:
            if size_gb:
                self._quota()
                limit(root, size_gb)
        except Exception:
            with excutils.save_and_reraise_exception():
                delete(root)
        return root

    def activate(self, container_dir):
        """Nothing: a subvolume needs no mount of its own."""

    deactivate = activate

    def moved_entries(self, container_dir):
        return [ROOT]

    def adopt(self, container_dir, image_rootfs, uid, gid, size_gb=0):
        """A root tree moved here becomes a subvolume again, with the
        flavor's limit (a resize's new size)."""
        root = os.path.join(container_dir, ROOT)
        tree_to_subvolume(root)
        if size_gb:
            self._quota()
            limit(root, size_gb)
        return root

    def writable_root(self, container_dir):
        return os.path.join(container_dir, ROOT)

    def destroy(self, container_dir):
        delete_in(container_dir)
