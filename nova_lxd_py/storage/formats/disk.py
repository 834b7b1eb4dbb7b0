"""Raw disk images: the root partition's tree becomes the guest's rootfs.

A raw image is a partitioned disk (MBR, or GPT behind its protective MBR)
or a file system written to the whole disk. The partition table and the
file system signatures are read in Python (:mod:`partitions`), so a table
pointing outside the image is refused before the kernel sees any of it.

Every partition with an ext2/3/4, XFS or btrfs file system is then mounted
read-only, without replaying its journal (an image's unclean journal is
hostile input too), with nodev,nosuid,noexec, through a loop device limited
to that partition. The mounts live in a private mount namespace held by one
``unshare`` process: when it and the ``tar`` reading the tree exit (or are
killed with us) the namespace goes, taking the mounts and, through the loop
devices' autoclear flag, the loop devices with it. Nothing is ever mounted
in the host's namespace.

The root partition is the first one holding /sbin/init or /etc/os-release
(a symlink counts, dangling or not). Its tree is read by GNU tar entered
into that namespace (``nsenter``) and streamed through the member checker
into the guest's user namespace (:func:`stream.extract`), as any tarball.
Boot partitions, kernels and the other partitions are reported: a container
uses none of them.
"""

import os
import stat
import subprocess
import time

from oslo_log import log as logging

from nova_lxd_py.storage import rootfs
from nova_lxd_py.storage.formats import partitions
from nova_lxd_py.storage.formats import stream
from nova_lxd_py.storage.formats import tar

LOG = logging.getLogger(__name__)

NAME = 'raw'
DISK_FORMATS = ('raw',)
CONTAINER_FORMATS = ('bare',)

QCOW2_MAGIC = b'QFI\xfb'          # the qcow2 module's; tried before this one
SQUASHFS_MAGIC = b'hsqs'

# Read-only and no journal replay: the kernel writes nothing to the image.
MOUNT_OPTIONS = {
    'ext2': ('ext4', 'ro,noload'),
    'ext3': ('ext4', 'ro,noload'),
    'ext4': ('ext4', 'ro,noload'),
    'xfs': ('xfs', 'ro,norecovery'),
    'btrfs': ('btrfs', 'ro,rescue=nologreplay'),
}
SAFE_OPTIONS = 'nodev,nosuid,noexec'
ROOT_MARKERS = ('/sbin/init', '/etc/os-release')
# Where distributions put the root subvolume of a btrfs (Ubuntu, Fedora).
BTRFS_ROOTS = ('@', 'root')
OS_RELEASE_MAX = 16384
LOOP_RELEASE_SECONDS = 10
HOLDER_EXIT_SECONDS = 30

# Runs as root in a fresh mount namespace: mounts each candidate
# ("KEY TYPE OPTIONS" triples after the directory of the mount points and
# the image; KEY is the mount point's name: a partition number or 'disk'),
# reports each mount, then holds the namespace until its stdin closes.
# Every value arrives as a positional argument, none is interpolated.
_HOLDER = r'''
mnt=$1 image=$2
shift 2
while [ $# -ge 3 ]; do
    if err=$(mount -t "$2" -o "$3" -- "$image" "$mnt/$1" 2>&1); then
        echo "mounted $1"
    else
        printf 'failed %s %s\n' "$1" "$(printf %s "$err" | tr '\n' ' ')"
    fi
    shift 3
done
echo ready
read -r _ || true
'''


def detect(head, path):
    """An MBR (also GPT's protective one) or a bare ext/XFS/btrfs.

    Never a tarball, a compressed file, a squashfs or a qcow2, whatever
    else their first bytes hold by chance.
    """
    if (head[:4] in (QCOW2_MAGIC, SQUASHFS_MAGIC) or tar.is_tar(head)
            or stream.compression(head)[0] is not None):
        return False
    return (partitions.has_mbr(head)
            or partitions.bare_filesystem(head, path) is not None)


def unpack(archive, target, workdir):
    return unpack_disk(archive, target, workdir)


def unpack_disk(path, target, workdir):
    """Unpack the root partition of the raw disk image at ``path``.

    Also used by the qcow2 format on the raw image it converted to.
    """
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        scheme, parts = partitions.table(f, size)
        found = [(part, None if part.kind == 'extended' else
                  partitions.filesystem(f, part.start, part.size))
                 for part in parts]
    notes = {part.number: _note(part, fs) for part, fs in found}
    candidates = [(part, fs) for part, fs in found
                  if fs is not None and notes[part.number] is None]
    if not candidates:
        raise _no_root(found, notes)
    with _Mounts(path, candidates, stream.scratch(workdir, 'mnt')) as mnts:
        root, sub, kernels = _find_root(mnts, candidates, notes)
        if root is None:
            raise _no_root(found, notes)
        part, fs = root
        top = os.path.join(mnts.dirs[part.number], sub)
        os_name = _os_name(mnts.inside(top))
        warnings = _warnings(found, part, kernels)
        for warning in warnings:
            LOG.warning('%(label)s: %(warning)s',
                        {'label': target.label, 'warning': warning})
        checker = stream.extract(target, producer=mnts.nsenter(
            ['tar', '-C', top, '--numeric-owner', '-cf', '-', '.']))
    facts = {'table': scheme, 'partition': part.number,
             'filesystem': fs.type, 'warnings': warnings,
             'members': checker.members, 'tree_bytes': checker.bytes,
             'disk_bytes': size}
    if sub:
        facts['subvolume'] = sub
    if os_name:
        facts['os'] = os_name
    return facts


def _note(part, fs):
    """Why this partition is no candidate for the root; None if it is."""
    if fs is None:
        return 'not read (logical partitions are not supported)'
    if not fs.type:
        return 'no known file system'
    if not fs.mountable:
        return '%s, not supported' % fs.type
    if fs.size > part.size:
        return ('%s of %d MiB in %d MiB: truncated or corrupt'
                % (fs.type, fs.size >> 20, part.size >> 20))
    return None


def _no_root(found, notes):
    listed = '; '.join('%s: %s' % (part.describe(), notes[part.number])
                       for part, _ in found) or 'no partitions'
    return stream.UnsafeImage(
        'no partition holds a root file system (/sbin/init or '
        '/etc/os-release); found: %s' % listed)


def _find_root(mnts, candidates, notes):
    """((part, fs), subdirectory, kernels) of the first root found.

    ``kernels`` maps partition numbers to the kernel files seen at the top
    or in /boot of their tree (of their root subvolume if they have one);
    ``notes`` gets what was wrong with the others.
    """
    kernels = {}
    root = sub = None
    for part, fs in candidates:
        error = mnts.errors.get(part.number, 'not mounted')
        if error:
            notes[part.number] = '%s, mount failed: %s' % (fs.type, error)
            continue
        top = mnts.inside(mnts.dirs[part.number])
        where = _root_subdir(top, fs.type)
        kernels[part.number] = _kernels(os.path.join(top, where or ''))
        if where is None:
            notes[part.number] = '%s, no %s' % (fs.type,
                                                ' or '.join(ROOT_MARKERS))
        elif root is None:
            root, sub = (part, fs), where
    return root, sub, kernels


def _warnings(found, root, kernels):
    """What the container will not use, for the operator."""
    warnings = []
    names = kernels.get(root.number)
    if names:
        warnings.append('the kernel in its root file system (%s) is not '
                        "used: a container runs on the host's kernel"
                        % ', '.join(names))
    for part, fs in found:
        if part is root:
            continue
        if part.kind in partitions.BOOT_TYPES:
            why = 'a container boots with no firmware or bootloader'
        elif part.kind == 'extended':
            why = 'the logical partitions in it are not read'
        else:
            why = 'only the root file system is unpacked; its /etc/fstab ' \
                  'is not applied'
        if kernels.get(part.number):
            why += '; it holds a kernel (%s)' % ', '.join(
                kernels[part.number])
        kind = fs.type if fs is not None and fs.type else 'no file system'
        warnings.append('%s, %s, is not used: %s'
                        % (part.describe(), kind, why))
    return warnings


# -- the tree inside a mount, seen from this namespace ------------------------

def _present(root, path):
    """``path`` exists in the tree, as a file or as a (dangling) symlink."""
    parent = rootfs.resolve_in_root(root, os.path.dirname(path))
    return parent is not None and os.path.lexists(
        os.path.join(parent, os.path.basename(path)))


def _root_subdir(top, fstype):
    """'' if the tree at ``top`` is a root, a btrfs subvolume's name if
    that is; None if neither."""
    subdirs = ('',) + (BTRFS_ROOTS if fstype == 'btrfs' else ())
    for sub in subdirs:
        path = os.path.join(top, sub)
        if sub and (os.path.islink(path) or not os.path.isdir(path)):
            continue
        if any(_present(path, marker) for marker in ROOT_MARKERS):
            return sub
    return None


def _kernels(top):
    """Kernel images at the top of the tree or in its /boot."""
    names = set()
    for where in ('/', '/boot'):
        path = rootfs.resolve_in_root(top, where)
        try:
            entries = os.listdir(path) if path else []
        except OSError:
            continue
        names.update(n for n in entries
                     if n.startswith(('vmlinuz', 'vmlinux')))
    return sorted(names)


def _os_name(top):
    """PRETTY_NAME from the tree's os-release, or None."""
    for where in ('/etc/os-release', '/usr/lib/os-release'):
        path = rootfs.resolve_in_root(top, where)
        if path is None:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_NOCTTY)
        except OSError:
            continue
        with os.fdopen(fd, 'rb') as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            text = f.read(OS_RELEASE_MAX).decode('utf-8', 'replace')
        for line in text.splitlines():
            key, _, value = line.partition('=')
            if key.strip() == 'PRETTY_NAME':
                return value.strip().strip('"\'')[:200] or None
    return None


# -- mounts in a private namespace -------------------------------------------

class _Mounts:
    """The candidates mounted in a mount namespace of their own.

    A holder process (``unshare`` running :data:`_HOLDER`) mounts them and
    waits on its stdin; this process looks at the trees through
    ``/proc/<holder>/root`` and runs tar in the namespace with ``nsenter``.
    Leaving the ``with`` block (or dying) closes the holder's stdin; the
    namespace, its mounts and loop devices go when the last process in it
    exits.
    """

    def __init__(self, image, candidates, mntdir):
        self.image = image
        self.candidates = candidates
        # No symlink on the way: /proc/<pid>/root/... must stay in the
        # holder's namespace.
        self.mntdir = os.path.realpath(mntdir)
        self.dirs = {part.number: os.path.join(self.mntdir, _key(part))
                     for part, _ in candidates}
        self.errors = {}
        self.proc = None

    def _argv(self):
        argv = ['unshare', '--mount', '--propagation', 'private', '--',
                'sh', '-c', _HOLDER, 'sh', self.mntdir, self.image]
        for part, fs in self.candidates:
            fstype, options = MOUNT_OPTIONS[fs.type]
            os.mkdir(self.dirs[part.number], 0o700)
            argv += [_key(part), fstype,
                     '%s,%s,loop,offset=%d,sizelimit=%d' % (
                         options, SAFE_OPTIONS, part.start, part.size)]
        return argv

    def __enter__(self):
        keys = {_key(part): part.number for part, _ in self.candidates}
        self.proc = subprocess.Popen(self._argv(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        try:
            self._wait_ready(keys)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self, keys):
        other = []
        for raw in self.proc.stdout:
            word, _, rest = raw.decode('utf-8', 'replace').strip().partition(
                ' ')
            if word == 'ready':
                return
            key, _, error = rest.partition(' ')
            if word == 'mounted' and key in keys:
                self.errors[keys[key]] = None
            elif word == 'failed' and key in keys:
                self.errors[keys[key]] = ' '.join(error.split()) or 'failed'
            else:
                other.append(raw.decode('utf-8', 'replace').strip())
        raise stream.UnsafeImage('mounting its file systems failed: %s' % (
            other[-1] if other else 'exit status %s' % self.proc.wait()))

    def __exit__(self, *exc):
        self.close()

    def inside(self, path):
        """``path`` of the namespace, reached from this one."""
        return '/proc/%d/root%s' % (self.proc.pid, path)

    def nsenter(self, argv):
        """``argv`` run in the namespace (it holds the namespace too)."""
        return ['nsenter', '--mount=/proc/%d/ns/mnt' % self.proc.pid,
                '--'] + list(argv)

    def close(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=HOLDER_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        _wait_released(self.image)


def _key(part):
    return 'disk' if part.number is None else str(part.number)


def _wait_released(image):
    """Wait for the kernel to free the loop devices of a gone namespace.

    The namespace's mounts go when its last process exits, and each loop
    device with its last mount (autoclear); that is quick but not
    synchronous with the exit. A device still there after the wait is
    logged: the caller is about to remove the file it holds open.
    """
    deadline = time.monotonic() + LOOP_RELEASE_SECONDS
    while True:
        held = subprocess.run(['losetup', '--associated', image],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout.strip()
        if not held:
            return
        if time.monotonic() > deadline:
            LOG.warning('loop devices still hold %(image)s: %(held)s',
                        {'image': image, 'held': held.decode(
                            errors='replace')})
            return
        time.sleep(0.05)
