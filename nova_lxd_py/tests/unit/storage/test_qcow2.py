"""qcow2 headers are judged before qemu-img ever opens the file.

Headers are crafted here after the qcow2 specification. ``prlimit`` and
``qemu-img`` on the PATH are stand-ins that record each call in a trace
file (and print what the test says): a refused header must leave no trace,
and the controls show that an acceptable one does reach them.
"""

import json
import os
import struct

import ddt
import fixtures
from oslotest import base

from nova_lxd_py.storage.formats import qcow2
from nova_lxd_py.storage.formats import stream

MIB = 1 << 20

FAKE_PRLIMIT = """#!/bin/sh
echo "prlimit $*" >> "$TRACE"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""
FAKE_QEMU_IMG = """#!/bin/sh
echo "qemu-img $*" >> "$TRACE"
if [ "$1" = convert ]; then
    for out; do :; done
    : > "$out"
fi
printf '%s' "$QEMU_IMG_OUTPUT"
exit "${QEMU_IMG_STATUS:-1}"
"""


def extension(kind, data):
    padded = data + bytes(-len(data) % 8)
    return struct.pack('>II', kind, len(data)) + padded


def header(version=3, backing=b'', crypt=0, incompat=0, cluster_bits=16,
           size=64 * MIB, header_length=104, extensions=(), end=True):
    """The first cluster of a qcow2 file."""
    cluster = bytearray(1 << min(cluster_bits, 16))
    backing_offset = 4096 if backing else 0
    struct.pack_into('>4sIQIIQIIQQIIQ', cluster, 0, b'QFI\xfb', version,
                     backing_offset, len(backing), cluster_bits, size,
                     crypt, 1, 0x30000, 0x10000, 1, 0, 0)
    pos = 72
    if version == 3:
        struct.pack_into('>QQQII', cluster, 72, incompat, 0, 0, 4,
                         header_length)
        pos = max(header_length, 104)
    for kind, data in extensions:
        ext = extension(kind, data)
        cluster[pos:pos + len(ext)] = ext
        pos += len(ext)
    if not end:     # no end marker: fill up to the end of the cluster
        while pos + 8 <= len(cluster):
            cluster[pos:pos + 8] = struct.pack('>II', 0x1234, 0)
            pos += 8
    if backing:
        cluster[4096:4096 + len(backing)] = backing
    return bytes(cluster)


@ddt.ddt
class HeaderTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        top = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(top, 'image.qcow2')
        self.trace = os.path.join(top, 'trace')
        self.workdir = os.path.join(top, 'work')
        os.mkdir(self.workdir)
        tools = os.path.join(top, 'bin')
        os.mkdir(tools)
        for name, script in (('prlimit', FAKE_PRLIMIT),
                             ('qemu-img', FAKE_QEMU_IMG)):
            with open(os.path.join(tools, name), 'w') as f:
                f.write(script)
            os.chmod(os.path.join(tools, name), 0o755)
        self.useFixture(fixtures.EnvironmentVariable('PATH', tools))
        self.useFixture(fixtures.EnvironmentVariable('TRACE', self.trace))
        self.target = stream.Target(dest=os.path.join(top, 'rootfs'),
                                    max_bytes=100 * MIB)

    def unpack(self, data):
        with open(self.path, 'wb') as f:
            f.write(data)
        return qcow2.unpack(self.path, self.target, self.workdir)

    def calls(self):
        if not os.path.exists(self.trace):
            return []
        with open(self.trace) as f:
            return f.read().splitlines()

    def refused(self, data, reason):
        e = self.assertRaises(stream.UnsafeImage, self.unpack, data)
        self.assertRegex(str(e), reason)
        self.assertEqual([], self.calls())
        self.assertEqual([], os.listdir(self.workdir))
        return e

    @ddt.data(
        (header(backing=b'/etc/shadow'),
         r"backing file \('/etc/shadow'\)"),
        (header(version=2, backing=b'/etc/shadow'),
         r"backing file \('/etc/shadow'\)"),
        (header(backing=b'nbd://host:10809/export'), 'backing file'),
        (header(incompat=qcow2.INCOMPAT_DATA_FILE,
                extensions=[(qcow2.EXT_DATA_FILE, b'/dev/sda')]),
         r"external data file \('/dev/sda'\)"),
        (header(incompat=qcow2.INCOMPAT_DATA_FILE), 'external data file'),
        # the extension alone, its feature bit cleared
        (header(extensions=[(qcow2.EXT_DATA_FILE, b'/etc/shadow')]),
         'external data file'),
        (header(crypt=1), r'encrypted \(qcow2 encryption method 1\)'),
        (header(crypt=2), 'encrypted'),
        (header(extensions=[(qcow2.EXT_ENCRYPTION, bytes(16))]),
         r'encrypted \(LUKS\)'),
        (header(incompat=1 << 5), r'unknown incompatible .*0x20'),
        (header(incompat=1 << 63 | qcow2.INCOMPAT_DIRTY),
         'unknown incompatible'),
        (header(incompat=qcow2.INCOMPAT_CORRUPT), 'marked it corrupt'),
        (header(version=1), 'version 1; only versions 2 and 3'),
        (header(version=4), 'version 4'),
        (header(cluster_bits=8), 'cluster bits 8'),
        (header(cluster_bits=40), 'cluster bits 40'),
        (header(header_length=100), 'header length 100'),
        (header(header_length=1 << 20), 'header length'),
        (header(extensions=[(0x1234, bytes(100000))]), 'runs past'),
        (header(end=False), 'no end marker'),
        (header()[:60], 'truncated'),
    )
    @ddt.unpack
    def test_refused_before_qemu_img(self, data, reason):
        self.refused(data, reason)

    def test_acceptable_header_reaches_qemu_img_limited_and_explicit(self):
        # The control: the same checks pass a good header, and qemu-img
        # runs under prlimit with the format given (never probed).
        e = self.assertRaises(stream.UnsafeImage, self.unpack, header())
        self.assertIn('qemu-img info failed', str(e))
        self.assertEqual(
            ['prlimit --as=1073741824 --cpu=30 -- qemu-img info -f qcow2 '
             '--output=json ' + self.path,
             'qemu-img info -f qcow2 --output=json ' + self.path],
            self.calls())

    @ddt.data(
        header(version=2),
        header(incompat=qcow2.INCOMPAT_DIRTY | qcow2.INCOMPAT_COMPRESSION),
        header(extensions=[(qcow2.EXT_BACKING_FORMAT, b'raw'),
                           (0x6803f857, bytes(48)), (0x1234, b'x')]),
        header(header_length=112),
    )
    def test_acceptable_headers(self, data):
        self.assertIn('qemu-img info failed', str(self.assertRaises(
            stream.UnsafeImage, self.unpack, data)))
        self.assertEqual(2, len(self.calls()))

    def info(self, **fields):
        info = {'format': 'qcow2', 'virtual-size': 64 * MIB,
                'format-specific': {'type': 'qcow2', 'data': {}}}
        info.update(fields)
        self.useFixture(fixtures.EnvironmentVariable(
            'QEMU_IMG_OUTPUT', json.dumps(info)))
        self.useFixture(fixtures.EnvironmentVariable('QEMU_IMG_STATUS',
                                                     '0'))

    @ddt.data(
        ({'backing-filename': '/etc/shadow'}, 'backing or data file'),
        ({'format-specific': {'data': {'data-file': '/x'}}},
         'backing or data file'),
        ({'encrypted': True}, 'encrypted'),
        ({'format': 'raw'}, 'reads it as raw'),
        ({'virtual-size': 101 * MIB}, r'virtual size \(101 MiB\) is more '
         r'than the 100 MiB allowed'),
    )
    @ddt.unpack
    def test_qemu_img_info_checked_too(self, fields, reason):
        self.info(**fields)
        e = self.assertRaises(stream.UnsafeImage, self.unpack, header())
        self.assertRegex(str(e), reason)
        self.assertEqual(2, len(self.calls()))     # info, not convert

    def test_check_errors_refused(self):
        self.info(**{'corruptions': 3, 'check-errors': 0})
        e = self.assertRaises(stream.UnsafeImage, self.unpack, header())
        self.assertIn('qemu-img check found 3 errors', str(e))
        self.assertIn('qemu-img check -f qcow2 --output=json ' + self.path,
                      self.calls())
        self.assertFalse([c for c in self.calls() if ' convert ' in c])

    def test_convert_given_the_format(self):
        self.info()
        e = self.assertRaises(stream.UnsafeImage, self.unpack, header())
        # The stand-in "converts" to nothing: no partition, no root.
        self.assertIn('no partition holds a root file system', str(e))
        self.assertIn('qemu-img convert -q -f qcow2 -O raw %s %s/disk.raw'
                      % (self.path, self.workdir), self.calls())
        self.assertFalse(os.path.exists(os.path.join(self.workdir,
                                                     'disk.raw')))
