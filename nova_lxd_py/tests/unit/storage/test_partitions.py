"""Partition tables and file system signatures, on bytes crafted here.

The tables are built field by field after the MBR and UEFI specifications
(checksums included), so the parser is tested against the layouts, not
against another tool's output; the disks made by sfdisk and mkfs are the
functional tests' business.
"""

import io
import os
import random
import struct
import tarfile
import uuid
import zlib

import ddt
import fixtures
from oslotest import base

from nova_lxd_py.storage.formats import disk
from nova_lxd_py.storage.formats import partitions
from nova_lxd_py.storage.formats import stream

MIB = 1 << 20
LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4'
BIOS_BOOT = '21686148-6449-6e6f-744e-656564454649'
ESP = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b'


def mbr(entries, signature=b'\x55\xaa'):
    """512 bytes: entries are (status, type, first LBA, sectors)."""
    sector = bytearray(512)
    for i, (status, kind, start, count) in enumerate(entries):
        struct.pack_into('<B3sB3sII', sector, 446 + 16 * i, status,
                         b'\0\0\0', kind, b'\0\0\0', start, count)
    sector[510:512] = signature
    return bytes(sector)


def gpt(entries, disk_size, sector=512, count=128, entry_size=128,
        entries_lba=2, my_lba=1, header_crc=None, entries_crc=None):
    """A disk's first bytes: protective MBR, GPT header, 128 entries.

    ``entries`` are (type GUID, first LBA, last LBA, name). The other
    arguments override header fields (the table stays 128 x 128 bytes at
    LBA 2).
    """
    table = bytearray(128 * 128)
    for i, (kind, first, last, name) in enumerate(entries):
        struct.pack_into('<16s16sQQQ72s', table, i * 128,
                         uuid.UUID(kind).bytes_le, uuid.uuid4().bytes_le,
                         first, last, 0, name.encode('utf-16-le'))
    last_lba = disk_size // sector - 1
    header = bytearray(struct.pack(
        '<8sIIIIQQQQ16sQIII', b'EFI PART', 0x10000, 92, 0, 0, my_lba,
        last_lba, 34, last_lba - 33, uuid.uuid4().bytes_le, entries_lba,
        count, entry_size,
        zlib.crc32(table) if entries_crc is None else entries_crc))
    struct.pack_into('<I', header, 16, zlib.crc32(header)
                     if header_crc is None else header_crc)
    data = bytearray(mbr([(0, 0xee, 1, min(last_lba, 0xffffffff))]))
    data += bytes(sector - 512) + header + bytes(sector - len(header))
    return bytes(data + table)


class Disk:
    """A sparse disk image in memory: head bytes, then zeros to ``size``."""

    def __init__(self, head, size):
        self.buf = io.BytesIO(head)
        self.size = size

    def table(self):
        return partitions.table(self.buf, self.size)


def ext_superblock(compat=0, incompat=0, ro_compat=0, blocks=1024,
                   log_block=2, magic=b'\x53\xef'):
    """The 2048 first bytes of an ext2/3/4 file system."""
    sb = bytearray(1024)
    struct.pack_into('<I', sb, 4, blocks)
    struct.pack_into('<I', sb, 24, log_block)
    sb[56:58] = magic
    struct.pack_into('<III', sb, 92, compat, incompat, ro_compat)
    return bytes(1024) + bytes(sb)


def xfs_superblock(block_size=4096, blocks=81920):
    return b'XFSB' + struct.pack('>IQ', block_size, blocks) + bytes(500)


def btrfs_image(total=128 * MIB, devices=1):
    sb = bytearray(4096)
    sb[0x40:0x48] = b'_BHRfS_M'
    struct.pack_into('<Q', sb, 0x70, total)
    struct.pack_into('<Q', sb, 0x88, devices)
    return bytes(0x10000) + bytes(sb)


@ddt.ddt
class MBRTest(base.BaseTestCase):

    def test_primary_partitions(self):
        scheme, parts = Disk(mbr([(0x80, 0xef, 2048, 2048),
                                  (0, 0x83, 4096, 8192)]), 8 * MIB).table()
        self.assertEqual('mbr', scheme)
        self.assertEqual([(1, MIB, MIB, 'EFI system'),
                          (2, 2 * MIB, 4 * MIB, 'Linux')],
                         [(p.number, p.start, p.size, p.kind)
                          for p in parts])

    def test_empty_slots_keep_their_numbers(self):
        _, parts = Disk(mbr([(0, 0, 0, 0), (0, 0, 0, 0),
                             (0, 0x83, 2048, 2048)]), 2 * MIB).table()
        self.assertEqual([3], [p.number for p in parts])

    def test_extended_partition_is_listed_not_followed(self):
        _, parts = Disk(mbr([(0, 0x83, 2048, 2048),
                             (0, 0x05, 4096, 2048)]), 4 * MIB).table()
        self.assertEqual(['Linux', 'extended'], [p.kind for p in parts])

    def test_unknown_type_named_by_its_code(self):
        _, parts = Disk(mbr([(0, 0x07, 2048, 2048)]), 2 * MIB).table()
        self.assertEqual('type 0x07', parts[0].kind)

    @ddt.data(
        # (entries, disk size): the partition ends after the image
        ([(0, 0x83, 2048, 4096)], 2 * MIB),
        ([(0, 0x83, 2048, 2048), (0, 0x83, 4096, 0xffffffff)], 4 * MIB),
        ([(0, 0x83, 0xffffffff, 1)], 4 * MIB),
    )
    @ddt.unpack
    def test_partition_past_the_end_refused(self, entries, size):
        e = self.assertRaises(stream.UnsafeImage,
                              Disk(mbr(entries), size).table)
        self.assertIn('past the end of the image', str(e))

    def test_partition_over_the_table_refused(self):
        e = self.assertRaises(stream.UnsafeImage,
                              Disk(mbr([(0, 0x83, 0, 2048)]), MIB).table)
        self.assertIn('starts at byte 0', str(e))

    @ddt.data(
        mbr([(0, 0x83, 2048, 2048)], signature=b'\0\0'),
        mbr([(0x12, 0x83, 2048, 2048)]),            # not a boot flag
        mbr([]),                                     # no entry used
        mbr([(0, 0x83, 2048, 0)]),                   # an empty partition
        bytes(511),
    )
    def test_not_an_mbr(self, head):
        self.assertFalse(partitions.has_mbr(head))
        scheme, parts = Disk(head, 4 * MIB).table()
        self.assertIsNone(scheme)
        self.assertEqual([(None, 0, 4 * MIB)],
                         [(p.number, p.start, p.size) for p in parts])


@ddt.ddt
class GPTTest(base.BaseTestCase):

    ENTRIES = [(BIOS_BOOT, 2048, 4095, 'bios'),
               (LINUX, 4096, 16383, 'root')]

    def test_protective_mbr_leads_to_gpt(self):
        scheme, parts = Disk(gpt(self.ENTRIES, 8 * MIB), 8 * MIB).table()
        self.assertEqual('gpt', scheme)
        self.assertEqual(
            [(1, MIB, MIB, 'BIOS boot', 'bios'),
             (2, 2 * MIB, 6 * MIB, 'Linux', 'root')],
            [(p.number, p.start, p.size, p.kind, p.label) for p in parts])

    def test_numbers_are_entry_slots(self):
        entries = [('00000000-0000-0000-0000-000000000000', 0, 0, ''),
                   (ESP, 2048, 4095, 'esp')]
        _, parts = Disk(gpt(entries, 4 * MIB), 4 * MIB).table()
        self.assertEqual([(2, 'EFI system')],
                         [(p.number, p.kind) for p in parts])

    def test_unknown_type_named_by_its_guid(self):
        kind = '11111111-2222-3333-4444-555555555555'
        _, parts = Disk(gpt([(kind, 2048, 4095, '')], 4 * MIB),
                        4 * MIB).table()
        self.assertEqual(kind, parts[0].kind)

    def test_4k_sectors(self):
        entries = [(LINUX, 256, 1023, 'root')]     # 1 MiB to 4 MiB
        _, parts = Disk(gpt(entries, 8 * MIB, sector=4096),
                        8 * MIB).table()
        self.assertEqual([(MIB, 3 * MIB)], [(p.start, p.size)
                                            for p in parts])

    @ddt.data(
        # (gpt() arguments, reason)
        ({'entries': [(LINUX, 4096, 32767, 'root')]}, 'past the end'),
        ({'entries': [(LINUX, 4096, 2 ** 63, 'root')]}, 'past the end'),
        ({'entries': [(LINUX, 8000, 4096, 'root')]}, 'before it starts'),
        ({'header_crc': 1}, 'GPT header is corrupt'),
        ({'entries_crc': 1}, 'entries are corrupt'),
        ({'count': 2 ** 31}, 'corrupt partition table'),
        ({'entry_size': 64}, 'corrupt partition table'),
        ({'entry_size': 2 ** 31}, 'corrupt partition table'),
        ({'entries_lba': 1}, 'outside the image'),
        ({'entries_lba': 2 ** 60}, 'outside the image'),
        ({'my_lba': 5}, 'not 1'),
    )
    @ddt.unpack
    def test_corrupt_gpt_refused(self, kw, reason):
        kw.setdefault('entries', self.ENTRIES)
        size = 8 * MIB
        head = gpt(disk_size=size, **kw)
        e = self.assertRaises(stream.UnsafeImage, Disk(head, size).table)
        self.assertIn(reason, str(e))

    def test_protective_mbr_without_gpt_refused(self):
        head = mbr([(0, 0xee, 1, 16383)]) + bytes(8192)
        e = self.assertRaises(stream.UnsafeImage,
                              Disk(head, 8 * MIB).table)
        self.assertIn('no GPT header', str(e))

    def test_truncated_table_refused(self):
        head = gpt(self.ENTRIES, 8 * MIB)
        e = self.assertRaises(stream.UnsafeImage,
                              Disk(head[:3 * 512], 3 * 512).table)
        self.assertIn('outside the image', str(e))

    def test_mangled_tables_refused_or_in_bounds(self):
        """Random damage to a GPT: refused or parsed, never a crash, and
        never a partition outside the image."""
        rng = random.Random(4)
        size = 8 * MIB
        good = gpt(self.ENTRIES, size)
        for _ in range(400):
            head = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                head[rng.randrange(len(head))] = rng.randrange(256)
            if rng.random() < 0.5:      # past the checksums, at the checks
                table = head[1024:1024 + 128 * 128]
                struct.pack_into('<I', head, 512 + 88, zlib.crc32(table))
                struct.pack_into('<I', head, 512 + 16, 0)
                struct.pack_into('<I', head, 512 + 16,
                                 zlib.crc32(head[512:512 + 92]))
            try:
                _, parts = Disk(bytes(head), size).table()
            except stream.UnsafeImage:
                continue
            for part in parts:
                self.assertGreater(part.start, 0)
                self.assertLessEqual(part.start + part.size, size)


@ddt.ddt
class FileSystemTest(base.BaseTestCase):

    @ddt.data(
        (ext_superblock(), 'ext2', 4 * MIB),
        (ext_superblock(compat=0x4), 'ext3', 4 * MIB),
        (ext_superblock(compat=0x4, incompat=0x2c2), 'ext4', 4 * MIB),
        (ext_superblock(ro_compat=0x400), 'ext4', 4 * MIB),
        (xfs_superblock(), 'xfs', 320 * MIB),
        (btrfs_image(), 'btrfs', 128 * MIB),
    )
    @ddt.unpack
    def test_mountable(self, head, name, size):
        fs = partitions.filesystem(io.BytesIO(head), 0, 512 * MIB)
        self.assertEqual((name, size, True), (fs.type, fs.size,
                                              fs.mountable))

    def test_ext4_64bit_size(self):
        head = bytearray(ext_superblock(incompat=0x80, blocks=0))
        struct.pack_into('<I', head, 1024 + 0x150, 1)
        fs = partitions.filesystem(io.BytesIO(bytes(head)), 0, 2 ** 45)
        self.assertEqual(2 ** 32 * 4096, fs.size)

    def test_at_an_offset(self):
        head = bytes(MIB) + ext_superblock(compat=0x4)
        fs = partitions.filesystem(io.BytesIO(head), MIB, 4 * MIB)
        self.assertEqual('ext3', fs.type)

    @ddt.data(
        (b'LUKS\xba\xbe' + bytes(8000), 'LUKS encrypted'),
        (b'hsqs' + bytes(8000), 'squashfs'),
        (bytes(512) + b'LABELONE' + bytes(16) + b'LVM2 001' + bytes(8000),
         'LVM2 physical volume'),
        (bytes(4086) + b'SWAPSPACE2' + bytes(100), 'swap'),
        (bytes(82) + b'FAT32   ' + bytes(420) + b'\x55\xaa' + bytes(4000),
         'vfat'),
        (ext_superblock(incompat=0x8), 'ext journal'),
        (ext_superblock(log_block=40), 'ext (corrupt superblock)'),
        (btrfs_image(devices=2), 'btrfs (2 devices)'),
        (bytes(8192), ''),
    )
    @ddt.unpack
    def test_not_mountable(self, head, name):
        fs = partitions.filesystem(io.BytesIO(head), 0, 512 * MIB)
        self.assertEqual(name, fs.type)
        self.assertFalse(fs.mountable)

    def test_btrfs_not_looked_for_in_a_small_partition(self):
        fs = partitions.filesystem(io.BytesIO(btrfs_image()), 0, 0x10000)
        self.assertEqual('', fs.type)

    def test_bare_btrfs_read_past_the_head(self):
        path = self.useFixture(fixtures.TempDir()).join('fs')
        with open(path, 'wb') as f:
            f.write(btrfs_image())
        # The format registry hands over the first 64 KiB only.
        self.assertEqual('btrfs', partitions.bare_filesystem(
            btrfs_image()[:65536], path))


@ddt.ddt
class DetectTest(base.BaseTestCase):
    """disk.detect claims disks, and nothing the other formats own."""

    def setUp(self):
        super().setUp()
        self.path = self.useFixture(fixtures.TempDir()).join('image')

    def detect(self, head):
        with open(self.path, 'wb') as f:
            f.write(head)
        return disk.detect(head[:65536], self.path)

    @ddt.data(
        mbr([(0, 0x83, 2048, 2048)]),
        gpt(GPTTest.ENTRIES, 8 * MIB),
        ext_superblock(compat=0x4, incompat=0x2c2),
        xfs_superblock(),
        btrfs_image(),
    )
    def test_disks(self, head):
        self.assertTrue(self.detect(head))

    def _tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w') as t:
            t.addfile(tarfile.TarInfo('x'))
        return buf.getvalue()

    def test_tar_with_an_mbr_signature_not_claimed(self):
        head = bytearray(self._tar())
        head[446:512] = mbr([(0, 0x83, 2048, 2048)])[446:512]
        self.assertTrue(partitions.has_mbr(bytes(head)))
        self.assertFalse(self.detect(bytes(head)))

    @ddt.data(b'hsqs', b'QFI\xfb', b'\x1f\x8b', b'\xfd7zXZ\x00',
              b'\x28\xb5\x2f\xfd', b'BZh')
    def test_other_magic_with_an_mbr_signature_not_claimed(self, magic):
        head = magic + mbr([(0, 0x83, 2048, 2048)])[len(magic):]
        self.assertTrue(partitions.has_mbr(head))
        self.assertFalse(self.detect(head))

    def test_random_bytes_not_claimed(self):
        self.assertFalse(self.detect(random.Random(1).randbytes(70000)))


class RootMarkerTest(base.BaseTestCase):
    """/sbin/init and /etc/os-release are looked up inside the tree."""

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def make(self, path, link=None):
        host = os.path.join(self.root, path.lstrip('/'))
        os.makedirs(os.path.dirname(host), exist_ok=True)
        if link is None:
            open(host, 'w').close()
        else:
            os.symlink(link, host)

    def test_dangling_symlink_counts(self):
        self.make('/sbin/init', '/lib/systemd/systemd')
        self.assertEqual('', disk._root_subdir(self.root, 'ext4'))

    def test_absolute_directory_link_resolved_in_the_tree(self):
        # /sbin -> /usr/sbin must not reach the host's /usr/sbin/init.
        self.make('/sbin', '/usr/sbin')
        os.makedirs(os.path.join(self.root, 'usr', 'sbin'))
        self.assertIsNone(disk._root_subdir(self.root, 'ext4'))
        self.make('/usr/sbin/init')
        self.assertEqual('', disk._root_subdir(self.root, 'ext4'))

    def test_link_loop_is_no_root(self):
        self.make('/etc', '/etc')
        self.assertIsNone(disk._root_subdir(self.root, 'xfs'))

    def test_btrfs_root_subvolume(self):
        self.make('/@/etc/os-release')
        self.assertIsNone(disk._root_subdir(self.root, 'ext4'))
        self.assertEqual('@', disk._root_subdir(self.root, 'btrfs'))

    def test_kernels_and_os_name(self):
        self.make('/boot/vmlinuz-6.1.0-1-amd64')
        self.make('/boot/initrd.img-6.1.0-1-amd64')
        with open(os.path.join(self.root, 'etc-os-release'), 'w') as f:
            f.write('NAME=x\nPRETTY_NAME="Debian GNU/Linux 12"\n')
        self.make('/etc/os-release', '../etc-os-release')
        self.assertEqual(['vmlinuz-6.1.0-1-amd64'],
                         disk._kernels(self.root))
        self.assertEqual('Debian GNU/Linux 12', disk._os_name(self.root))

    def test_os_release_fifo_not_read(self):
        os.makedirs(os.path.join(self.root, 'etc'))
        os.mkfifo(os.path.join(self.root, 'etc', 'os-release'))
        self.assertIsNone(disk._os_name(self.root))
