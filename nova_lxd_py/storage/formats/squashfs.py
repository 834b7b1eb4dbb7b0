"""Bare squashfs root file systems (also the rootfs half of a split LXD image).

A squashfs is judged before a byte of it is written: ``unsquashfs -lln``
lists every entry with its type, numeric owner and size from the metadata
alone (fast: no file data is decompressed), and the listing is refused for
the same reasons as a tar stream's members (see :mod:`stream`): names with
``..``, device nodes other than the standard character devices in /dev,
ids outside the guest's range, a tree larger than the cap (hard links
count once per name: the listing does not tell them apart). The listing
is read with an unguessable ``-d`` prefix, so a name or symlink target
holding a line break cannot forge an entry: the line after the break does
not parse, and the image is refused.

The tree is then written by ``unsquashfs`` itself, run as the guest's root
in a user namespace with the guest's id map: owners land shifted with no
chown pass, and unsquashfs can write nowhere the guest's root could not.
The standard /dev nodes cannot be made in a user namespace, and liblxc
mounts its own /dev anyway: they are left out with an exclude file
(``-exclude-file``, in squashfs-tools 4.5.1 and 4.6.1 alike).

What unsquashfs itself guarantees, and is relied on (squashfs-tools 4.5.1
or later; Debian 12 has 4.5.1, Debian 13 4.6.1): it refuses names that are
``.``, ``..`` or hold ``/`` ("invalid characters in name", CVE-2021-40153)
and directories with duplicate or unsorted names (the write-through-a-
symlink trick of CVE-2021-41072), both while listing as well as while
unpacking; it never follows a symlink of the image while writing, except
through such duplicates. The listing check repeats the ``..`` and
duplicate checks, and the user namespace bounds whatever slipped through.

Extended attributes are kept: in the user namespace ``user.*`` ones are
written as they are and ``security.capability`` becomes a namespaced
(v3) capability that holds in the guest. ``trusted.*`` and
``security.*`` others than capabilities need privileges on the host that
a user namespace lacks; unsquashfs stops at them, and the image is then
unpacked again without any extended attributes (logged).
"""

import collections
import os
import re
import secrets
import shutil
import struct
import subprocess
import tempfile

from oslo_log import log as logging

from nova_lxd_py.storage.formats import stream

LOG = logging.getLogger(__name__)

NAME = 'squashfs'
DISK_FORMATS = ('raw',)
CONTAINER_FORMATS = ('bare',)

MAGIC = b'hsqs'
# Superblock (little endian, version 4): magic at 0, s_major at 28,
# bytes_used (the file system's length) at 40.
_SUPERBLOCK = 96
_MAJOR = struct.Struct('<H')
_BYTES_USED = struct.Struct('<Q')

Entry = collections.namedtuple(
    'Entry', 'kind path uid gid size major minor link')

# One line of ``unsquashfs -lln -d PREFIX``: mode, uid/gid (some versions
# print them with %d: ids of 2**31 and more come out negative), size or
# major,minor, date, time, then the path and, for a symlink, " -> target".
_LINE = re.compile(
    r'(?P<kind>[-dlcbps])[-rwxsStT]{9} (?P<uid>-?\d+)/(?P<gid>-?\d+) +'
    r'(?:(?P<major>\d+), *(?P<minor>\d+)|(?P<size>\d+)) '
    r'-?\d+-\d+-\d+ \d+:\d+ (?P<rest>.*)\Z', re.S)


def detect(head, path):
    return head[:4] == MAGIC


def unpack(archive, target, workdir):
    return unpack_image(archive, target, workdir)


def unpack_image(path, target, workdir, offset=0, length=None):
    """Check, then unpack the squashfs at ``offset`` in ``path``.

    ``length`` is how many bytes from ``offset`` belong to it (the rest of
    the file if None): a squashfs inside a plain tar (a split LXD image) is
    read in place. Returns the facts for the cache entry.
    """
    _check_superblock(path, offset, length)
    _readable(path, target)
    entries = list_entries(path, offset)
    members, tree_bytes = check_entries(entries, target)
    _extract(path, target, workdir, offset)
    LOG.info('%(label)s: squashfs of %(mib).0f MiB in %(n)d files unpacked',
             {'label': target.label, 'mib': tree_bytes / 2**20,
              'n': members})
    return {'members': members, 'tree_bytes': tree_bytes}


def _check_superblock(path, offset, length):
    """Refuse a squashfs cut short before unsquashfs gets to its data.

    The listing reads only the metadata (at the end of the file system),
    so a squashfs truncated in its data would list fine and fail half
    unpacked; the superblock says how long it should be.
    """
    with open(path, 'rb') as f:
        f.seek(offset)
        block = f.read(_SUPERBLOCK)
        available = (os.fstat(f.fileno()).st_size - offset
                     if length is None else length)
    if len(block) < _SUPERBLOCK or block[:4] != MAGIC:
        raise stream.UnsafeImage('it is not a squashfs (no superblock)')
    major = _MAJOR.unpack_from(block, 28)[0]
    if major != 4:
        raise stream.UnsafeImage('it is a squashfs of version %d; only '
                                 'version 4 (Linux 2.6.29 and later) is '
                                 'supported' % major)
    used = _BYTES_USED.unpack_from(block, 40)[0]
    if used > available:
        raise stream.UnsafeImage(
            'the squashfs is truncated: its superblock says %d bytes, '
            'only %d are there' % (used, available))


def _readable(path, target):
    """Let the guest's root read the image it unpacks.

    The download is the cache's private temp file, in a directory that
    others may only pass through (0711); unsquashfs opens it by name from
    inside the user namespace, as "other".
    """
    if target.privileged:
        return
    mode = os.stat(path).st_mode
    if not mode & 0o004:
        os.chmod(path, (mode & 0o7777) | 0o004)


def list_entries(path, offset=0):
    """The squashfs's entries, from ``unsquashfs -lln`` (metadata only)."""
    prefix = '/@' + secrets.token_hex(16)
    argv = ['unsquashfs', '-lln', '-d', prefix]
    if offset:
        argv += ['-o', str(offset)]
    proc = subprocess.run(argv + [path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise stream.UnsafeImage('the squashfs is corrupt or truncated '
                                 '(unsquashfs: %s)' % _error(proc.stderr))
    return parse_listing(proc.stdout.decode('utf-8', 'surrogateescape'),
                         prefix)


def parse_listing(text, prefix):
    """Entries of an ``unsquashfs -lln -d PREFIX`` listing.

    Lines before the root's own (a tool's banner, if any) are skipped;
    from the root on, a line that does not parse, or names something
    outside ``prefix``, is refused: it is a name or a symlink target that
    holds a line break.
    """
    entries = []
    seen_root = False
    if text.endswith('\n'):
        text = text[:-1]
    for line in text.split('\n'):
        match = _LINE.match(line)
        rest = match.group('rest') if match else None
        if not seen_root:
            if rest == prefix and match.group('kind') == 'd':
                seen_root = True
            continue
        if not match or not rest.startswith(prefix + '/'):
            raise stream.UnsafeImage(
                'the squashfs has a name or symlink target with a line '
                'break (listing line %r)' % line[:200])
        kind = match.group('kind')
        name, link = rest[len(prefix) + 1:], None
        if kind == 'l':
            name, sep, link = name.partition(' -> ')
            if not sep:
                raise stream.UnsafeImage('unexpected listing line %r'
                                         % line[:200])
        entries.append(Entry(
            kind, name, int(match.group('uid')), int(match.group('gid')),
            int(match.group('size') or 0), match.group('major'),
            match.group('minor'), link))
    if not seen_root:
        raise stream.UnsafeImage('unsquashfs listed no root directory')
    return entries


def check_entries(entries, target):
    """(entries, bytes of file data); UnsafeImage for a hostile entry."""
    total = 0
    names = set()
    for entry in entries:
        parts = entry.path.split('/')
        if '..' in parts or '.' in parts or '' in parts:
            raise stream.UnsafeImage('squashfs entry %r has an unsafe path'
                                     % entry.path)
        if entry.path in names:
            raise stream.UnsafeImage('squashfs entry %r appears twice'
                                     % entry.path)
        names.add(entry.path)
        if entry.kind in 'cb' and not _standard_device(entry):
            raise stream.UnsafeImage(
                'squashfs entry %r is a device node; images may only hold '
                'the standard ones in /dev' % entry.path)
        if not target.privileged and not (
                0 <= entry.uid < target.count
                and 0 <= entry.gid < target.count):
            raise stream.UnsafeImage(
                "squashfs entry %r is owned by %d:%d, outside the guest's "
                '%d ids' % (entry.path, entry.uid % 2**32,
                            entry.gid % 2**32, target.count))
        if entry.kind == '-':
            total += entry.size
            if target.max_bytes and total > target.max_bytes:
                raise stream.UnsafeImage(
                    'it unpacks to more than %d MiB, the most allowed (the '
                    "flavor's root disk or [lxc] max_unpacked_image_gb)"
                    % (target.max_bytes >> 20))
    return len(entries), total


def _standard_device(entry):
    return (entry.kind == 'c' and entry.path.startswith('dev/')
            and entry.path[4:] in stream.STANDARD_DEVICES)


def _error(stderr):
    """The line of unsquashfs's errors that says what went wrong."""
    lines = stderr.decode(errors='replace').strip().splitlines()
    for words in ('FATAL ERROR', 'failed', 'corrupt'):
        for line in lines:
            if words in line:
                return line.replace('FATAL ERROR: ', '').strip()
    return lines[-1] if lines else 'no error message'


def _exclude_file(workdir):
    """The standard /dev nodes, for ``-exclude-file`` (checked already)."""
    fd, path = tempfile.mkstemp(prefix='squashfs-exclude-', dir=workdir)
    with os.fdopen(fd, 'w') as f:
        for name in sorted(stream.STANDARD_DEVICES):
            f.write('dev/%s\n' % name)
    os.chmod(path, 0o644)     # read by the guest's root
    return path


def _extract(path, target, workdir, offset):
    exclude = _exclude_file(workdir)
    argv = ['unsquashfs', '-f', '-q', '-n', '-d', target.dest,
            '-exclude-file', exclude]
    if offset:
        argv += ['-o', str(offset)]
    target.prepare()
    proc = _unsquashfs(target, argv, path)
    if proc.returncode != 0 and b'write_xattr' in proc.stderr:
        LOG.warning('%(label)s: its extended attributes cannot be written '
                    'for this guest (%(err)s); unpacking it without any',
                    {'label': target.label, 'err': _error(proc.stderr)})
        shutil.rmtree(target.dest)
        target.prepare()
        proc = _unsquashfs(target, argv + ['-no-xattrs'], path)
    if proc.returncode != 0:
        raise stream.UnsafeImage('unpacking the squashfs failed (%s)'
                                 % _error(proc.stderr))


def _unsquashfs(target, argv, path):
    return subprocess.run(target.userns(argv + [path]),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
