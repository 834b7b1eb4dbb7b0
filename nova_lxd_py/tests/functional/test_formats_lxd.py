"""LXD images and squashfs root file systems, unpacked for real and booted.

Run as root: the trees are written in the guest's user namespace
(lxc-usernsexec), and the boot tests start real containers. The images
are built locally (:mod:`nova_lxd_py.tests.images.lxd`).
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import atexit  # noqa: E402
import functools  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import ddt  # noqa: E402
import fixtures  # noqa: E402
from oslotest import base  # noqa: E402

from nova_lxd_py.storage import formats  # noqa: E402
from nova_lxd_py.storage.formats import lxd_metadata  # noqa: E402
from nova_lxd_py.storage.formats import lxd_templates  # noqa: E402
from nova_lxd_py.storage.formats import stream  # noqa: E402
from nova_lxd_py.tests.functional import driver_base  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.tests.images import lxd as images  # noqa: E402

GUEST_ROOT = 100000
UNIFIED_IMAGE = 'c0c0c0c0-0000-4000-8000-000000000001'
SPLIT_IMAGE = 'c0c0c0c0-0000-4000-8000-000000000002'
SQUASHFS_IMAGE = 'c0c0c0c0-0000-4000-8000-000000000003'

# name -> (builder, arguments); built once per process, on first use.
BUILDERS = {
    'unified.tar.xz': (images.write_unified, {'marker': 'lxd-unified'}),
    'unified.tar.gz': (images.write_unified, {'marker': 'lxd-unified-gz',
                                              'compression': 'gz'}),
    'split.tar': (images.write_split, {'marker': 'lxd-split'}),
    'split.tar.zst': (images.write_split, {'marker': 'lxd-split-zst',
                                           'compression': 'zst',
                                           'squashfs_first': True}),
    'rootfs.squashfs': (images.write_squashfs, {'marker': 'squashfs'}),
    'block-device.squashfs': (images.write_squashfs_block_device, {}),
    'foreign-uid.squashfs': (images.write_squashfs_foreign_uid, {}),
    'truncated.squashfs': (images.write_truncated_squashfs, {}),
    'corrupt.squashfs': (images.write_corrupt_squashfs, {}),
    'foreign-arch.tar.xz': (images.write_foreign_architecture, {}),
    'not-yaml.tar.xz': (images.write_metadata_not_yaml, {}),
    'no-rootfs.tar.xz': (images.write_unified_without_rootfs, {}),
    'metadata-only.tar': (images.write_split_without_squashfs, {}),
    'rootfs-symlink.tar.xz': (images.write_unified_rootfs_symlink, {}),
    'split-three.tar': (images.write_split_extra_file, {}),
    'split-truncated.tar.gz': (images.write_truncated_split, {}),
    'split-foreign-arch.tar': (images.write_split, {
        'marker': 'hostile', 'architecture': images.other_architecture()}),
    'rootfs.tar.gz': (guest_image.write_tarball, {'marker': 'tarball'}),
}


@functools.lru_cache(maxsize=None)
def _image_dir():
    # Not the per-test temp dir: it is private (0700) and gone after the
    # test; the guest's root must read the images.
    path = tempfile.mkdtemp(prefix='nova-lxd-py-lxd-images-', dir='/var/tmp')
    os.chmod(path, 0o755)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.lru_cache(maxsize=None)
def image(name):
    builder, kwargs = BUILDERS[name]
    return builder(os.path.join(_image_dir(), name), **kwargs)


def mounts_under(path):
    with open('/proc/self/mountinfo') as f:
        return [line for line in f if path in line]


def loops_under(path):
    out = subprocess.run(['losetup', '-a'], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if path in line]


@ddt.ddt
class UnpackTest(base.BaseTestCase):
    """unpack() of every builder into a guest's id range."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('unpacking into a user namespace needs root')
        self.top = tempfile.mkdtemp(prefix='nova-lxd-py-unpack-',
                                    dir='/var/tmp')
        self.addCleanup(shutil.rmtree, self.top, ignore_errors=True)
        os.chmod(self.top, 0o711)   # as the image cache's temp dir
        self.workdir = formats.scratch(self.top, 'work')
        self.dest = os.path.join(self.top, 'rootfs')
        self.target = stream.Target(self.dest, GUEST_ROOT, GUEST_ROOT,
                                    65536, 1 << 30, 'test image')

    def unpack(self, name, target=None, path=None):
        path = path or image(name)
        fmt = formats.detect(path)
        self.assertIsNotNone(fmt, name)
        return fmt.unpack(path, target or self.target, self.workdir)

    def guest_file(self, path):
        with open(os.path.join(self.dest, path)) as f:
            return f.read()

    def assert_guest_tree(self, marker, owner=GUEST_ROOT):
        self.assertEqual(marker, self.guest_file('etc/image-marker'))
        for path in ('.', 'etc/image-marker', 'bin/busybox', 'bin/sh'):
            st = os.lstat(os.path.join(self.dest, path))
            self.assertEqual((owner, owner), (st.st_uid, st.st_gid), path)
        self.assertEqual('busybox',
                         os.readlink(os.path.join(self.dest, 'bin/sh')))
        self.assertTrue(os.access(os.path.join(self.dest, 'bin/busybox'),
                                  os.X_OK))
        # The standard device nodes are left to liblxc's /dev.
        self.assertEqual([], os.listdir(os.path.join(self.dest, 'dev')))

    def assert_nothing_left(self):
        self.assertEqual([], mounts_under(self.top))
        self.assertEqual([], loops_under(self.top))
        # Nothing beside the work directory and the tree.
        self.assertLessEqual(set(os.listdir(self.top)), {'work', 'rootfs'})

    def assert_lxd_facts(self, facts):
        self.assertEqual(lxd_metadata.host_architecture(),
                         facts['architecture'])
        self.assertEqual('busybox', facts['properties']['os'])
        self.assertEqual(['/etc/hostname', '/etc/hosts'],
                         sorted(facts['templates']))
        hostname = facts['templates']['/etc/hostname']
        self.assertEqual(images.HOSTNAME_TPL, hostname['template'])
        self.assertEqual('web-1\n', lxd_templates.render(
            hostname['template'], {'container': {'name': 'web-1'},
                                   'properties': hostname['properties']}))
        self.assertGreater(facts['tree_bytes'], 1 << 20)

    @ddt.data('unified.tar.xz', 'unified.tar.gz')
    def test_unified(self, name):
        facts = self.unpack(name)
        self.assert_guest_tree(BUILDERS[name][1]['marker'])
        self.assert_lxd_facts(facts)
        # metadata.yaml and templates/ stay in the work directory.
        self.assertFalse(os.path.lexists(
            os.path.join(self.dest, 'metadata.yaml')))
        self.assert_nothing_left()

    def test_unified_into_existing_empty_dest(self):
        os.mkdir(self.dest)
        self.unpack('unified.tar.xz')
        self.assert_guest_tree('lxd-unified')

    def test_split_plain_bundle_read_in_place(self):
        facts = self.unpack('split.tar')
        self.assert_guest_tree('lxd-split')
        self.assert_lxd_facts(facts)
        # The squashfs was not copied out of the bundle.
        self.assertNotIn('rootfs.squashfs', os.listdir(self.workdir))
        self.assert_nothing_left()

    def test_split_compressed_bundle_squashfs_first(self):
        facts = self.unpack('split.tar.zst')
        self.assert_guest_tree('lxd-split-zst')
        self.assert_lxd_facts(facts)
        self.assert_nothing_left()

    def test_bare_squashfs(self):
        facts = self.unpack('rootfs.squashfs')
        self.assert_guest_tree('squashfs')
        busybox = os.path.getsize(os.path.join(self.dest, 'bin/busybox'))
        self.assertGreater(facts['tree_bytes'], busybox)
        self.assertGreater(facts['members'], 300)
        self.assert_nothing_left()

    def test_bare_squashfs_privileged_guest(self):
        self.unpack('rootfs.squashfs',
                    self.target.replace(uid=0, gid=0))
        self.assert_guest_tree('squashfs', owner=0)

    def test_squashfs_readable_by_guest_root_even_if_0600(self):
        path = os.path.join(self.top, 'work', 'download')
        shutil.copyfile(image('rootfs.squashfs'), path)
        os.chmod(path, 0o600)
        self.unpack(None, path=path)
        self.assert_guest_tree('squashfs')

    @ddt.unpack
    @ddt.data(
        ('block-device.squashfs', "squashfs entry 'dev/sda' is a device "
         'node; images may only hold the standard ones in /dev'),
        ('foreign-uid.squashfs', "squashfs entry 'home' is owned by "
         "70000:70000, outside the guest's 65536 ids"),
        ('truncated.squashfs', 'the squashfs is truncated: its superblock '
         'says'),
        ('corrupt.squashfs', 'the squashfs is corrupt or truncated '
         '(unsquashfs: read_inode: failed to read inode'),
        ('foreign-arch.tar.xz', 'it is an LXD image for %s (metadata.yaml '
         "says '%s') and this host is %s" % (
             images.other_architecture(), images.other_architecture(),
             lxd_metadata.host_architecture())),
        ('split-foreign-arch.tar', 'it is an LXD image for %s'
         % images.other_architecture()),
        ('not-yaml.tar.xz', 'its metadata.yaml is not valid YAML'),
        ('no-rootfs.tar.xz', 'the LXD image has no rootfs/ directory'),
        ('metadata-only.tar', 'the split LXD image bundle has no squashfs'),
        ('rootfs-symlink.tar.xz', "the LXD image's rootfs is not a "
         'directory'),
        ('split-three.tar', 'a split LXD image bundle holds one metadata '
         "tarball and one squashfs; 'extra.squashfs' is a third file"),
        ('split-truncated.tar.gz', 'the bundle is corrupt or truncated'),
    )
    def test_hostile_refused(self, name, reason):
        e = self.assertRaises(stream.UnsafeImage, self.unpack, name)
        self.assertIn(reason, str(e))
        self.assert_nothing_left()

    @ddt.data('rootfs.squashfs', 'split.tar', 'unified.tar.xz')
    def test_cap_on_tree_size(self, name):
        e = self.assertRaises(stream.UnsafeImage, self.unpack, name,
                              self.target.replace(max_bytes=1 << 20))
        self.assertIn('it unpacks to more than 1 MiB', str(e))
        self.assert_nothing_left()

    @ddt.unpack
    @ddt.data(
        ('unified.tar.xz', 'lxd'), ('unified.tar.gz', 'lxd'),
        ('split.tar', 'lxd'), ('split.tar.zst', 'lxd'),
        ('rootfs.squashfs', 'squashfs'), ('rootfs.tar.gz', 'tarball'),
    )
    def test_detected_as(self, name, fmt):
        self.assertEqual(fmt, formats.detect(image(name)).NAME)
        formats.check_hints(formats.by_name(fmt), 'raw', 'bare')

    def squashfs_with_xattrs(self, xattrs):
        tree = guest_image.write_tree(os.path.join(self.top, 'tree'),
                                      'xattrs')
        for name, value in xattrs.items():
            os.setxattr(os.path.join(tree, 'bin/busybox'), name, value)
        path = os.path.join(self.workdir, 'xattrs.squashfs')
        subprocess.run(['mksquashfs', tree, path, '-noappend', '-quiet',
                        '-no-progress'], check=True,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(tree)
        return path

    def test_squashfs_file_capabilities_shift_into_the_guest(self):
        # A v2 capability (cap_net_raw=ep) as a privileged host writes it;
        # in the user namespace it becomes v3 with the guest's root id.
        v2 = struct.pack('<IIIII', 0x02000001, 1 << 13, 0, 0, 0)
        path = self.squashfs_with_xattrs({'security.capability': v2,
                                          'user.origin': b'image'})
        self.unpack(None, path=path)
        busybox = os.path.join(self.dest, 'bin/busybox')
        self.assertEqual(b'image', os.getxattr(busybox, 'user.origin'))
        cap = os.getxattr(busybox, 'security.capability')
        magic, permitted, _, _, _, rootid = struct.unpack('<IIIIII', cap)
        self.assertEqual((0x03000001, 1 << 13, GUEST_ROOT),
                         (magic, permitted, rootid))

    def test_squashfs_trusted_xattrs_unpacked_without_xattrs(self):
        path = self.squashfs_with_xattrs({'trusted.overlay.opaque': b'y',
                                          'user.origin': b'image'})
        logged = self.useFixture(fixtures.FakeLogger())
        self.unpack(None, path=path)
        busybox = os.path.join(self.dest, 'bin/busybox')
        self.assertEqual([], os.listxattr(busybox))
        self.assertEqual('xattrs', self.guest_file('etc/image-marker'))
        self.assertIn('extended attributes cannot be written', logged.output)
        self.assertEqual(GUEST_ROOT, os.lstat(busybox).st_uid)

    def test_squashfs_fifo_and_standard_devices(self):
        path = os.path.join(self.workdir, 'extra.squashfs')
        images.write_squashfs(path, 'extra', pseudo=images.STANDARD_DEVICES
                              + ('run/fifo i 600 0 0 f',))
        self.unpack(None, path=path)
        self.assertTrue(stat.S_ISFIFO(
            os.lstat(os.path.join(self.dest, 'run/fifo')).st_mode))
        self.assertEqual([], os.listdir(os.path.join(self.dest, 'dev')))


class BootTest(driver_base.DriverTestCase):
    """Real containers from an LXD image, a split bundle, a squashfs."""

    def boot(self, image_id, name, marker, **glance):
        self.images[image_id] = image(name)
        instance = self.spawn(image_id=image_id, **glance)
        self.assertEqual(marker, self.run_in_guest(instance, 'cat',
                                                   '/etc/image-marker'))
        self.assertIn(driver_base.BOOTED + ' guest-1', self.console(instance))
        return instance

    def assert_templates_applied(self, instance):
        self.assertEqual('guest-1\n',
                         self.run_in_guest(instance, 'cat', '/etc/hostname'))
        self.assertIn('127.0.1.1   guest-1\n',
                      self.run_in_guest(instance, 'cat', '/etc/hosts'))

    def test_boot_unified_lxd_image(self):
        instance = self.boot(UNIFIED_IMAGE, 'unified.tar.xz', 'lxd-unified',
                             disk_format='raw', container_format='compressed')
        self.assert_templates_applied(instance)

    def test_boot_split_lxd_bundle(self):
        instance = self.boot(SPLIT_IMAGE, 'split.tar', 'lxd-split',
                             disk_format='raw', container_format='bare')
        self.assert_templates_applied(instance)

    def test_boot_bare_squashfs(self):
        self.boot(SQUASHFS_IMAGE, 'rootfs.squashfs', 'squashfs',
                  disk_format='raw', container_format='bare')
