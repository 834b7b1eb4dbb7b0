"""The squashfs listing check, on real ``unsquashfs -lln`` output.

The squashfs images are made here by mksquashfs from pseudo file
definitions (no privileges needed, even for device nodes); unpacking for
real is in the functional tests.
"""

import os
import struct
import subprocess

import ddt
import fixtures
from oslotest import base

from nova_lxd_py.storage.formats import squashfs
from nova_lxd_py.storage.formats import stream

E = squashfs.Entry
UNPRIVILEGED = stream.Target('/nonexistent', uid=100000, gid=100000,
                             count=65536)
PRIVILEGED = stream.Target('/nonexistent')


def entry(path, kind='-', uid=0, gid=0, size=0):
    return E(kind, path, uid, gid, size, None, None, None)


@ddt.ddt
class ListingTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.src = os.path.join(self.dir, 'src')
        os.mkdir(self.src)

    def mksquashfs(self, *pseudo, files=None):
        for name, data in (files or {}).items():
            path = os.path.join(self.src, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)
        image = os.path.join(self.dir, 'image.sqfs')
        argv = ['mksquashfs', self.src, image, '-noappend', '-quiet',
                '-no-progress']
        for definition in pseudo:
            argv += ['-p', definition]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return image

    def test_every_kind_of_entry(self):
        image = self.mksquashfs(
            'dev d 755 0 0', 'dev/null c 666 0 0 1 3',
            'dev/sda b 640 0 6 8 0', 'run d 755 0 0', 'run/fifo i 600 0 0 f',
            'home d 750 1000 1001', 'etc/link s 777 0 0 ../etc/file',
            'opt d 755 4294967295 65535', '"opt/with space" d 755 0 0',
            '"opt/a -> b" s 777 0 0 target',
            files={'etc/file': b'12345'})
        by_path = {e.path: e for e in squashfs.list_entries(image)}
        self.assertEqual(E('c', 'dev/null', 0, 0, 0, '1', '3', None),
                         by_path['dev/null'])
        self.assertEqual(E('b', 'dev/sda', 0, 6, 0, '8', '0', None),
                         by_path['dev/sda'])
        self.assertEqual('p', by_path['run/fifo'].kind)
        self.assertEqual(('d', 1000, 1001), (by_path['home'].kind,
                                             by_path['home'].uid,
                                             by_path['home'].gid))
        self.assertEqual(('l', '../etc/file'), (by_path['etc/link'].kind,
                                                by_path['etc/link'].link))
        self.assertEqual(('-', 5), (by_path['etc/file'].kind,
                                    by_path['etc/file'].size))
        # Some unsquashfs versions print ids with %d (2**32 - 1 as -1).
        self.assertEqual((2**32 - 1, 65535), (by_path['opt'].uid % 2**32,
                                              by_path['opt'].gid))
        self.assertIn('opt/with space', by_path)
        # A symlink's name is read up to the first " -> ".
        self.assertEqual('b -> target', by_path['opt/a'].link)
        self.assertEqual(12, len(by_path))

    def test_id_outside_guest_range_refused(self):
        image = self.mksquashfs('opt d 755 4294967295 0')
        e = self.assertRaises(
            stream.UnsafeImage, squashfs.check_entries,
            squashfs.list_entries(image), UNPRIVILEGED)
        self.assertIn("'opt' is owned by 4294967295:0, outside the guest's "
                      '65536 ids', str(e))

    def test_block_device_refused(self):
        image = self.mksquashfs('dev d 755 0 0', 'dev/sda b 640 0 0 8 0')
        e = self.assertRaises(
            stream.UnsafeImage, squashfs.check_entries,
            squashfs.list_entries(image), PRIVILEGED)
        self.assertIn("'dev/sda' is a device node", str(e))

    def test_name_with_line_break_refused(self):
        image = self.mksquashfs(files={'etc/a\nb': b'x'})
        e = self.assertRaises(stream.UnsafeImage, squashfs.list_entries,
                              image)
        self.assertIn("line break (listing line 'b')", str(e))

    def test_forged_listing_line_refused(self):
        # A symlink target may hold "/": a whole line, forged after a line
        # break, still lacks the listing's unguessable prefix.
        image = self.mksquashfs(
            'dev d 755 0 0',
            'dev/null s 777 0 0 x\n'
            'crw-rw-rw- 0/0 1, 3 2024-01-01 00:00 squashfs-root/dev/null')
        e = self.assertRaises(stream.UnsafeImage, squashfs.list_entries,
                              image)
        self.assertIn('line break', str(e))

    def test_not_a_squashfs(self):
        path = os.path.join(self.dir, 'garbage')
        with open(path, 'wb') as f:
            f.write(b'hsqs' + b'\0' * 4092)
        e = self.assertRaises(stream.UnsafeImage, squashfs.list_entries,
                              path)
        self.assertIn('corrupt or truncated (unsquashfs: ', str(e))


@ddt.ddt
class ParseListingTest(base.BaseTestCase):

    PREFIX = '/@abc'
    ROOT = 'drwxr-xr-x 0/0                      37 2024-01-01 00:00 /@abc'

    def parse(self, *lines, banner=()):
        text = '\n'.join(list(banner) + [self.ROOT] + list(lines)) + '\n'
        return squashfs.parse_listing(text, self.PREFIX)

    def test_banner_before_root_skipped(self):
        self.assertEqual(
            [entry('x', size=3)],
            self.parse('-rw-r--r-- 0/0 3 2024-01-01 00:00 /@abc/x',
                       banner=['Parallel unsquashfs: Using 2 processors',
                               '1 inodes (1 blocks) to write']))

    def test_long_ids_leave_no_padding(self):
        # With 25 characters of ids, the size follows after one space.
        line = ('-rw-r--r-- 1234567890123/123456789012 7 2024-01-01 00:00 '
                '/@abc/f')
        self.assertEqual([entry('f', uid=1234567890123, gid=123456789012,
                                size=7)], self.parse(line))

    def test_device_numbers(self):
        line = 'crw-rw-rw- 0/0            136,  12 2024-01-01 00:00 /@abc/d'
        self.assertEqual(
            [E('c', 'd', 0, 0, 0, '136', '12', None)], self.parse(line))

    @ddt.data(
        # a forged line with the default prefix, after a name's line break
        '-rw-r--r-- 0/0 3 2024-01-01 00:00 squashfs-root/x',
        # the rest of a name
        'rest of a name',
        # an empty line in the middle
        '',
    )
    def test_unexpected_line_refused(self, line):
        self.assertRaises(
            stream.UnsafeImage, self.parse,
            '-rw-r--r-- 0/0 3 2024-01-01 00:00 /@abc/a', line,
            '-rw-r--r-- 0/0 3 2024-01-01 00:00 /@abc/b')

    def test_no_root_refused(self):
        self.assertRaises(stream.UnsafeImage, squashfs.parse_listing,
                          'nothing\n', self.PREFIX)


@ddt.ddt
class CheckEntriesTest(base.BaseTestCase):

    def test_counts_files_and_bytes(self):
        self.assertEqual((3, 15), squashfs.check_entries(
            [entry('a', size=5), entry('d', kind='d', size=100),
             entry('d/b', size=10)], UNPRIVILEGED))

    @ddt.unpack
    @ddt.data(
        ([entry('a/../b')], 'unsafe path'),
        ([entry('a/./b')], 'unsafe path'),
        ([entry('a'), entry('a', kind='l')], 'appears twice'),
        ([entry('dev/sda', kind='b')], 'device node'),
        ([entry('dev/mem', kind='c')], 'device node'),
        ([entry('null', kind='c')], 'device node'),
        ([entry('x/dev/null', kind='c')], 'device node'),
        ([entry('dev/null', kind='b')], 'device node'),
        ([entry('f', uid=65536)], 'outside the guest'),
        ([entry('f', gid=70000)], 'outside the guest'),
        ([entry('f', uid=-2)], 'owned by 4294967294:0'),
    )
    def test_refused(self, entries, reason):
        e = self.assertRaises(stream.UnsafeImage, squashfs.check_entries,
                              entries, UNPRIVILEGED)
        self.assertIn(reason, str(e))

    def test_standard_devices_allowed(self):
        entries = [entry('dev/' + name, kind='c')
                   for name in sorted(stream.STANDARD_DEVICES)]
        self.assertEqual((len(entries), 0),
                         squashfs.check_entries(entries, UNPRIVILEGED))

    def test_privileged_guest_takes_any_id(self):
        self.assertEqual((1, 0), squashfs.check_entries(
            [entry('f', uid=70000, gid=5)], PRIVILEGED))

    def test_cap_on_file_bytes(self):
        target = UNPRIVILEGED.replace(max_bytes=1 << 20)
        squashfs.check_entries([entry('a', size=1 << 20)], target)
        e = self.assertRaises(stream.UnsafeImage, squashfs.check_entries,
                              [entry('a', size=1 << 20), entry('b', size=1)],
                              target)
        self.assertIn('more than 1 MiB', str(e))


class SuperblockTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'image')

    def write(self, major=4, used=4096, length=4096, offset=0):
        block = bytearray(length)
        block[offset:offset + 4] = b'hsqs'
        struct.pack_into('<H', block, offset + 28, major)
        struct.pack_into('<Q', block, offset + 40, used)
        with open(self.path, 'wb') as f:
            f.write(block)

    def test_detect(self):
        self.assertTrue(squashfs.detect(b'hsqs\0\0', self.path))
        self.assertFalse(squashfs.detect(b'sqsh\0\0', self.path))

    def test_whole(self):
        self.write()
        squashfs._check_superblock(self.path, 0, None)

    def test_truncated(self):
        self.write(used=8192)
        e = self.assertRaises(stream.UnsafeImage,
                              squashfs._check_superblock, self.path, 0, None)
        self.assertIn('truncated: its superblock says 8192 bytes, only 4096',
                      str(e))

    def test_in_place_length_counts(self):
        # A squashfs inside a tar: its member's length, not the file's.
        self.write(used=4096, length=8192, offset=512)
        e = self.assertRaises(stream.UnsafeImage,
                              squashfs._check_superblock, self.path, 512,
                              2048)
        self.assertIn('4096 bytes, only 2048', str(e))
        squashfs._check_superblock(self.path, 512, 4096)

    def test_not_a_superblock(self):
        self.write(offset=512)
        e = self.assertRaises(stream.UnsafeImage,
                              squashfs._check_superblock, self.path, 0, None)
        self.assertIn('not a squashfs', str(e))

    def test_old_version(self):
        self.write(major=3)
        e = self.assertRaises(stream.UnsafeImage,
                              squashfs._check_superblock, self.path, 0, None)
        self.assertIn('version 3', str(e))
