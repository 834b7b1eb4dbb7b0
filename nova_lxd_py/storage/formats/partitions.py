"""Partition tables and file system signatures, read from a disk image.

Pure Python on the image's bytes: nothing here asks the kernel, so a
hostile image is judged before any of it reaches a loop device or a file
system driver. MBR primary partitions and GPT are read; the logical
partitions inside an MBR extended partition are not (they are reported so
that the caller can say so). Every partition must lie inside the image: a
table that points past its end is a truncated or corrupt image and is
refused, never clamped.
"""

import dataclasses
import struct
import uuid
import zlib

from nova_lxd_py.storage.formats import stream

SECTOR = 512
MBR_SIGNATURE = b'\x55\xaa'
GPT_SIGNATURE = b'EFI PART'
GPT_MAX_ENTRIES = 4096
GPT_MAX_ENTRY_SIZE = 4096

# File systems that can become a root file system (mounted read-only).
MOUNTABLE = ('ext2', 'ext3', 'ext4', 'xfs', 'btrfs')

MBR_PROTECTIVE = 0xee
MBR_EXTENDED = (0x05, 0x0f, 0x85)
MBR_TYPES = {
    0x82: 'Linux swap', 0x83: 'Linux', 0x8e: 'Linux LVM', 0xef: 'EFI system',
    0xfd: 'Linux RAID', 0x05: 'extended', 0x0f: 'extended',
    0x85: 'extended', 0xee: 'GPT protective',
}
GPT_TYPES = {
    'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'EFI system',
    '21686148-6449-6e6f-744e-656564454649': 'BIOS boot',
    '0fc63daf-8483-4772-8e79-3d69d8477de4': 'Linux',
    '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'Linux root (x86-64)',
    'b921b045-1df0-41c3-af44-4c6f280d3fae': 'Linux root (ARM64)',
    'bc13c2ff-59e6-4262-a352-b275fd6f7172': 'Linux extended boot',
    '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'Linux swap',
    'e6d6d379-f507-44c2-a23c-238f2a3df928': 'Linux LVM',
    'a19d880f-05fc-4d3b-a006-743f0f84911e': 'Linux RAID',
}
# Partitions that only a machine's firmware or bootloader uses.
BOOT_TYPES = ('EFI system', 'BIOS boot', 'Linux extended boot')

_MBR_ENTRY = struct.Struct('<B3sB3sII')
_GPT_HEADER = struct.Struct('<8sIIIIQQQQ16sQIII')
_GPT_ENTRY = struct.Struct('<16s16sQQQ72s')


@dataclasses.dataclass
class Partition:
    """One partition (or, number None, a file system on the whole disk).

    ``start`` and ``size`` are in bytes from the start of the image.
    """
    number: object
    start: int
    size: int
    kind: str = ''        # 'EFI system', 'Linux', ... or the raw type id
    label: str = ''       # the GPT partition name

    def describe(self):
        if self.number is None:
            return 'the whole disk'
        what = 'partition %d' % self.number
        if self.kind:
            what += ' (%s)' % self.kind
        return what


@dataclasses.dataclass
class FileSystem:
    """What a partition's first bytes say it holds."""
    type: str             # 'ext4', 'xfs', 'vfat', ... or '' if unknown
    size: int = 0         # bytes the file system says it spans, 0: unknown

    @property
    def mountable(self):
        return self.type in MOUNTABLE


def _read(f, offset, length):
    f.seek(offset)
    return f.read(length)


# -- partition tables ------------------------------------------------------

def _mbr_entries(sector):
    return [_MBR_ENTRY.unpack_from(sector, 446 + 16 * i) for i in range(4)]


def has_mbr(head):
    """True if ``head`` starts with an MBR (plain or GPT-protective).

    The 0x55AA signature alone is also in FAT boot sectors and by chance in
    other data; the four entries must also look like partition entries:
    a boot flag of 0x00 or 0x80, and at least one used entry.
    """
    if len(head) < SECTOR or head[510:512] != MBR_SIGNATURE:
        return False
    used = 0
    for status, _, kind, _, start, count in _mbr_entries(head):
        if status not in (0x00, 0x80):
            return False
        if kind:
            if not count:
                return False
            used += 1
    return used > 0


def _mbr(sector):
    found = []
    for index, (_, _, kind, _, start, count) in enumerate(
            _mbr_entries(sector)):
        if not kind:
            continue
        found.append(Partition(
            number=index + 1, start=start * SECTOR, size=count * SECTOR,
            kind=MBR_TYPES.get(kind, 'type 0x%02x' % kind)))
    return found


def _gpt_guid(raw):
    return str(uuid.UUID(bytes_le=raw))


def _gpt_sector_size(f):
    """512 or 4096: where the GPT header is (LBA 1)."""
    for size in (SECTOR, 4096):
        if _read(f, size, 8) == GPT_SIGNATURE:
            return size
    raise stream.UnsafeImage('its MBR announces a GPT but no GPT header '
                             'was found (corrupt partition table)')


def _gpt_header(f, sector, disk_size):
    raw = _read(f, sector, sector)
    if len(raw) < _GPT_HEADER.size:
        raise stream.UnsafeImage('its GPT header is truncated')
    (_, _, header_size, crc, _, my_lba, _, _, _, _, entries_lba, count,
     entry_size, entries_crc) = _GPT_HEADER.unpack_from(raw)
    if not _GPT_HEADER.size <= header_size <= sector:
        raise stream.UnsafeImage('its GPT header has an invalid size (%d)'
                                 % header_size)
    zeroed = raw[:16] + b'\0\0\0\0' + raw[20:header_size]
    if zlib.crc32(zeroed) != crc:
        raise stream.UnsafeImage('its GPT header is corrupt (checksum '
                                 'mismatch)')
    if my_lba != 1:
        raise stream.UnsafeImage('its primary GPT header says it is at '
                                 'LBA %d, not 1 (corrupt partition table)'
                                 % my_lba)
    if (count > GPT_MAX_ENTRIES or entry_size < _GPT_ENTRY.size
            or entry_size > GPT_MAX_ENTRY_SIZE or entry_size % 8):
        raise stream.UnsafeImage(
            'its GPT has %d entries of %d bytes (corrupt partition table)'
            % (count, entry_size))
    start = entries_lba * sector
    if entries_lba < 2 or start + count * entry_size > disk_size:
        raise stream.UnsafeImage('its GPT partition entries lie outside '
                                 'the image (corrupt or truncated)')
    return start, count, entry_size, entries_crc


def _gpt(f, disk_size):
    sector = _gpt_sector_size(f)
    start, count, entry_size, entries_crc = _gpt_header(f, sector,
                                                        disk_size)
    table = _read(f, start, count * entry_size)
    if zlib.crc32(table) != entries_crc:
        raise stream.UnsafeImage('its GPT partition entries are corrupt '
                                 '(checksum mismatch)')
    found = []
    for index in range(count):
        kind, _, first, last, _, name = _GPT_ENTRY.unpack_from(
            table, index * entry_size)
        if not any(kind):
            continue
        if last < first:
            raise stream.UnsafeImage(
                'GPT partition %d ends (LBA %d) before it starts (LBA %d)'
                % (index + 1, last, first))
        guid = _gpt_guid(kind)
        found.append(Partition(
            number=index + 1, start=first * sector,
            size=(last - first + 1) * sector,
            kind=GPT_TYPES.get(guid, guid),
            label=name.decode('utf-16-le', 'replace').split('\0', 1)[0]))
    return found


def _check_bounds(parts, disk_size):
    for part in parts:
        if part.start <= 0 or part.size <= 0:
            raise stream.UnsafeImage('%s starts at byte %d with %d bytes '
                                     '(corrupt partition table)'
                                     % (part.describe(), part.start,
                                        part.size))
        if part.start + part.size > disk_size:
            raise stream.UnsafeImage(
                '%s ends at byte %d, past the end of the image (%d bytes): '
                'the image is truncated or its partition table is corrupt'
                % (part.describe(), part.start + part.size, disk_size))


def table(f, disk_size):
    """('gpt' | 'mbr' | None, [Partition]) of the open image ``f``.

    With no partition table the list holds one Partition for the whole
    disk (number None), for a file system written straight to it.
    """
    head = _read(f, 0, SECTOR)
    if not has_mbr(head):
        return None, [Partition(number=None, start=0, size=disk_size)]
    entries = _mbr_entries(head)
    if any(kind == MBR_PROTECTIVE for _, _, kind, _, _, _ in entries):
        scheme, parts = 'gpt', _gpt(f, disk_size)
    else:
        scheme, parts = 'mbr', _mbr(head)
    _check_bounds(parts, disk_size)
    return scheme, parts


# -- file systems ------------------------------------------------------------

_EXT_MAGIC = b'\x53\xef'
# ext4 features an ext2/ext3 driver would not know (incompat / ro_compat).
_EXT4_INCOMPAT = ~(0x2 | 0x4 | 0x10) & 0xffffffff
_EXT4_RO_COMPAT = ~(0x1 | 0x2 | 0x4) & 0xffffffff
_EXT_JOURNAL_DEV = 0x8
_EXT_64BIT = 0x80


def _ext(sb):
    """ext2/3/4 from the superblock (the bytes at 1024)."""
    if len(sb) < 0x158 or sb[56:58] != _EXT_MAGIC:
        return None
    blocks_lo, = struct.unpack_from('<I', sb, 4)
    log_block, = struct.unpack_from('<I', sb, 24)
    compat, incompat, ro_compat = struct.unpack_from('<III', sb, 92)
    if incompat & _EXT_JOURNAL_DEV:
        return FileSystem('ext journal')
    if log_block > 6:
        return FileSystem('ext (corrupt superblock)')
    blocks = blocks_lo
    if incompat & _EXT_64BIT:
        blocks |= struct.unpack_from('<I', sb, 0x150)[0] << 32
    if incompat & _EXT4_INCOMPAT or ro_compat & _EXT4_RO_COMPAT:
        name = 'ext4'
    elif compat & 0x4:
        name = 'ext3'
    else:
        name = 'ext2'
    return FileSystem(name, blocks * (1024 << log_block))


def _xfs(head):
    if head[:4] != b'XFSB' or len(head) < 16:
        return None
    block_size, blocks = struct.unpack_from('>IQ', head, 4)
    return FileSystem('xfs', block_size * blocks)


def _btrfs(sb):
    if sb[0x40:0x48] != b'_BHRfS_M':
        return None
    total, = struct.unpack_from('<Q', sb, 0x70)
    devices, = struct.unpack_from('<Q', sb, 0x88)
    if devices != 1:
        return FileSystem('btrfs (%d devices)' % devices)
    return FileSystem('btrfs', total)


def _other(head):
    """Known but not mountable here, for the messages."""
    if head[:6] == b'LUKS\xba\xbe':
        return 'LUKS encrypted'
    if head[:4] == b'hsqs':
        return 'squashfs'
    if head[512:520] == b'LABELONE' and head[536:544] == b'LVM2 001':
        return 'LVM2 physical volume'
    if head[4086:4096] in (b'SWAPSPACE2', b'SWAP-SPACE'):
        return 'swap'
    if head[510:512] == MBR_SIGNATURE and (
            head[54:59] == b'FAT12' or head[54:59] == b'FAT16'
            or head[82:87] == b'FAT32'):
        return 'vfat'
    return None


def filesystem(f, start, size):
    """The FileSystem in the ``size`` bytes at ``start`` of image ``f``."""
    head = _read(f, start, min(size, 8192))
    found = _xfs(head) or _ext(head[1024:2048])
    if found is None and size >= 0x10000 + 0x1000:
        found = _btrfs(_read(f, start + 0x10000, 0x1000))
    if found is None:
        found = FileSystem(_other(head) or '')
    return found


def bare_filesystem(head, path):
    """A mountable file system type at the start of the image, or None.

    ``head`` is the image's first bytes; btrfs's superblock is at 64 KiB,
    so it is read from ``path`` when ``head`` is shorter.
    """
    found = _xfs(head) or _ext(head[1024:2048])
    if found is None:
        sb = head[0x10000:0x11000]
        if len(sb) < 0x100:
            with open(path, 'rb') as f:
                sb = _read(f, 0x10000, 0x1000)
        found = _btrfs(sb) if len(sb) >= 0x100 else None
    return found.type if found and found.mountable else None
