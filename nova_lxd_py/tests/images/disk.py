"""Raw and qcow2 disk images of the busybox guest, built locally.

The guest is :mod:`nova_lxd_py.tests.guest_image`'s busybox rootfs, with a
fake kernel in /boot (which the container must not use). Nothing is
downloaded and nothing is mounted: file systems are made from a directory
by their own mkfs (``mkfs.ext4 -d``, ``mkfs.btrfs --rootdir``, ``mkfs.xfs
-p`` with a protofile), partition tables by ``sfdisk`` on a plain file, and
qcow2 by ``qemu-img``. Images are sparse files of 64 to 320 MiB (XFS will
not make a smaller file system) holding a few MiB.

Needs util-linux (sfdisk), e2fsprogs, btrfs-progs, xfsprogs, qemu-utils.
Each builder writes ``path`` and returns it; the hostile ones are what the
raw and qcow2 formats must refuse.
"""

import functools
import os
import shutil
import stat
import subprocess
import tempfile

from nova_lxd_py.tests import guest_image

MIB = 1 << 20
SECTOR = 512
KERNEL = 'boot/vmlinuz-6.1.0-guest'
GPT_TYPES = {'bios': '21686148-6449-6E6F-744E-656564454649',
             'esp': 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
             'linux': '0FC63DAF-8483-4772-8E79-3D69D8477DE4'}
MBR_TYPES = {'esp': 'ef', 'linux': '83'}
BOOT_START = 2048            # sectors: partition 1 at 1 MiB, 1 MiB long
ROOT_START = 4096            # sectors: partition 2 at 2 MiB
TAIL = 2048                  # sectors after the last one (backup GPT)


def _run(argv, stdin=None):
    proc = subprocess.run(argv, input=stdin, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError('%s failed: %s' % (' '.join(argv),
                                              proc.stderr.strip()))
    return proc.stdout


def _sparse_file(path, size):
    with open(path, 'wb') as f:
        f.truncate(size)
    return path


def guest_tree(path, marker, root=True, kernel=True):
    """The busybox guest as a directory; ``root=False``: no /sbin/init
    (and no os-release), a data partition rather than a root."""
    guest_image.write_tree(path, marker)
    if kernel:
        os.makedirs(os.path.join(path, 'boot'), exist_ok=True)
        with open(os.path.join(path, KERNEL), 'wb') as f:
            f.write(b'not a kernel: the container must not use it\n')
    if not root:
        os.unlink(os.path.join(path, 'sbin', 'init'))
    return path


# -- file systems ------------------------------------------------------------

def ext4(path, tree, size=48 * MIB):
    _sparse_file(path, size)
    _run(['mkfs.ext4', '-q', '-F', '-L', 'root', '-d', tree, path])
    return path


def btrfs(path, tree, size=128 * MIB):
    _sparse_file(path, size)
    _run(['mkfs.btrfs', '-q', '-f', '-L', 'root', '--rootdir', tree, path])
    return path


def _proto_lines(directory):
    """mkfs.xfs protofile lines for the tree under ``directory``."""
    lines = []
    for name in sorted(os.listdir(directory)):
        if any(c.isspace() for c in name):
            raise ValueError('a protofile cannot name %r' % name)
        path = os.path.join(directory, name)
        st = os.lstat(path)
        mode = '%s%s%03o %d %d' % (
            'u' if st.st_mode & stat.S_ISUID else '-',
            'g' if st.st_mode & stat.S_ISGID else '-',
            st.st_mode & 0o777, st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            lines.append('%s l%s %s' % (name, mode, os.readlink(path)))
        elif stat.S_ISDIR(st.st_mode):
            lines.append('%s d%s' % (name, mode))
            lines += _proto_lines(path) + ['$']
        elif stat.S_ISREG(st.st_mode):
            lines.append('%s -%s %s' % (name, mode, path))
    return lines


def xfs(path, tree, size=320 * MIB):
    """XFS from a protofile (no sticky bits: the format has none)."""
    proto = path + '.proto'
    with open(proto, 'w') as f:
        f.write('\n'.join(['/dev/null', '0 0', 'd--755 0 0']
                          + _proto_lines(tree) + ['$', '']))
    try:
        _sparse_file(path, size)
        _run(['mkfs.xfs', '-q', '-f', '-L', 'root', '-p', proto, path])
    finally:
        os.unlink(proto)
    return path


# -- disks -------------------------------------------------------------------

def _copy_into(source, path, offset):
    """Write the file ``source`` into ``path`` at ``offset``, sparsely."""
    with open(source, 'rb') as src, open(path, 'r+b') as dst:
        pos = offset
        while True:
            chunk = src.read(MIB)
            if not chunk:
                return
            if any(chunk):
                dst.seek(pos)
                dst.write(chunk)
            pos += len(chunk)


def partitioned(path, fs_image, label='gpt', boot='bios'):
    """A disk: partition 1 a small boot partition (``boot``: 'bios' or
    'esp', left empty), partition 2 the file system ``fs_image``."""
    types = GPT_TYPES if label == 'gpt' else MBR_TYPES
    root_sectors = os.path.getsize(fs_image) // SECTOR
    _sparse_file(path, (ROOT_START + root_sectors + TAIL) * SECTOR)
    script = ('label: %s\n'
              'start=%d, size=%d, type=%s\n'
              'start=%d, size=%d, type=%s\n'
              % ('gpt' if label == 'gpt' else 'dos',
                 BOOT_START, ROOT_START - BOOT_START, types[boot],
                 ROOT_START, root_sectors, types['linux']))
    _run(['sfdisk', '-q', path], stdin=script)
    _copy_into(fs_image, path, ROOT_START * SECTOR)
    return path


def _tree_bytes(tree):
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def write_gpt_disk_from_tree(path, tree):
    """A GPT disk (BIOS boot, then ext4) holding the directory ``tree``,
    sized for it (for the benchmarks, whose trees are large)."""
    size = max(48 * MIB, (_tree_bytes(tree) * 3 // 2 + 64 * MIB)
               // MIB * MIB)
    fs = ext4(path + '.ext4', tree, size)
    try:
        return partitioned(path, fs, 'gpt', 'bios')
    finally:
        os.unlink(fs)


def _once(builder):
    """Build an image once per Builder; later calls return its path."""
    @functools.wraps(builder)
    def wrapper(self, *args):
        key = (builder.__name__,) + args
        if key not in self._built:
            self._built[key] = builder(self, *args)
        return self._built[key]
    return wrapper


def qcow2(path, raw):
    _run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', raw,
          path])
    return path


class Builder:
    """Builds the images in ``directory``, from one guest tree."""

    def __init__(self, directory, marker='disk-guest'):
        self.dir = directory
        self.marker = marker
        self._tree = None
        self._built = {}

    def path(self, name):
        return os.path.join(self.dir, name)

    @property
    def tree(self):
        if self._tree is None:
            self._tree = guest_tree(self.path('tree'), self.marker)
        return self._tree

    def _fs(self, maker, name, tree=None):
        return maker(self.path(name), tree or self.tree)

    def _disk(self, name, fs_name, label, boot, tree=None):
        fs = self._fs(ext4, fs_name, tree)
        try:
            return partitioned(self.path(name), fs, label, boot)
        finally:
            os.unlink(fs)

    # The good ones.
    @_once
    def gpt_raw(self):
        return self._disk('gpt.raw', 'gpt-root.ext4', 'gpt', 'bios')

    @_once
    def mbr_raw(self):
        return self._disk('mbr.raw', 'mbr-root.ext4', 'mbr', 'esp')

    @_once
    def bare_ext4(self):
        return self._fs(ext4, 'bare.ext4')

    @_once
    def bare_btrfs(self):
        return self._fs(btrfs, 'bare.btrfs')

    @_once
    def btrfs_at(self):
        """A btrfs with the root in the directory @ (where Ubuntu keeps
        its root subvolume; mkfs.btrfs of Debian 12 makes no subvolumes)."""
        top = tempfile.mkdtemp(dir=self.dir)
        try:
            shutil.copytree(self.tree, os.path.join(top, '@'),
                            symlinks=True)
            return self._fs(btrfs, 'at.btrfs', top)
        finally:
            shutil.rmtree(top)

    @_once
    def bare_xfs(self):
        return self._fs(xfs, 'bare.xfs')

    @_once
    def gpt_qcow2(self):
        return qcow2(self.path('gpt.qcow2'), self.gpt_raw())

    @_once
    def mbr_qcow2(self):
        return qcow2(self.path('mbr.qcow2'), self.mbr_raw())

    # The hostile ones.
    @_once
    def qcow2_backing(self, backing='/etc/shadow', fmt='raw'):
        """A qcow2 whose clusters come from a host file."""
        path = self.path('backing-%s.qcow2' % os.path.basename(backing))
        _run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', backing,
              '-F', fmt, path, '64M'])
        return path

    @_once
    def qcow2_data_file(self):
        """A qcow2 whose data lives in another file, which holds a good raw
        disk: following it would even "work" (and could read any file)."""
        data_file = self.path('external-data.raw')
        path = self.path('data-file.qcow2')
        _run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
              'data_file=%s,data_file_raw=on,preallocation=metadata'
              % data_file, path, str(os.path.getsize(self.gpt_raw()))])
        # After create, which empties the data file.
        _copy_into(self.gpt_raw(), data_file, 0)
        return path

    @_once
    def truncated(self, source, fraction=0.5):
        """The first part of ``source``: a download cut short."""
        path = self.path('truncated-' + os.path.basename(source))
        with open(source, 'rb') as src, open(path, 'wb') as dst:
            dst.write(src.read(int(os.path.getsize(source) * fraction)))
        return path

    @_once
    def no_root_raw(self):
        """A GPT disk whose only Linux partition is a data file system."""
        tree = guest_tree(tempfile.mkdtemp(dir=self.dir), self.marker,
                          root=False)
        try:
            return self._disk('no-root.raw', 'no-root.ext4', 'gpt', 'bios',
                              tree)
        finally:
            shutil.rmtree(tree)

    @_once
    def corrupt_gpt_raw(self):
        """A GPT disk with one byte of its partition entries changed."""
        path = self.path('corrupt-gpt.raw')
        shutil.copyfile(self.gpt_raw(), path)
        with open(path, 'r+b') as f:
            f.seek(2 * SECTOR + 128 + 32)      # entry 2's first LBA
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))
        return path

    @_once
    def corrupt_fs_raw(self):
        """A GPT disk whose ext4 superblock fails its checksum."""
        path = self.path('corrupt-fs.raw')
        shutil.copyfile(self.gpt_raw(), path)
        with open(path, 'r+b') as f:
            f.seek(ROOT_START * SECTOR + 1024)  # s_inodes_count
            f.write(b'\x01\x00\x00\x00')
        return path
