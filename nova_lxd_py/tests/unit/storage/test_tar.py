"""Tar member checks, on archives built in memory and unpacked for real.

Every hostile archive is unpacked into ``dest`` next to a ``host`` directory
standing for the rest of the host: a refused archive must leave both
untouched.
"""

import io
import os
import stat
import tarfile

import ddt
import fixtures
from oslotest import base

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


def archive_bytes(members, host_dir, compression=''):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:' + compression) as t:
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
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        top = self.useFixture(fixtures.TempDir()).path
        self.host = os.path.join(top, 'host')
        os.mkdir(self.host)
        with open(os.path.join(self.host, 'secret'), 'wb') as f:
            f.write(b'host secret')
        self.dest = os.path.join(top, 'cache', 'rootfs')
        os.mkdir(os.path.dirname(self.dest))
        self.archive = os.path.join(top, 'cache', 'download')

    def unpack(self, members, shift=0, compression=''):
        with open(self.archive, 'wb') as f:
            f.write(archive_bytes(members, self.host, compression))
        tar.unpack(self.archive, self.dest, shift, shift)

    def assert_host_untouched(self):
        self.assertEqual({'secret': ('reg', b'host secret')},
                         tree(self.host))
        self.assertEqual(1, os.stat(os.path.join(self.host,
                                                 'secret')).st_nlink)
        # Nothing next to dest, nothing in it.
        self.assertLessEqual(set(os.listdir(os.path.dirname(self.dest))),
                             {'download', 'rootfs'})
        if os.path.exists(self.dest):
            self.assertEqual({}, tree(self.dest))

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
        self.assertRaises(tar.UnsafeMember, self.unpack, members)
        self.assert_host_untouched()

    def test_unpack_hostile_member_after_good_ones_writes_nothing(self):
        # Every member is checked before the first one is written.
        members = [dirm('etc'), reg('etc/hostname', b'guest'),
                   sym('evil', HOST), reg('evil/pwned')]
        self.assertRaises(tar.UnsafeMember, self.unpack, members)
        self.assert_host_untouched()

    def test_unpack_device_nodes_skipped(self):
        self.unpack([dirm('dev'), dev('dev/null'), dev('dev/sda', 'blk'),
                     dev('dev/fifo', 'fifo'), reg('etc/hostname', b'g')])
        self.assertEqual({'dev': ('dir', None), 'etc': ('dir', None),
                          'etc/hostname': ('reg', b'g')}, tree(self.dest))

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

    @ddt.data('', 'gz', 'xz', 'bz2')
    def test_unpack_compressions(self, compression):
        self.unpack([reg('./etc/hostname', b'guest')],
                    compression=compression)
        self.assertEqual({'etc': ('dir', None),
                          'etc/hostname': ('reg', b'guest')},
                         tree(self.dest))

    def test_unpack_shifts_owners(self):
        if os.geteuid() != 0:
            self.skipTest('chown needs root')
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
        ('', True), ('gz', True), ('xz', True), ('bz2', True),
    )
    def test_detect_tarballs(self, compression, expected):
        head = archive_bytes([reg('a')], '/', compression)[:512]
        self.assertIs(expected, tar.detect(head))

    @ddt.data(b'', b'\x00' * 512, b'QFI\xfb' + b'\x00' * 508,
              b'hsqs' + b'\x00' * 508, b'not a tarball at all\n' * 30)
    def test_detect_other_bytes(self, head):
        self.assertFalse(tar.detect(head))
