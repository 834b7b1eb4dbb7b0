"""Raw and qcow2 disk images unpacked for real, and booted (run as root).

The images are built locally by :mod:`nova_lxd_py.tests.images.disk` from
the busybox guest. Each unpack goes into an unprivileged guest's id range
(host uid 100000): owners must land shifted. Each refusal must leave no
mount and no loop device behind (the mounts live in a private namespace;
the loop devices are matched by the files they hold).
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import atexit  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import ddt  # noqa: E402
from oslotest import base  # noqa: E402

import nova_lxd_py  # noqa: E402
from nova_lxd_py.storage import formats  # noqa: E402
from nova_lxd_py.storage.formats import disk  # noqa: E402
from nova_lxd_py.storage.formats import qcow2  # noqa: E402
from nova_lxd_py.storage.formats import stream  # noqa: E402
from nova_lxd_py.storage.formats import tar  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests.functional import driver_base  # noqa: E402
from nova_lxd_py.tests.images import disk as images  # noqa: E402

MARKER = 'disk-guest-marker'
GUEST_ROOT = 100000
PREFIX = 'nova-lxd-py-disk-'
GPT_QCOW2 = 'd15c0000-0000-4000-8000-000000000001'
MBR_RAW = 'd15c0000-0000-4000-8000-000000000002'


@functools.lru_cache(maxsize=None)
def builder():
    """One set of images per test process (built on first use).

    Not the per-test temp dir of oslotest: it is removed after each test
    and private (0700), and the booted guests' root must read the cache.
    """
    path = tempfile.mkdtemp(prefix=PREFIX + 'images-', dir='/var/tmp')
    os.chmod(path, 0o755)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return images.Builder(path, MARKER)


def loop_devices():
    """Loop devices whose backing file is one of these tests' files."""
    out = subprocess.run(['losetup', '--all'], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if PREFIX in line)


def our_mounts():
    with open('/proc/self/mountinfo') as f:
        return sorted(line for line in f if PREFIX in line)


class UnpackBase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('mounting and user namespaces need root')
        self.top = tempfile.mkdtemp(prefix=PREFIX, dir='/var/tmp')
        self.addCleanup(shutil.rmtree, self.top, ignore_errors=True)
        os.chmod(self.top, 0o755)       # the guest's root must pass
        self.workdir = os.path.join(self.top, 'work')
        os.mkdir(self.workdir)
        self.mounts, self.loops = our_mounts(), loop_devices()

    def target(self, uid=GUEST_ROOT, max_bytes=0):
        return stream.Target(dest=os.path.join(self.top, 'rootfs'),
                             uid=uid, gid=uid, max_bytes=max_bytes,
                             label='test image')

    def unpack(self, path, target=None):
        fmt = formats.detect(path)
        self.assertIsNotNone(fmt, path)
        return fmt, fmt.unpack(path, target or self.target(), self.workdir)

    def assert_nothing_left(self):
        self.assertEqual(self.loops, loop_devices())
        self.assertEqual(self.mounts, our_mounts())
        self.assertEqual(['mnt'] if os.path.exists(os.path.join(
            self.workdir, 'mnt')) else [], os.listdir(self.workdir))


@ddt.ddt
class UnpackTest(UnpackBase):

    @ddt.data(
        # builder, format, facts
        ('gpt_raw', disk, {'table': 'gpt', 'partition': 2,
                           'filesystem': 'ext4'}),
        ('mbr_raw', disk, {'table': 'mbr', 'partition': 2,
                           'filesystem': 'ext4'}),
        ('bare_ext4', disk, {'table': None, 'partition': None,
                             'filesystem': 'ext4'}),
        ('bare_btrfs', disk, {'table': None, 'partition': None,
                              'filesystem': 'btrfs'}),
        ('btrfs_at', disk, {'table': None, 'partition': None,
                            'filesystem': 'btrfs', 'subvolume': '@'}),
        ('bare_xfs', disk, {'table': None, 'partition': None,
                            'filesystem': 'xfs'}),
        ('gpt_qcow2', qcow2, {'table': 'gpt', 'partition': 2,
                              'filesystem': 'ext4', 'qcow2_version': 3}),
        ('mbr_qcow2', qcow2, {'table': 'mbr', 'partition': 2,
                              'filesystem': 'ext4'}),
    )
    @ddt.unpack
    def test_unpack(self, name, fmt, expected):
        path = getattr(builder(), name)()
        found, facts = self.unpack(path)
        self.assertIs(fmt, found)
        self.assertEqual(expected, {k: facts[k] for k in expected})
        self.assertGreater(facts['members'], 100)
        self.assertGreater(facts['tree_bytes'], 1 << 20)
        self.assertTrue(any('vmlinuz-6.1.0-guest' in w
                            for w in facts['warnings']), facts['warnings'])
        if facts['partition']:
            self.assertTrue(any(w.startswith('partition 1 (') and
                                'bootloader' in w
                                for w in facts['warnings']),
                            facts['warnings'])
        dest = self.target().dest
        with open(os.path.join(dest, 'etc', 'image-marker')) as f:
            self.assertEqual(MARKER, f.read())
        for path in ('.', 'etc/image-marker', 'bin/busybox', 'sbin/init',
                     'etc'):
            st = os.lstat(os.path.join(dest, path))
            self.assertEqual((GUEST_ROOT, GUEST_ROOT),
                             (st.st_uid, st.st_gid), path)
        self.assertEqual('/bin/busybox',
                         os.readlink(os.path.join(dest, 'sbin', 'init')))
        self.assert_nothing_left()

    def test_privileged_guest_keeps_root_owners(self):
        _, facts = self.unpack(builder().gpt_raw(), self.target(uid=0))
        st = os.lstat(os.path.join(self.target().dest, 'bin', 'busybox'))
        self.assertEqual((0, 0), (st.st_uid, st.st_gid))
        self.assert_nothing_left()

    def test_tree_over_the_cap_refused(self):
        e = self.assertRaises(stream.UnsafeImage, self.unpack,
                              builder().gpt_raw(),
                              self.target(max_bytes=1 << 20))
        self.assertIn('more than 1 MiB', str(e))
        self.assert_nothing_left()

    def test_qcow2_virtual_size_over_the_cap_refused(self):
        e = self.assertRaises(stream.UnsafeImage, self.unpack,
                              builder().gpt_qcow2(),
                              self.target(max_bytes=16 << 20))
        self.assertIn('virtual size (51 MiB) is more than the 16 MiB',
                      str(e))
        self.assertEqual([], os.listdir(self.workdir))
        self.assert_nothing_left()

    def test_tarballs_are_not_disks(self):
        for compression in ('', 'gz'):
            path = lxc_fixtures.guest_tarball(compression=compression)
            self.assertIs(tar, formats.detect(path))


@ddt.ddt
class HostileTest(UnpackBase):

    @ddt.data(
        ('qcow2_backing', (), r"backing file \('/etc/shadow'\)"),
        ('qcow2_data_file', (), r"external data file \('/var/tmp/"),
        ('no_root_raw', (),
         r'^no partition holds a root file system \(/sbin/init or '
         r'/etc/os-release\); found: partition 1 \(BIOS boot\): no known '
         r'file system; partition 2 \(Linux\): ext4, no /sbin/init or '
         r'/etc/os-release$'),
        ('corrupt_gpt_raw', (), r'GPT partition entries are corrupt'),
        ('corrupt_fs_raw', (),
         r'partition 2 \(Linux\): ext4, mount failed: mount: .*'),
    )
    @ddt.unpack
    def test_refused(self, name, args, reason):
        path = getattr(builder(), name)(*args)
        e = self.assertRaises(stream.UnsafeImage, self.unpack, path)
        self.assertRegex(str(e), reason)
        self.assert_nothing_left()

    def test_backing_file_with_a_bootable_disk_refused(self):
        # Following it would "work": the refusal is for the reference.
        path = builder().qcow2_backing(builder().gpt_raw())
        e = self.assertRaises(stream.UnsafeImage, self.unpack, path)
        self.assertIn("backing file ('%s')" % builder().gpt_raw(), str(e))
        self.assert_nothing_left()

    @ddt.data(
        ('gpt_qcow2', qcow2, r'corrupt or truncated: qemu-img check '
         r'found \d+ errors'),
        ('gpt_raw', disk, r'partition 2 \(Linux\) ends at byte \d+, past '
         r'the end of the image'),
        ('bare_ext4', disk, r'the whole disk: ext4 of 48 MiB in 24 MiB: '
         r'truncated or corrupt'),
    )
    @ddt.unpack
    def test_truncated_refused(self, name, fmt, reason):
        path = builder().truncated(getattr(builder(), name)())
        self.assertIs(fmt, formats.detect(path))
        e = self.assertRaises(stream.UnsafeImage, self.unpack, path)
        self.assertRegex(str(e), reason)
        self.assert_nothing_left()

    def test_killed_unpack_leaves_no_mount(self):
        # SIGKILL to the unpacking process, while its namespace holds the
        # mounts: they and their loop devices go with it.
        path = builder().gpt_raw()
        script = ('import sys, time\n'
                  'from nova_lxd_py.storage.formats import disk, stream\n'
                  'class Stop(stream.Checker):\n'
                  '    def check(self, member):\n'
                  '        print("reading", flush=True)\n'
                  '        time.sleep(3600)\n'
                  'stream.Checker = Stop\n'
                  'disk.unpack(sys.argv[1], stream.Target(sys.argv[2]), '
                  'sys.argv[3])\n')
        proc = subprocess.Popen(
            [sys.executable, '-c', script, path,
             self.target().dest, self.workdir],
            stdout=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(nova_lxd_py.__file__)))
        self.addCleanup(proc.kill)
        self.assertEqual(b'reading\n', proc.stdout.readline())
        self.assertTrue(loop_devices())        # the root partition's
        proc.kill()
        proc.wait()
        driver_base.wait_until(lambda: loop_devices() == self.loops,
                               timeout=10, what='loop devices released')
        self.assertEqual(self.mounts, our_mounts())


class BootTest(driver_base.DriverTestCase):
    """Real containers from disk images, through the driver."""

    def boot(self, image_id, path, disk_format):
        self.images[image_id] = path
        instance = self.spawn(image_id=image_id, disk_format=disk_format,
                              container_format='bare')
        # The cache entry says which format module made it.
        entries = self.cache_entries()
        self.assertEqual(1, len(entries), entries)
        with open(os.path.join(driver_base.CONF.lxc.image_cache_path,
                               entries[0], 'meta.json')) as f:
            meta = json.load(f)
        self.assertEqual((disk_format, 2, 'ext4'), (
            meta['format'], meta['partition'], meta['filesystem']))
        self.assertEqual(MARKER, self.run_in_guest(instance, 'cat',
                                                   '/etc/image-marker'))
        self.assertEqual('0\n', self.run_in_guest(instance, 'stat', '-c',
                                                  '%u', '/bin/busybox'))
        self.assertEqual(GUEST_ROOT,
                         driver_base.host_uid(self.init_pid(instance)))

    def test_boot_gpt_qcow2(self):
        self.boot(GPT_QCOW2, builder().gpt_qcow2(), 'qcow2')

    def test_boot_mbr_raw(self):
        self.boot(MBR_RAW, builder().mbr_raw(), 'raw')
