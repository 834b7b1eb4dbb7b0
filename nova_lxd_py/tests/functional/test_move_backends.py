"""A cold move's disk work on every root-disk backend, on real files.

What ``ColdMigrations`` does to an instance's disks on a resize to the
same host, step by step and without a container: the backend makes the
root as a spawn does (plus an ephemeral disk), files are written into the
writable root, the source deactivates the root, unmounts the ephemeral
disk and keeps the directory aside as ``.resize/<uuid>``;
``transfer.copy_local`` copies the moved entries into a new instance
directory, where ``adopt`` grows the root (1 -> 2 GB) and the ephemeral
disk (1 -> 2 GB). Then the data is there with its owners; the sizes are
the new ones (ext4's statvfs for overlay and dir, the qgroup limit for
btrfs) and hold more than the old ones could; the kept copy is unchanged
until it is removed; removing either copy leaves no mount, loop device,
subvolume or qgroup behind.

A move must not lose what a guest's files carry: owners in the guest's id
range, modes, hard links, symlinks, xattrs, file capabilities and an
overlay's whiteouts. A smaller size is refused for ext4 disks (which
never shrink) and applied as a lower qgroup limit on btrfs, the data kept.

Each test makes its own directories (a loop-mounted btrfs for btrfs) and
removes them, pass or fail; the 16 take 4-6 s on a 2-core host.
"""

import errno
import hashlib
import os
import stat
import struct
import subprocess
import tempfile

import ddt
import fixtures
from oslo_config import cfg
from oslo_config import fixture as config_fixture
from oslo_utils import uuidutils
from oslotest import base

from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import backends
from nova_lxd_py.storage.backends import btrfs
from nova_lxd_py.storage.backends import disk
from nova_lxd_py.storage import ephemeral
from nova_lxd_py.storage import transfer
from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.tests.functional import test_root_disk_btrfs
from nova_lxd_py.virt import container
from nova_lxd_py.virt import host
from nova_lxd_py.virt import migration

CONF = cfg.CONF
GIB = 1 << 30
EPHEMERAL = 'ephemeral0'
GUEST_USER = 1000   # a user of the guest, not its root
DATA_SIZE = 4 << 20
BACKENDS = ('overlay', 'dir', 'btrfs')
CAP_NET_RAW = 13
# A file capability (struct vfs_cap_data, revision 2, effective), as on
# a guest's ping, and a user xattr.
XATTRS = {'security.capability': struct.pack(
    '<5I', 0x02000001, 1 << CAP_NET_RAW, 0, 0, 0),
    'user.nova-lxd-py-test': b'moved'}
# More than the 1 GiB a smaller flavor would allow.
BIG_SIZE = 1200 << 20


def loop_devices(text):
    """`losetup -a` lines naming ``text`` (a path or an instance uuid)."""
    out = subprocess.run(['losetup', '-a'], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if text in line]


def mounts_naming(text):
    with open('/proc/self/mountinfo') as f:
        return [line.strip() for line in f if text in line]


def sha512(path):
    with open(path, 'rb') as f:
        return hashlib.sha512(f.read()).hexdigest()


def ext4_size(point):
    """Bytes the mounted file system holds in all (its blocks)."""
    st = os.statvfs(point)
    return st.f_blocks * st.f_frsize


def e2fsck_clean(image):
    return subprocess.run(['e2fsck', '-f', '-n', image],
                          capture_output=True).returncode == 0


@ddt.ddt
class MoveBackendTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('the disks are real: mounts and loop devices')
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        ids = host.idmap()
        self.uid, self.gid = ids.uid_start, ids.gid_start
        self.name = uuidutils.generate_uuid()
        self.data = os.urandom(DATA_SIZE)

    def use(self, name):
        """Directories for backend ``name`` and the backend itself."""
        if name == 'btrfs':
            reason = test_root_disk_btrfs.btrfs_unavailable()
            if reason:
                self.skipTest(reason)
            self.btrfs = self.useFixture(test_root_disk_btrfs.LoopBtrfs())
            top = self.btrfs.path
        else:
            # Not oslotest's private per-test temp dir: see HostDirs.
            with fixtures.MonkeyPatch('tempfile.tempdir', None):
                top = self.useFixture(lxc_fixtures.HostDirs()).path
        self.conf.config(group='lxc', root_disk_backend=name,
                         container_path=os.path.join(top, 'containers'),
                         image_cache_path=os.path.join(top, '_base_lxc'))
        self.image = self._image_tree()
        self.backend = backends.get(name)
        self.cdir = container.container_dir(self.name)
        self.kept = migration.kept_dir(self.name)

    def _image_tree(self):
        """A small cached image: its root already in the guest's ids."""
        entry = tempfile.mkdtemp(prefix='image.', dir=self._cache())
        os.chmod(entry, 0o755)
        rootfs = os.path.join(entry, 'rootfs')
        for sub in ('', 'etc', 'root', 'bin'):
            os.mkdir(os.path.join(rootfs, sub), 0o755)
        with open(os.path.join(rootfs, 'etc', 'image-marker'), 'w') as f:
            f.write('moved-image\n')
        for dirpath, dirnames, filenames in os.walk(rootfs):
            for n in [''] + dirnames + filenames:
                os.chown(os.path.join(dirpath, n), self.uid, self.gid)
        return rootfs

    @staticmethod
    def _cache():
        os.makedirs(CONF.lxc.image_cache_path, mode=0o755, exist_ok=True)
        return CONF.lxc.image_cache_path

    # -- the steps of a move -------------------------------------------

    def spawn(self, root_gb, ephemeral_gb):
        """The instance's disks as Guests.define makes them, with files."""
        rootfs = self.backend.create(self.cdir, self.image, self.uid,
                                     self.gid, size_gb=root_gb)
        top = self.backend.writable_root(self.cdir)
        fs.write_file(os.path.join(top, 'note'), b'before the move\n',
                      self.uid, self.gid, 0o644)
        paths = [os.path.join(top, 'data')]
        if ephemeral_gb:
            ephemeral.create(self.cdir, [(EPHEMERAL, ephemeral_gb)],
                             self.uid, self.gid)
            paths.append(os.path.join(self.ephemeral_dir(self.cdir), 'data'))
        for path in paths:
            fs.write_file(path, self.data, self.uid + GUEST_USER,
                          self.gid + GUEST_USER, 0o600)
        self._special_files(top)
        return rootfs

    def _special_files(self, top):
        """What a copy could lose: a hard link, a symlink, xattrs, a file
        capability and, in an overlay's upper layer, a whiteout (the guest
        deleted a file of the image)."""
        data = os.path.join(top, 'data')
        os.link(data, os.path.join(top, 'data-link'))
        os.symlink('data', os.path.join(top, 'data-symlink'))
        os.lchown(os.path.join(top, 'data-symlink'), self.uid, self.gid)
        for name, value in XATTRS.items():
            os.setxattr(data, name, value)
        if self.backend.name == 'overlay':
            fs.make_dir(os.path.join(top, 'etc'), self.uid, self.gid, 0o755)
            os.mknod(os.path.join(top, 'etc', 'image-marker'),
                     0o600 | stat.S_IFCHR, os.makedev(0, 0))

    def move(self):
        """The source's half (migrate_disk_and_power_off, same host)."""
        self.backend.deactivate(self.cdir)
        ephemeral.destroy(self.cdir)
        fs.make_dir(os.path.dirname(self.kept), 0, 0, 0o711)
        fs.rename(self.cdir, self.kept)
        entries = (self.backend.moved_entries(self.kept) +
                   ephemeral.moved_entries(self.kept))
        transfer.copy_local(self.kept, entries, self.name)
        return entries

    def adopt(self, root_gb, ephemeral_gb):
        """The destination's half (finish_migration)."""
        rootfs = self.backend.adopt(self.cdir, self.image, self.uid,
                                    self.gid, size_gb=root_gb)
        mounts = ephemeral.adopt(self.cdir, [(EPHEMERAL, ephemeral_gb)],
                                 self.uid, self.gid)
        return rootfs, mounts

    def remove(self, path):
        """An instance directory gone, as the driver removes one."""
        ephemeral.destroy(path)
        self.backend.destroy(path)
        fs.remove_tree(path)

    @staticmethod
    def write(top):
        """What a guest does: write a MiB and sync it."""
        with open(os.path.join(top, 'after'), 'wb') as f:
            f.write(b'x' * (1 << 20))
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def allocate(top):
        """Allocate more than 1 GiB (the old size) in ``top``."""
        path = os.path.join(top, 'big')
        subprocess.run(['fallocate', '-l', str(BIG_SIZE), path], check=True)
        return path

    # -- what is checked -----------------------------------------------

    @staticmethod
    def ephemeral_dir(cdir):
        return disk.mount_point(cdir, EPHEMERAL)

    def assert_data(self, cdir, in_ephemeral=True):
        top = self.backend.writable_root(cdir)
        st = os.stat(top)
        self.assertEqual((self.uid, self.gid), (st.st_uid, st.st_gid))
        with open(os.path.join(top, 'note')) as f:
            self.assertEqual('before the move\n', f.read())
        self.assertEqual(self.uid, os.stat(os.path.join(top, 'note')).st_uid)
        expected = hashlib.sha512(self.data).hexdigest()
        paths = [os.path.join(top, 'data')]
        if in_ephemeral:
            paths.append(os.path.join(self.ephemeral_dir(cdir), 'data'))
        for path in paths:
            st = os.stat(path)
            self.assertEqual((self.uid + GUEST_USER, self.gid + GUEST_USER,
                              0o600),
                             (st.st_uid, st.st_gid, st.st_mode & 0o7777))
            self.assertEqual(expected, sha512(path))
        data = os.path.join(top, 'data')
        self.assertTrue(os.path.samefile(data, os.path.join(top,
                                                            'data-link')))
        self.assertEqual('data', os.readlink(os.path.join(top,
                                                          'data-symlink')))
        self.assertEqual(XATTRS, {n: os.getxattr(data, n) for n in XATTRS})
        if self.backend.name == 'overlay':
            st = os.lstat(os.path.join(top, 'etc', 'image-marker'))
            self.assertEqual((True, 0), (stat.S_ISCHR(st.st_mode),
                                         st.st_rdev))

    def assert_root_size(self, cdir, size_gb):
        """The root holds at most ``size_gb`` GiB, about all of it usable."""
        if self.backend.name == 'btrfs':
            self.assertEqual(size_gb * GIB, self.btrfs.qgroups()[
                self.qgroup(cdir)][1])
        else:
            self.assertEqual(size_gb * GIB,
                             os.path.getsize(disk.image_path(cdir)))
            self.assert_ext4_size(disk.mount_point(cdir), size_gb)

    def assert_ext4_size(self, point, size_gb):
        self.assertTrue(os.path.ismount(point), point)
        # ext4's own metadata (journal, inode tables) takes a few percent.
        size = ext4_size(point)
        self.assertLessEqual(size, size_gb * GIB)
        self.assertGreater(size, size_gb * GIB * 0.93)

    def assert_ephemeral_size(self, cdir, size_gb):
        self.assertEqual(size_gb * GIB,
                         os.path.getsize(disk.image_path(cdir, EPHEMERAL)))
        self.assert_ext4_size(self.ephemeral_dir(cdir), size_gb)

    @staticmethod
    def qgroup(cdir):
        out = subprocess.run(
            ['btrfs', 'inspect-internal', 'rootid',
             os.path.join(cdir, btrfs.ROOT)],
            capture_output=True, text=True, check=True).stdout
        return '0/%d' % int(out)

    def subvolumes_of(self, path):
        rel = os.path.relpath(path, self.btrfs.path)
        return [s for s in self.btrfs.subvolumes() if s.startswith(rel)]

    def assert_nothing_left(self, path, qgroup=None):
        """Nothing of instance dir ``path`` on the host any more."""
        self.assertFalse(os.path.lexists(path))
        self.assertEqual([], lxc_fixtures.mounts_under(path))
        self.assertEqual([], loop_devices(path))
        if self.backend.name == 'btrfs':
            self.assertEqual([], self.subvolumes_of(path))
            if qgroup:
                self.assertNotIn(qgroup, self.btrfs.qgroups())

    # -- the tests -----------------------------------------------------

    @ddt.data(*BACKENDS)
    def test_resize_grows_root_and_ephemeral_disk(self, name):
        self.use(name)
        self.check_move(name, 1, 2, {'btrfs': [btrfs.ROOT]}.get(
            name, [disk.IMAGE]))

    @ddt.data(*BACKENDS)
    def test_resize_without_root_size_grows_ephemeral_disk(self, name):
        self.use(name)
        self.check_move(name, 0, 0, {'overlay': ['upper', 'work']}.get(
            name, [btrfs.ROOT]))

    def check_move(self, name, old_root_gb, new_root_gb, root_entries):
        created = self.spawn(root_gb=old_root_gb, ephemeral_gb=1)
        if old_root_gb:
            self.assert_root_size(self.cdir, old_root_gb)
        entries = self.move()
        self.assertEqual([], mounts_naming(self.name))
        self.assertEqual([], loop_devices(self.name))
        self.assertEqual(root_entries + [EPHEMERAL + '.img'], entries)

        rootfs, mounts = self.adopt(root_gb=new_root_gb, ephemeral_gb=2)
        self.assertEqual(created, rootfs)
        self.assertEqual([(self.ephemeral_dir(self.cdir), '/mnt')], mounts)
        self.assert_data(self.cdir)
        if new_root_gb:
            self.assert_root_size(self.cdir, new_root_gb)
        else:
            self.assertFalse(os.path.exists(disk.image_path(self.cdir)))
        self.assert_ephemeral_size(self.cdir, 2)
        # Both hold more than before.
        room = [self.ephemeral_dir(self.cdir)]
        if new_root_gb > old_root_gb:
            room.append(rootfs if name == 'btrfs' else
                        self.backend.writable_root(self.cdir))
        for top in room:
            os.unlink(self.allocate(top))
        if name == 'btrfs':
            self.assertTrue(btrfs.is_subvolume(rootfs))
            with open(os.path.join(rootfs, 'etc', 'image-marker')) as f:
                self.assertEqual('moved-image\n', f.read())
            self.assertEqual([os.path.relpath(rootfs, self.btrfs.path)],
                             self.subvolumes_of(self.cdir))
        # The kept copy (a revert's) is as it was, at the old sizes.
        if old_root_gb and name != 'btrfs':
            kept_image = disk.image_path(self.kept)
            self.assertEqual(old_root_gb * GIB, os.path.getsize(kept_image))
            self.assertTrue(e2fsck_clean(kept_image))
        self.assertEqual(GIB, os.path.getsize(disk.image_path(
            self.kept, EPHEMERAL)))
        self.assertEqual([], lxc_fixtures.mounts_under(self.kept))

        # Confirmed: the kept copy goes; then the instance is deleted.
        quota = name == 'btrfs' and old_root_gb
        kept_qgroup = self.qgroup(self.kept) if quota else None
        self.remove(self.kept)
        self.assert_nothing_left(self.kept, kept_qgroup)
        self.assert_data(self.cdir)
        qgroup = self.qgroup(self.cdir) if quota else None
        self.remove(self.cdir)
        self.assert_nothing_left(self.cdir, qgroup)
        self.assertEqual([], mounts_naming(self.name))
        self.assertEqual([], loop_devices(self.name))

    @ddt.data(*BACKENDS)
    def test_revert_after_a_grow_has_the_old_sizes(self, name):
        # The destination's copy goes, the kept one comes back as the
        # source's finish_revert_migration does: the disks it had, grown
        # by nothing (on btrfs the grown images were reflinks of these).
        self.use(name)
        self.spawn(root_gb=1, ephemeral_gb=1)
        self.move()
        self.adopt(root_gb=2, ephemeral_gb=2)
        self.remove(self.cdir)
        self.assert_nothing_left(self.cdir)
        fs.rename(self.kept, self.cdir)
        self.backend.activate(self.cdir)
        ephemeral.activate(self.cdir)
        self.assert_data(self.cdir)
        self.assert_root_size(self.cdir, 1)
        self.assert_ephemeral_size(self.cdir, 1)
        qgroup = self.qgroup(self.cdir) if name == 'btrfs' else None
        self.remove(self.cdir)
        self.assert_nothing_left(self.cdir, qgroup)
        self.assertEqual([], mounts_naming(self.name))

    @ddt.data(*BACKENDS)
    def test_resize_adds_an_ephemeral_disk(self, name):
        self.use(name)
        self.spawn(root_gb=1, ephemeral_gb=0)
        self.assertEqual([disk.IMAGE if name != 'btrfs' else btrfs.ROOT],
                         self.move())
        _, mounts = self.adopt(root_gb=1, ephemeral_gb=2)
        self.assertEqual([(self.ephemeral_dir(self.cdir), '/mnt')], mounts)
        self.assert_data(self.cdir, in_ephemeral=False)
        self.assert_root_size(self.cdir, 1)
        self.assert_ephemeral_size(self.cdir, 2)
        st = os.stat(self.ephemeral_dir(self.cdir))
        self.assertEqual((self.uid, self.gid), (st.st_uid, st.st_gid))
        for path in (self.kept, self.cdir):
            self.remove(path)
            self.assert_nothing_left(path)

    def test_btrfs_first_arrival_enables_quotas(self):
        # A host whose first instance arrives by a move: no quotas yet.
        self.use('btrfs')
        self.spawn(root_gb=1, ephemeral_gb=1)
        self.move()
        subprocess.run(['btrfs', 'quota', 'disable', self.btrfs.path],
                       check=True)
        self.backend = backends.get('btrfs')   # the destination's driver
        self.adopt(root_gb=2, ephemeral_gb=2)
        self.assert_data(self.cdir)
        self.assert_root_size(self.cdir, 2)
        qgroup = self.qgroup(self.cdir)
        referenced = self.btrfs.qgroups()[qgroup][0]
        self.assertGreaterEqual(referenced, DATA_SIZE)
        for path in (self.kept, self.cdir):
            self.remove(path)
        self.assert_nothing_left(self.cdir, qgroup)
        self.assert_nothing_left(self.kept)

    @ddt.data('overlay', 'dir')
    def test_adopt_at_a_smaller_size_refuses_keeping_the_disks(self, name):
        # disk.grow never shrinks ext4 under a guest's data: the move
        # fails before anything is mounted, and at the old sizes it works.
        self.use(name)
        self.spawn(root_gb=2, ephemeral_gb=2)
        self.move()
        image = disk.image_path(self.cdir)
        eph_image = disk.image_path(self.cdir, EPHEMERAL)

        e = self.assertRaises(ValueError, self.backend.adopt, self.cdir,
                              self.image, self.uid, self.gid, size_gb=1)
        self.assertIn('larger than 1 GiB', str(e))
        e = self.assertRaises(ValueError, ephemeral.adopt, self.cdir,
                              [(EPHEMERAL, 1)], self.uid, self.gid)
        self.assertIn('larger than 1 GiB', str(e))
        for path in (image, eph_image):
            self.assertEqual(2 * GIB, os.path.getsize(path))
            self.assertTrue(e2fsck_clean(path), path)
        self.assertEqual([], mounts_naming(self.name))
        self.assertEqual([], loop_devices(self.name))

        self.adopt(root_gb=2, ephemeral_gb=2)
        self.assert_data(self.cdir)
        self.assert_root_size(self.cdir, 2)
        self.assert_ephemeral_size(self.cdir, 2)
        for path in (self.kept, self.cdir):
            self.remove(path)
            self.assert_nothing_left(path)

    def test_btrfs_adopt_at_a_smaller_size_keeps_the_data(self):
        # A btrfs root is a quota, not a file system: nothing is rewritten
        # and the limit is the size asked for (migration.check_sizes
        # refuses a smaller flavor before anything moves). A root holding
        # more than that keeps it all; the guest can write once it has
        # deleted enough.
        self.use('btrfs')
        self.spawn(root_gb=2, ephemeral_gb=2)
        self.allocate(self.backend.writable_root(self.cdir))
        self.move()
        e = self.assertRaises(ValueError, ephemeral.adopt, self.cdir,
                              [(EPHEMERAL, 1)], self.uid, self.gid)
        self.assertIn('larger than 1 GiB', str(e))
        rootfs = self.backend.adopt(self.cdir, self.image, self.uid,
                                    self.gid, size_gb=1)
        ephemeral.adopt(self.cdir, [(EPHEMERAL, 2)], self.uid, self.gid)
        self.assert_data(self.cdir)
        self.assert_root_size(self.cdir, 1)
        self.assert_ephemeral_size(self.cdir, 2)
        big = os.path.join(rootfs, 'big')
        self.assertEqual(BIG_SIZE, os.path.getsize(big))
        e = self.assertRaises(OSError, self.write, rootfs)
        self.assertEqual(errno.EDQUOT, e.errno)
        os.unlink(big)
        subprocess.run(['btrfs', 'filesystem', 'sync', rootfs], check=True)
        self.write(rootfs)
        for path in (self.kept, self.cdir):
            qgroup = self.qgroup(path)
            self.remove(path)
            self.assert_nothing_left(path, qgroup)
