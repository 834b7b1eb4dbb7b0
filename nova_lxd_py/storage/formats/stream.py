"""Tar streams into a guest's root file system, checked on their way in.

Every image format ends here. A tarball is decompressed by its own native
tool; a disk image or a squashfs is read out as a tar stream or unpacked by
its native tool. A tar stream passes through the member checker on its way
into GNU tar, which writes the tree:

    decompressor | checker (this process) | [user namespace] tar -x

For an unprivileged guest GNU tar runs in a user namespace with the guest's
id map (``lxc-usernsexec``): owners land shifted with no chown pass, and
even a tar bug could only write where the guest's root may, never to host
files. The member checker and the header scanner that feeds it are in
:mod:`tar_scan` (what is refused, and why); this module is the plumbing:
the processes, the pipes between them and how their failures read.
"""

import dataclasses
import fcntl
import os
import queue
import subprocess
import tarfile
import threading

from nova_lxd_py.storage.formats import tar_scan

CHUNK = 1 << 20
HEAD_BYTES = 65536       # what format detection reads of an image
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)

# (magic, argv of the decompressor reading stdin, name for messages)
COMPRESSORS = (
    (b'\x1f\x8b', ('gzip', '-dc'), 'gzip'),
    (b'\xfd7zXZ\x00', ('xz', '-dc', '-T0'), 'xz'),
    (b'\x28\xb5\x2f\xfd', ('zstd', '-dcq'), 'zstd'),
    (b'BZh', ('bzip2', '-dc'), 'bzip2'),
)

# The checker's names, here too: the format modules use this module only.
# extract() makes its default checker from ``Checker`` as named here.
UnsafeImage = tar_scan.UnsafeImage
Checker = tar_scan.Checker
normalise = tar_scan.normalise
STANDARD_DEVICES = tar_scan.STANDARD_DEVICES


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
    scanner = tar_scan.Scanner(checker)
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
    scanner = tar_scan.Scanner(checker)
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
