"""Tar streams into a guest's root file system, checked on their way in.

Every image format ends here. A tarball is decompressed by its own native
tool; a disk image or a squashfs is read out as a tar stream or unpacked by
its native tool. A tar stream passes through the member checker on its way
into GNU tar, which writes the tree:

    decompressor | checker (this process) | [user namespace] tar -x

For an unprivileged guest GNU tar runs in a user namespace with the guest's
id map (``lxc-usernsexec``): owners land shifted with no chown pass, and
even a tar bug could only write where the guest's root may, never to host
files. The checker refuses, with a reason an operator can act on: absolute
names, ``..``, writing or hard-linking through a symlink, hard links that
leave the tree, device nodes other than the standard ones under /dev, ids
outside the guest's range, and a tree larger than the cap.
"""

import dataclasses
import fcntl
import os
import queue
import struct
import subprocess
import tarfile
import threading
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

CHUNK = 1 << 20
HEAD_BYTES = 65536       # what format detection reads of an image
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)
PROGRESS_SECONDS = 10

# (magic, argv of the decompressor reading stdin, name for messages)
COMPRESSORS = (
    (b'\x1f\x8b', ('gzip', '-dc'), 'gzip'),
    (b'\xfd7zXZ\x00', ('xz', '-dc', '-T0'), 'xz'),
    (b'\x28\xb5\x2f\xfd', ('zstd', '-dcq'), 'zstd'),
    (b'BZh', ('bzip2', '-dc'), 'bzip2'),
)

# liblxc mounts its own /dev (lxc.autodev); these may be in an image's
# /dev and are skipped. Any other device node is refused.
STANDARD_DEVICES = frozenset((
    'console', 'full', 'null', 'ptmx', 'random', 'tty', 'urandom', 'zero',
))


class UnsafeImage(ValueError):
    """The image cannot become a root file system; str() says why."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a tree goes and whose ids it gets.

    ``uid``/``gid`` are the host ids of the guest's root (0 for a privileged
    guest, which gets no user namespace); ``count`` ids are mapped.
    ``max_bytes`` caps the sum of file sizes (0: no cap).
    """
    dest: str
    uid: int = 0
    gid: int = 0
    count: int = 65536
    max_bytes: int = 0
    label: str = 'image'

    @property
    def privileged(self):
        return self.uid == 0 and self.gid == 0

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def userns(self, argv):
        """``argv`` run as the guest's root in a user namespace."""
        if self.privileged:
            return list(argv)
        return ['lxc-usernsexec',
                '-m', 'u:0:%d:%d' % (self.uid, self.count),
                '-m', 'g:0:%d:%d' % (self.gid, self.count),
                '--'] + list(argv)

    def prepare(self):
        """Make ``dest`` an empty directory that the guest's root owns.

        The user namespace reaches it as "other" through its parents, so
        they must be searchable (0711 at least).
        """
        os.makedirs(self.dest, mode=0o755, exist_ok=True)
        os.chown(self.dest, self.uid, self.gid)
        os.chmod(self.dest, 0o755)


def scratch(workdir, name):
    """A fresh directory under ``workdir``, searchable by user namespaces."""
    path = os.path.join(workdir, name)
    os.mkdir(path, 0o711)
    return path


def compression(head):
    """(decompressor argv, name) for these first bytes; (None, None)."""
    for magic, argv, name in COMPRESSORS:
        if head.startswith(magic):
            return argv, name
    return None, None


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


def _tar_x(target, prefix):
    argv = ['tar', '-x', '-f', '-', '-C', target.dest, '--numeric-owner',
            '--same-owner', '--same-permissions', '--no-overwrite-dir',
            '--anchored']
    # The standard devices are checked, then left to liblxc's own /dev.
    for dev in sorted(STANDARD_DEVICES):
        argv += ['--exclude=%sdev/%s' % (prefix, dev),
                 '--exclude=./%sdev/%s' % (prefix, dev)]
    return target.userns(argv)


def _widen_pipe(pipe):
    """Let a whole chunk sit in the pipe: fewer wake-ups between the
    checker and tar (the size is capped by /proc/sys/fs/pipe-max-size)."""
    try:
        fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass


def _stderr(proc):
    """The first error a tool printed (GNU tar ends with a summary line
    that says nothing); its exit status if it printed nothing."""
    lines = [line for line in proc.stderr.read().decode(
        errors='replace').splitlines()
        if line.strip() and 'Exiting with failure status' not in line]
    return lines[0].strip() if lines else 'exit status %s' % proc.returncode


def _kill(*procs):
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()


def extract(target, archive=None, producer=None, prefix='', checker=None):
    """Unpack a tar stream into ``target.dest`` (made by ``target.prepare``).

    The stream is the file ``archive`` (plain or compressed; compression is
    read from its first bytes) or the stdout of the command ``producer``.
    ``prefix`` says where the guest's root is inside the stream (e.g.
    ``rootfs/`` in an LXD image). Returns the Checker (bytes, members).
    """
    target.prepare()
    checker = checker or Checker(target, prefix)
    source_proc = None
    source_file = None
    what = 'the tar stream'
    try:
        if producer is not None:
            source_proc = subprocess.Popen(producer, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE)
            source = source_proc.stdout
            what = 'the image'
        else:
            with open(archive, 'rb') as f:
                argv, name = compression(f.read(8))
            source_file = open(archive, 'rb')
            if argv:
                what = 'the %s data' % name
                source_proc = subprocess.Popen(
                    argv, stdin=source_file, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
                source = source_proc.stdout
            else:
                source = source_file
        tar = subprocess.Popen(_tar_x(target, prefix), stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        _widen_pipe(tar.stdin)
        try:
            if source is source_file:
                _pump_file(source, tar, checker)
            else:
                _pump(source, tar, checker)
        except BrokenPipeError:
            _kill(source_proc)
            tar.wait()
            raise UnsafeImage('unpacking failed: %s' % _stderr(tar))
        except tarfile.TarError as e:
            _kill(tar, source_proc)
            raise UnsafeImage('%s is corrupt or truncated (%s)' % (what, e))
        except BaseException:
            _kill(tar, source_proc)
            raise
        finally:
            try:
                tar.stdin.close()
            except BrokenPipeError:
                pass
        if source_proc is not None and source_proc.wait() != 0:
            _kill(tar)
            raise UnsafeImage('%s is corrupt or truncated (%s)'
                              % (what, _stderr(source_proc)))
        if tar.wait() != 0:
            raise UnsafeImage('%s is corrupt or truncated (tar: %s)'
                              % (what, _stderr(tar)))
    finally:
        _kill(source_proc)
        if source_file is not None:
            source_file.close()
    checker.progress(force=True)
    return checker


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


class _Scanner:
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


# Where the archive ends for GNU tar: two zero blocks. Bytes after the
# first zero block are never checked, so they are never sent.
END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)
# Data runs longer than this are passed to tar without being read here.
JUMP = 64 << 10


def _writer(tar, source_fd):
    """A thread feeding tar's stdin from a queue; (queue, errors, thread).

    Items are bytes, or (offset, count) ranges of ``source_fd`` sent by the
    kernel (sendfile: no copy through this process). None ends it.
    """
    items = queue.Queue(maxsize=16)
    failed = []
    out = tar.stdin.fileno()

    def run():
        try:
            while True:
                item = items.get()
                if item is None:
                    return
                if isinstance(item, tuple):
                    offset, count = item
                    while count:
                        n = os.sendfile(out, source_fd, offset, count)
                        if not n:
                            raise tarfile.ReadError('unexpected end of data')
                        offset, count = offset + n, count - n
                else:
                    view = memoryview(item)
                    while view:
                        view = view[os.write(out, view):]
        except BaseException as e:   # reported by the reader
            failed.append(e)
            while items.get() is not None:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return items, failed, thread


def _stop(items, thread):
    items.put(None)
    thread.join()


def _finish(items, failed, thread, scanner, truncated):
    """Wait for the writer; raise what it met, or a truncated archive."""
    _stop(items, thread)
    if failed:
        raise failed[0]
    if truncated or not scanner.done and (scanner.buf or scanner.skip):
        raise tarfile.ReadError('unexpected end of data')


def _pump(source, tar, checker):
    """Copy a stream to tar's stdin, each chunk checked before it goes.

    A writer thread feeds tar while this one checks the next chunk, so the
    checker and GNU tar run side by side.
    """
    scanner = _Scanner(checker)
    items, failed, thread = _writer(tar, None)
    sent = 0
    try:
        while not failed:
            chunk = source.read(CHUNK)
            if not chunk:
                break
            if scanner.done:
                continue       # read to the end: the tool's exit is checked
            scanner.feed(chunk)
            if scanner.done:
                chunk = chunk[:scanner.eof_at - sent] + END_OF_ARCHIVE
            items.put(chunk)
            sent += len(chunk)
    except BaseException:
        _stop(items, thread)
        raise
    _finish(items, failed, thread, scanner, False)


def _pump_file(f, tar, checker):
    """The same for an uncompressed tar file, without reading its data.

    Headers are read with pread; the checked bytes go to tar by sendfile,
    in ranges that never reach past the last checked header.
    """
    fd = f.fileno()
    size = os.fstat(fd).st_size
    scanner = _Scanner(checker)
    items, failed, thread = _writer(tar, fd)
    pos = sent = 0
    try:
        while not failed and not scanner.done and pos < size:
            if scanner.skip >= JUMP and not scanner.buf:
                pos += scanner.jump()
            else:
                chunk = os.pread(fd, JUMP * 4, pos)
                if not chunk:
                    break
                scanner.feed(chunk)
                pos += len(chunk)
            checked = min(scanner.checked, size)
            if checked - sent >= CHUNK or scanner.done:
                items.put((sent, checked - sent))
                sent = checked
        if scanner.done:
            items.put(END_OF_ARCHIVE)
        elif not failed and sent < size:
            items.put((sent, size - sent))
    except BaseException:
        _stop(items, thread)
        raise
    _finish(items, failed, thread, scanner, pos > size)


def run(argv, what, **kw):
    """Run a helper tool; UnsafeImage with its last error line if it fails.

    Used by the format modules for qemu-img, unsquashfs, mount and such.
    """
    proc = subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, **kw)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors='replace').strip()
        raise UnsafeImage('%s failed: %s' % (
            what, err.splitlines()[-1] if err else
            'exit status %d' % proc.returncode))
    return proc.stdout
