"""Tar streams: member checks on archives built in memory, unpacked for
real by GNU tar (in the guest's user namespace when ids are shifted).

Every hostile archive is unpacked into ``dest`` next to a ``host`` directory
standing for the rest of the host: a refused archive must leave the host
untouched, and its hostile member must never be written.
"""

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile

import ddt
from oslotest import base

from nova_lxd_py.storage.formats import stream
from nova_lxd_py.storage.formats import tar
from nova_lxd_py.tests import fixtures as lxc_fixtures

HOST = '@HOST@'   # replaced by the test's stand-in for the host's files


def reg(name, data=b'data', uid=0, gid=0, mode=0o644):
    return ('reg', name, data, uid, gid, mode)


def dirm(name, uid=0, gid=0):
    return ('dir', name, None, uid, gid, 0o755)


def sym(name, target):
    return ('sym', name, target, 0, 0, 0o777)


def lnk(name, target):
    return ('lnk', name, target, 0, 0, 0o644)


def dev(name, kind='chr'):
    return (kind, name, None, 0, 0, 0o666)


_TYPES = {'reg': tarfile.REGTYPE, 'dir': tarfile.DIRTYPE,
          'sym': tarfile.SYMTYPE, 'lnk': tarfile.LNKTYPE,
          'chr': tarfile.CHRTYPE, 'blk': tarfile.BLKTYPE,
          'fifo': tarfile.FIFOTYPE}


def archive_bytes(members, host_dir, compression='', fmt=tarfile.GNU_FORMAT):
    if compression == 'zst':   # Python's tarfile has no zstd before 3.14
        return subprocess.run(['zstd', '-q', '-c'], check=True,
                              input=archive_bytes(members, host_dir, '',
                                                  fmt),
                              capture_output=True).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:' + compression,
                      format=fmt) as t:
        for kind, name, data, uid, gid, mode in members:
            info = tarfile.TarInfo(name.replace(HOST, host_dir))
            info.type, info.mode = _TYPES[kind], mode
            info.uid, info.gid = uid, gid
            if kind in ('sym', 'lnk'):
                info.linkname = data.replace(HOST, host_dir)
                data = None
            elif kind in ('chr', 'blk'):
                info.devmajor, info.devminor = 1, 3
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tree(root):
    """{relative path: (kind, link target or content)} of a directory."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ('sym', os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ('dir', None)
            elif stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    found[rel] = ('reg', f.read())
            else:
                found[rel] = ('other', None)
    return found


@ddt.ddt
class UnpackTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('unpacking as a guest root needs root')
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        # Not oslotest's 0700 temp dir: the user namespace that unpacks
        # (host uid 100000) must pass through the parents of dest.
        top = tempfile.mkdtemp(prefix='nova-lxd-py-tar-', dir='/var/tmp')
        self.addCleanup(shutil.rmtree, top, ignore_errors=True)
        os.chmod(top, 0o711)
        self.host = os.path.join(top, 'host')
        os.mkdir(self.host)
        with open(os.path.join(self.host, 'secret'), 'wb') as f:
            f.write(b'host secret')
        self.dest = os.path.join(top, 'cache', 'rootfs')
        os.mkdir(os.path.dirname(self.dest), 0o711)
        self.archive = os.path.join(top, 'cache', 'download')

    def unpack(self, members, shift=100000, compression='', max_bytes=0,
               data=None):
        with open(self.archive, 'wb') as f:
            f.write(data if data is not None else
                    archive_bytes(members, self.host, compression))
        return tar.unpack(self.archive, stream.Target(
            self.dest, shift, shift, max_bytes=max_bytes), None)

    def assert_host_untouched(self, written=()):
        self.assertEqual({'secret': ('reg', b'host secret')},
                         tree(self.host))
        self.assertEqual(1, os.stat(os.path.join(self.host,
                                                 'secret')).st_nlink)
        # Nothing next to dest; in it, at most the good members before.
        self.assertLessEqual(set(os.listdir(os.path.dirname(self.dest))),
                             {'download', 'rootfs'})
        if os.path.exists(self.dest):
            self.assertLessEqual(set(tree(self.dest)), set(written))

    @ddt.data(
        # absolute names
        [reg(HOST + '/pwned')],
        [reg('/etc/x')],
        [reg('.//etc/x')],
        # '..' anywhere in the name
        [reg('../pwned')],
        [reg('../host/pwned')],
        [dirm('a'), reg('a/../../host/pwned')],
        [reg('a/..')],
        # writing through a symlink, absolute or relative, at any depth
        [sym('evil', HOST), reg('evil/pwned')],
        [sym('evil', '../host'), reg('evil/pwned')],
        [dirm('d'), sym('d/evil', HOST), reg('d/evil/pwned')],
        [dirm('d'), sym('d/evil', HOST), dirm('d/evil/sub')],
        [sym('evil', 'real'), dirm('real'), reg('evil/pwned')],
        # replacing a symlink by a file or a directory (would follow it)
        [sym('evil', HOST + '/secret'), reg('evil', b'overwritten')],
        [sym('evil', HOST), dirm('evil')],
        [sym('evil', HOST + '/secret'), lnk('evil', 'other')],
        # hard links leaving the tree
        [lnk('h', HOST + '/secret')],
        [lnk('h', '../host/secret')],
        [lnk('h', './../host/secret')],
        [sym('evil', HOST), lnk('h', 'evil/secret')],
        [sym('s', HOST + '/secret'), lnk('h', 's')],
        [sym('evil', HOST), dirm('d'), lnk('d/h', './evil/secret')],
    )
    def test_unpack_hostile_refused(self, members):
        for shift in (100000, 0):
            self.assertRaises(stream.UnsafeImage, self.unpack, members,
                              shift)
            self.assert_host_untouched(
                written=[m[1] for m in members[:-1]])
            shutil.rmtree(self.dest, ignore_errors=True)

    def test_unpack_hostile_member_after_good_ones_never_written(self):
        # Each chunk is checked before GNU tar gets it: the good members
        # before may be on disk (the caller removes them), the bad never.
        members = [dirm('etc'), reg('etc/hostname', b'guest'),
                   sym('evil', HOST), reg('evil/pwned')]
        e = self.assertRaises(stream.UnsafeImage, self.unpack, members)
        self.assertIn("'evil/pwned' is written through a symlink", str(e))
        self.assert_host_untouched(written=['etc', 'etc/hostname', 'evil'])

    def test_unpack_standard_device_nodes_left_to_liblxc(self):
        self.unpack([dirm('dev'), dev('dev/null'), dev('dev/console'),
                     dev('dev/fifo', 'fifo'), reg('etc/hostname', b'g')])
        found = tree(self.dest)
        self.assertEqual({'dev', 'dev/fifo', 'etc', 'etc/hostname'},
                         set(found))

    @ddt.unpack
    @ddt.data(('dev/sda', 'blk'), ('dev/mem', 'chr'), ('etc/null', 'chr'),
              ('dev/sub/null', 'chr'), ('dev/null', 'blk'))
    def test_unpack_other_device_nodes_refused(self, name, kind):
        e = self.assertRaises(stream.UnsafeImage, self.unpack,
                              [dirm('dev'), dirm('etc'), dirm('dev/sub'),
                               dev(name, kind)])
        self.assertIn('%r is a device node' % name, str(e))

    def test_unpack_ids_outside_the_guest_range_refused(self):
        e = self.assertRaises(stream.UnsafeImage, self.unpack,
                              [reg('f', uid=65536, gid=0)])
        self.assertIn('outside the guest', str(e))

    def test_unpack_bomb_stops_at_the_cap(self):
        members = [reg('f%d' % i, b'x' * 4096) for i in range(64)]
        e = self.assertRaises(stream.UnsafeImage, self.unpack, members,
                              max_bytes=100 * 1024)
        self.assertIn('more than', str(e))

    @ddt.data('', 'gz', 'xz', 'bz2', 'zst')
    def test_unpack_truncated_refused(self, compression):
        data = archive_bytes([reg('big', os.urandom(200000))], self.host,
                             compression)
        e = self.assertRaises(stream.UnsafeImage, self.unpack, None,
                              data=data[:len(data) // 2])
        self.assertIn('corrupt or truncated', str(e))

    def test_unpack_corrupt_header_refused(self):
        data = bytearray(archive_bytes([reg('a'), reg('b')], self.host))
        data[1024:1124] = b'\xff' * 100   # the second header's name
        e = self.assertRaises(stream.UnsafeImage, self.unpack, None,
                              data=bytes(data))
        self.assertIn('corrupt or truncated', str(e))

    @ddt.data('', 'gz')
    def test_unpack_ignores_what_follows_the_end_of_archive(self, how):
        # GNU tar and the checker both stop at the end-of-archive blocks;
        # what an image hides after them never reaches tar.
        good = archive_bytes([reg('a', b'kept')], self.host)
        hidden = archive_bytes([sym('evil', HOST), reg('evil/pwned')],
                               self.host)
        data = good + hidden
        if how:
            data = subprocess.run(['gzip', '-c'], input=data, check=True,
                                  capture_output=True).stdout
        self.unpack(None, data=data)
        self.assertEqual({'a': ('reg', b'kept')}, tree(self.dest))
        self.assert_host_untouched(written=['a'])

    @ddt.data(tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)
    def test_unpack_long_names_are_checked(self, fmt):
        long_dir = 'd' * 150
        data = archive_bytes([dirm(long_dir), sym(long_dir + '/e' * 30,
                                                  HOST),
                              reg(long_dir + '/e' * 30 + '/pwned')],
                             self.host, fmt=fmt)
        e = self.assertRaises(stream.UnsafeImage, self.unpack, None,
                              data=data)
        self.assertIn('written through a symlink', str(e))
        self.assert_host_untouched(written=[long_dir, long_dir + '/e' * 30])

    def test_unpack_keeps_symlinks_as_written(self):
        # Absolute targets resolve inside the guest, so they stay as is.
        self.unpack([dirm('bin'), reg('bin/busybox', b'elf'),
                     sym('bin/sh', '/bin/busybox'), dirm('sbin'),
                     sym('sbin/init', '../bin/busybox'),
                     sym('etc', HOST)])
        self.assertEqual({
            'bin': ('dir', None), 'bin/busybox': ('reg', b'elf'),
            'bin/sh': ('sym', '/bin/busybox'), 'sbin': ('dir', None),
            'sbin/init': ('sym', '../bin/busybox'),
            'etc': ('sym', self.host)}, tree(self.dest))
        self.assertEqual({'secret': ('reg', b'host secret')},
                         tree(self.host))

    @ddt.data('a', './a', '././a')
    def test_unpack_hard_link_inside_tree(self, target):
        self.unpack([reg('./a', b'same'), lnk('./b', target)])
        a, b = (os.stat(os.path.join(self.dest, n)) for n in 'ab')
        self.assertEqual(a.st_ino, b.st_ino)

    def test_unpack_hard_link_to_dotfile(self):
        self.unpack([dirm('root'), reg('root/.profile', b'PS1=#'),
                     lnk('root/profile', 'root/.profile')])
        self.assertEqual(
            os.stat(os.path.join(self.dest, 'root/.profile')).st_ino,
            os.stat(os.path.join(self.dest, 'root/profile')).st_ino)

    @ddt.data('', 'gz', 'xz', 'bz2', 'zst')
    def test_unpack_compressions(self, compression):
        self.unpack([reg('./etc/hostname', b'guest')],
                    compression=compression)
        self.assertEqual({'etc': ('dir', None),
                          'etc/hostname': ('reg', b'guest')},
                         tree(self.dest))

    def test_unpack_shifts_owners(self):
        self.unpack([dirm('home'), dirm('home/user', uid=1000, gid=1000),
                     reg('home/user/f', uid=1000, gid=1001),
                     reg('etc-passwd')], shift=100000)
        owners = {rel: (os.lstat(os.path.join(self.dest, rel)).st_uid,
                        os.lstat(os.path.join(self.dest, rel)).st_gid)
                  for rel in ('.', 'home', 'home/user', 'home/user/f',
                              'etc-passwd')}
        self.assertEqual({'.': (100000, 100000), 'home': (100000, 100000),
                          'home/user': (101000, 101000),
                          'home/user/f': (101000, 101001),
                          'etc-passwd': (100000, 100000)}, owners)


@ddt.ddt
class DetectTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        ('', True), ('gz', True), ('xz', True), ('bz2', True), ('zst', True),
    )
    def test_detect_tarballs(self, compression, expected):
        head = archive_bytes([reg('a')], '/', compression)[:512]
        self.assertIs(expected, tar.detect(head, None))

    @ddt.data(b'', b'\x00' * 512, b'QFI\xfb' + b'\x00' * 508,
              b'hsqs' + b'\x00' * 508, b'not a tarball at all\n' * 30)
    def test_detect_other_bytes(self, head):
        self.assertFalse(tar.detect(head, None))
