"""qcow2 disk images: converted to raw, then unpacked as a raw disk.

qemu-img follows what a qcow2 header names: a backing file or an external
data file can be any host path (``-b /etc/shadow``), which the conversion
would copy into the guest. So the header is parsed here first, and anything
that reaches outside the file, is encrypted or uses features this parser
does not know is refused before qemu-img ever opens it. qemu-img then runs
with the format given (``-f qcow2``, never probed): ``info`` and ``check``
under the limits Nova uses for ``qemu-img info`` (1 GiB of address space,
30 s of CPU), which also catch a truncated image, then ``convert`` to a
sparse raw file in the work directory, which :mod:`disk` unpacks.
"""

import json
import os
import struct
import subprocess
import time

from oslo_log import log as logging

from nova_lxd_py.storage.formats import disk
from nova_lxd_py.storage.formats import stream

LOG = logging.getLogger(__name__)

NAME = 'qcow2'
DISK_FORMATS = ('qcow2',)
CONTAINER_FORMATS = ('bare',)

MAGIC = b'QFI\xfb'
QEMU_IMG_LIMITS = ('prlimit', '--as=%d' % (1 << 30), '--cpu=30', '--')

_HEADER_V2 = struct.Struct('>4sIQIIQIIQQIIQ')      # 72 bytes
_HEADER_V3 = struct.Struct('>QQQII')               # 72..104
_EXTENSION = struct.Struct('>II')

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
INCOMPAT_KNOWN = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                  | INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2)

EXT_END = 0
EXT_BACKING_FORMAT = 0xe2792aca
EXT_ENCRYPTION = 0x0537be77
EXT_DATA_FILE = 0x44415441

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
NAME_SHOWN = 200          # characters of a hostile name put in a message


def detect(head, path):
    return head[:4] == MAGIC


def _name(raw):
    return repr(raw[:NAME_SHOWN].decode('utf-8', 'replace'))


def _extensions(cluster, start, end):
    """{type: data} of the header extensions between ``start`` and the end
    of the first cluster (``end``)."""
    found = {}
    pos = start
    while True:
        if pos + _EXTENSION.size > end:
            raise stream.UnsafeImage('its qcow2 header extensions are '
                                     'corrupt (no end marker)')
        kind, length = _EXTENSION.unpack_from(cluster, pos)
        if kind == EXT_END:
            return found
        pos += _EXTENSION.size
        if pos + length > end:
            raise stream.UnsafeImage('its qcow2 header extension 0x%08x '
                                     'is corrupt (runs past the header)'
                                     % kind)
        found[kind] = cluster[pos:pos + length]
        pos += (length + 7) & ~7


def check_header(path):
    """Refuse what qemu-img would follow outside the file; header facts.

    Reads the header and its extensions (all in the first cluster) as the
    qcow2 specification lays them out; never calls qemu-img.
    """
    with open(path, 'rb') as f:
        head = f.read(_HEADER_V2.size + _HEADER_V3.size)
        if len(head) < _HEADER_V2.size or head[:4] != MAGIC:
            raise stream.UnsafeImage('its qcow2 header is truncated')
        (_, version, backing_offset, backing_size, cluster_bits, size,
         crypt_method, _, _, _, _, _, _) = _HEADER_V2.unpack_from(head)
        if version not in (2, 3):
            raise stream.UnsafeImage('it is qcow2 version %d; only versions '
                                     '2 and 3 are supported' % version)
        if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
            raise stream.UnsafeImage('its qcow2 header is corrupt (cluster '
                                     'bits %d)' % cluster_bits)
        cluster_size = 1 << cluster_bits
        f.seek(0)
        cluster = f.read(cluster_size)
    if backing_offset:
        raw = cluster[backing_offset:backing_offset + min(backing_size,
                                                          1023)]
        raise stream.UnsafeImage(
            'it has a backing file (%s): images must be self-contained'
            % _name(raw))
    if crypt_method:
        raise stream.UnsafeImage('it is encrypted (qcow2 encryption method '
                                 '%d)' % crypt_method)
    incompat, header_length = 0, _HEADER_V2.size
    if version == 3:
        if len(cluster) < _HEADER_V2.size + _HEADER_V3.size:
            raise stream.UnsafeImage('its qcow2 header is truncated')
        incompat, _, _, _, header_length = _HEADER_V3.unpack_from(
            cluster, _HEADER_V2.size)
        if (header_length < _HEADER_V2.size + _HEADER_V3.size
                or header_length % 8 or header_length > len(cluster)):
            raise stream.UnsafeImage('its qcow2 header is corrupt (header '
                                     'length %d)' % header_length)
    extensions = _extensions(cluster, header_length, len(cluster))
    _check_features(incompat, extensions)
    return {'qcow2_version': version, 'cluster_size': cluster_size,
            'virtual_size': size}


def _check_features(incompat, extensions):
    if incompat & INCOMPAT_DATA_FILE or EXT_DATA_FILE in extensions:
        raise stream.UnsafeImage(
            'it keeps its data in an external data file (%s): images must '
            'be self-contained' % _name(extensions.get(EXT_DATA_FILE, b'')))
    if EXT_ENCRYPTION in extensions:
        raise stream.UnsafeImage('it is encrypted (LUKS)')
    if incompat & INCOMPAT_CORRUPT:
        raise stream.UnsafeImage('qemu marked it corrupt (qcow2 '
                                 'incompatible feature bit 1)')
    unknown = incompat & ~INCOMPAT_KNOWN
    if unknown:
        raise stream.UnsafeImage('it uses unknown incompatible qcow2 '
                                 'features (bits 0x%x)' % unknown)


def _qemu_img_json(argv, what, ok=(0,)):
    """JSON output of a limited qemu-img; its own errors as UnsafeImage."""
    proc = subprocess.run(list(QEMU_IMG_LIMITS) + argv,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = proc.stderr.decode('utf-8', 'replace').strip().splitlines()
    if proc.returncode not in ok:
        raise stream.UnsafeImage('%s failed: %s' % (
            what, err[-1] if err else 'exit status %d' % proc.returncode))
    try:
        return json.loads(proc.stdout), err
    except ValueError:
        raise stream.UnsafeImage('%s printed no JSON' % what)


def _check_info(path, target, header):
    info, _ = _qemu_img_json(
        ['qemu-img', 'info', '-f', 'qcow2', '--output=json', path],
        'qemu-img info')
    data = info.get('format-specific', {}).get('data', {})
    if info.get('format') != 'qcow2':
        raise stream.UnsafeImage('qemu-img reads it as %s, not qcow2'
                                 % info.get('format'))
    if 'backing-filename' in info or 'data-file' in data:
        raise stream.UnsafeImage('qemu-img found a backing or data file')
    if info.get('encrypted') or data.get('encrypt'):
        raise stream.UnsafeImage('it is encrypted')
    size = info.get('virtual-size', header['virtual_size'])
    if target.max_bytes and size > target.max_bytes:
        raise stream.UnsafeImage(
            'its virtual size (%d MiB) is more than the %d MiB allowed (the '
            "flavor's root disk or [lxc] max_unpacked_image_gb)"
            % (size >> 20, target.max_bytes >> 20))
    return size


def _check_consistency(path):
    """``qemu-img check``: catches tables pointing past a truncated end."""
    result, err = _qemu_img_json(
        ['qemu-img', 'check', '-f', 'qcow2', '--output=json', path],
        'qemu-img check', ok=(0, 2, 3))
    bad = result.get('corruptions', 0) + result.get('check-errors', 0)
    if bad:
        raise stream.UnsafeImage(
            'it is corrupt or truncated: qemu-img check found %d errors '
            '(%s)' % (bad, err[0] if err else 'no details'))


def unpack(archive, target, workdir):
    header = check_header(archive)
    size = _check_info(archive, target, header)
    _check_consistency(archive)
    raw = os.path.join(workdir, 'disk.raw')
    started = time.monotonic()
    stream.run(['qemu-img', 'convert', '-q', '-f', 'qcow2', '-O', 'raw',
                archive, raw], 'qemu-img convert')
    took = time.monotonic() - started
    LOG.info('%(label)s: qcow2 of %(mib)d MiB converted to raw in %(s).1f s',
             {'label': target.label, 'mib': size >> 20, 's': took})
    try:
        facts = disk.unpack_disk(raw, target, workdir)
    finally:
        os.unlink(raw)
    facts.update(header, virtual_size=size,
                 convert_seconds=round(took, 2))
    return facts
