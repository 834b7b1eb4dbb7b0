"""What a tar stream holds, judged member by member as it goes past.

:mod:`stream` pipes every image's tar stream into GNU tar; this module is
what reads it on the way. :class:`Scanner` picks the headers out of the
bytes (skipping the data by offset) and hands each member to
:class:`Checker`, which refuses, with a reason an operator can act on:
absolute names, ``..``, writing or hard-linking through a symlink, hard
links that leave the tree, device nodes other than the standard ones under
/dev, ids outside the guest's range, and a tree larger than the cap.

Nothing here starts a process or writes a file: the plumbing around it is
in :mod:`stream`, which also re-exports the names the format modules use.
"""

import struct
import tarfile
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

PROGRESS_SECONDS = 10

# liblxc mounts its own /dev (lxc.autodev); these may be in an image's
# /dev and are skipped. Any other device node is refused.
STANDARD_DEVICES = frozenset((
    'console', 'full', 'null', 'ptmx', 'random', 'tty', 'urandom', 'zero',
))


class UnsafeImage(ValueError):
    """The image cannot become a root file system; str() says why."""


def normalise(name):
    while name.startswith('./'):
        name = name[2:]
    return name.rstrip('/') or '.'


class Checker:
    """Judges tar members one by one; see the module's docstring."""

    def __init__(self, target, prefix=''):
        self.target = target
        self.prefix = prefix          # where the rootfs is in the stream
        self.symlinks = set()
        self.bytes = 0
        self.members = 0
        self.started = time.monotonic()
        self._last_log = self.started

    def _through_symlink(self, path):
        if not self.symlinks:
            return False
        i = path.find('/')
        while i != -1:
            if path[:i] in self.symlinks:
                return True
            i = path.find('/', i + 1)
        return False

    def _standard_device(self, name, member):
        dev = self.prefix + 'dev/'
        return (member.ischr() and name.startswith(dev)
                and name[len(dev):] in STANDARD_DEVICES)

    def check(self, member):
        name = normalise(member.name)
        if name.startswith('/') or '..' in name.split('/'):
            raise UnsafeImage('member %r has an unsafe path' % member.name)
        if self._through_symlink(name) or (
                name in self.symlinks and not member.issym()):
            raise UnsafeImage('member %r is written through a symlink'
                              % name)
        if member.isdev():
            if not self._standard_device(name, member):
                raise UnsafeImage('member %r is a device node; images may '
                                  'only hold the standard ones in /dev'
                                  % name)
        if member.islnk():
            target = normalise(member.linkname)
            if (target.startswith('/') or '..' in target.split('/')
                    or self._through_symlink(target)
                    or target in self.symlinks):
                raise UnsafeImage('hard link %r -> %r leaves the tree'
                                  % (name, member.linkname))
        if member.issym():
            self.symlinks.add(name)
        if not self.target.privileged and (
                member.uid >= self.target.count
                or member.gid >= self.target.count):
            raise UnsafeImage('member %r is owned by %d:%d, outside the '
                              "guest's %d ids" % (name, member.uid,
                                                  member.gid,
                                                  self.target.count))
        self.members += 1
        if member.isreg():
            self.bytes += member.size
            cap = self.target.max_bytes
            if cap and self.bytes > cap:
                raise UnsafeImage(
                    'it unpacks to more than %d MiB, the most allowed (the '
                    "flavor's root disk or [lxc] max_unpacked_image_gb)"
                    % (cap >> 20))
        self.progress()

    def progress(self, force=False):
        now = time.monotonic()
        if force or now - self._last_log >= PROGRESS_SECONDS:
            self._last_log = now
            took = max(now - self.started, 1e-6)
            LOG.info('%(label)s: %(mib).0f MiB in %(n)d files unpacked in '
                     '%(s).1f s (%(rate).1f MiB/s)',
                     {'label': self.target.label, 'mib': self.bytes / 2**20,
                      'n': self.members, 's': took,
                      'rate': self.bytes / 2**20 / took})


_HEADER = struct.Struct('100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s')
_DEVICES = (tarfile.CHRTYPE, tarfile.BLKTYPE)
_NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE,
            tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)


def _number(field):
    if field[0] & 0x80:             # base-256, for big sizes and ids
        value = int.from_bytes(field[1:], 'big')
        return -value if field[0] == 0xff else value
    field = field.split(b'\0', 1)[0].strip()
    return int(field, 8) if field else 0


def _text(field):
    return field.split(b'\0', 1)[0].decode('utf-8', 'surrogateescape')


class Member:
    """The parts of a tar header that the checker judges."""

    __slots__ = ('name', 'linkname', 'type', 'size', 'uid', 'gid',
                 '_sparse_structs')

    def __init__(self, name, linkname, type, size, uid, gid):
        self.name, self.linkname, self.type = name, linkname, type
        self.size, self.uid, self.gid = size, uid, gid

    @classmethod
    def frombuf(cls, block):
        (name, _, uid, gid, size, _, chksum, kind, linkname, magic, _, _,
         _, _, _, prefix) = _HEADER.unpack_from(block)
        try:
            expected = _number(chksum)
            ok = expected == sum(block[:148]) + 256 + sum(block[156:])
            member = cls(_text(name), _text(linkname), kind, _number(size),
                         _number(uid), _number(gid))
        except ValueError:
            ok = False
        if not ok:
            raise tarfile.InvalidHeaderError('bad checksum')
        if magic == b'ustar\x00' and prefix[0]:
            member.name = _text(prefix) + '/' + member.name
        if kind == tarfile.AREGTYPE and member.name.endswith('/'):
            member.type = tarfile.DIRTYPE
        elif kind == tarfile.GNUTYPE_SPARSE:
            member._sparse_structs = (None, block[482], _number(
                block[483:495]))
        return member

    def isreg(self):
        return self.type in tarfile.REGULAR_TYPES

    def issym(self):
        return self.type == tarfile.SYMTYPE

    def islnk(self):
        return self.type == tarfile.LNKTYPE

    def ischr(self):
        return self.type == tarfile.CHRTYPE

    def isdev(self):
        return self.type in _DEVICES


class Scanner:
    """Reads tar headers out of a byte stream as it goes past.

    Python's tarfile in stream mode copies its buffer for every header and
    runs at a fraction of GNU tar's speed; this touches only the headers
    (ustar, GNU long names, pax, old GNU sparse) and skips data by offset.
    """

    MAX_EXTENDED = 1 << 20   # a longer name or pax header is hostile

    def __init__(self, checker):
        self.checker = checker
        self.buf = bytearray()
        self.skip = 0
        self.ext = {}
        self.glob = {}
        self.done = False
        self.fed = 0          # bytes fed so far
        self.eof_at = None    # offset of the end-of-archive block

    @property
    def checked(self):
        """Bytes from the start that were checked (or are checked data)."""
        if self.done:
            return self.eof_at
        return self.fed - len(self.buf)

    def jump(self):
        """Pass over pending data without reading it; the bytes passed."""
        n, self.skip = self.skip, 0
        self.fed += n
        return n

    def feed(self, chunk):
        if self.done:
            return
        self.fed += len(chunk)
        if self.skip >= len(chunk):
            self.skip -= len(chunk)
            return
        self.buf += memoryview(chunk)[self.skip:]
        self.skip = 0
        while not self.done and self._header():
            pass

    def _take(self, n):
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _header(self):
        """Consume one header (and its data if small); False: need more."""
        buf = self.buf
        if self.skip:
            n = min(self.skip, len(buf))
            del buf[:n]
            self.skip -= n
            if self.skip:
                return False
        if len(buf) < tarfile.BLOCKSIZE:
            return False
        if not any(buf[:tarfile.BLOCKSIZE]):
            self.done = True
            self.eof_at = self.fed - len(buf)
            return False
        info = Member.frombuf(bytes(buf[:tarfile.BLOCKSIZE]))
        padded = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                         tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE):
            if info.size > self.MAX_EXTENDED:
                raise UnsafeImage('an extended header of %d bytes'
                                  % info.size)
            if len(buf) < tarfile.BLOCKSIZE + padded:
                return False
            del buf[:tarfile.BLOCKSIZE]
            data = self._take(padded)[:info.size]
            self._extended(info.type, data)
            return True
        head = tarfile.BLOCKSIZE
        if info.type == tarfile.GNUTYPE_SPARSE:
            # Old GNU sparse: extension blocks follow while their flag
            # byte (504) says so; the header holds the real size.
            _, extended, info.size = info._sparse_structs
            while extended:
                if len(buf) < head + tarfile.BLOCKSIZE:
                    return False
                extended = buf[head + 504]
                head += tarfile.BLOCKSIZE
        stored = self._apply(info, padded)
        self.checker.check(info)
        del buf[:head]
        if info.type not in _NO_DATA:
            self.skip = stored
        return True

    def _extended(self, kind, data):
        if kind == tarfile.GNUTYPE_LONGNAME:
            self.ext['path'] = data.split(b'\0', 1)[0].decode(
                'utf-8', 'surrogateescape')
        elif kind == tarfile.GNUTYPE_LONGLINK:
            self.ext['linkpath'] = data.split(b'\0', 1)[0].decode(
                'utf-8', 'surrogateescape')
        else:
            into = self.glob if kind == tarfile.XGLTYPE else self.ext
            pos = 0
            while pos < len(data) and data[pos:pos + 1] != b'\0':
                space = data.index(b' ', pos)
                length = int(data[pos:space])
                if length <= 0:
                    raise UnsafeImage('a corrupt pax header')
                key, _, value = data[space + 1:pos + length - 1].partition(
                    b'=')
                into[key.decode('utf-8', 'surrogateescape')] = value.decode(
                    'utf-8', 'surrogateescape')
                pos += length

    def _apply(self, info, padded):
        """Apply pending extended headers; the padded bytes of data."""
        ext = dict(self.glob, **self.ext)
        self.ext = {}
        if 'GNU.sparse.name' in ext:
            ext['path'] = ext['GNU.sparse.name']
        for key, attr, conv in (('path', 'name', str),
                                ('linkpath', 'linkname', str),
                                ('size', 'size', int), ('uid', 'uid', int),
                                ('gid', 'gid', int)):
            if key in ext:
                setattr(info, attr, conv(ext[key]))
        if 'size' in ext:
            padded = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        for key in ('GNU.sparse.realsize', 'GNU.sparse.size'):
            if key in ext:
                info.size = int(ext[key])
                break
        return padded
