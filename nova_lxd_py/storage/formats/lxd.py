"""LXD and Incus images: unified tarballs and split image bundles.

Unified image
    one tarball, plain or compressed with anything :mod:`stream` knows
    (gzip, xz, zstd, bzip2), holding ``metadata.yaml``, ``rootfs/`` (the
    guest's root) and optionally ``templates/``. LXD, Incus and
    distrobuilder write ``metadata.yaml`` first; it must be among the
    first few members, as that is how the image is recognised without
    decompressing all of it. The tarball is streamed through the member
    checker into a scratch directory in the guest's user namespace, then
    ``rootfs/`` is renamed into place.

Split image bundle
    LXD keeps most images as two files, a metadata tarball
    (``<fingerprint>.tar.xz``: ``metadata.yaml`` and ``templates/``) and a
    squashfs root file system (``<fingerprint>.squashfs``), which is what
    ``lxc image export`` writes. A Glance image is one file, so the two are
    uploaded tarred together::

        tar -cf bundle.tar <fingerprint>.tar.xz <fingerprint>.squashfs

    The bundle's top level holds exactly these two regular files, in
    either order, under any names: which is which is read from their
    bytes. A plain (uncompressed) bundle is best: the squashfs is already
    compressed, and it is then unpacked in place from the bundle, with no
    copy. A compressed bundle works too; its two files are copied out to
    the work directory first. The squashfs is checked and unpacked as in
    :mod:`squashfs`, the metadata tarball goes through the checker like a
    unified image.

metadata.yaml
    read and checked by :mod:`lxd_metadata` (this host's architecture,
    the templates applied on create or start), whose facts ``unpack``
    returns with the tree's ``members`` and ``tree_bytes``; the templates
    are rendered at spawn time by :mod:`lxd_templates`.
"""

import io
import os
import stat
import subprocess
import tarfile
import threading

from oslo_log import log as logging

from nova_lxd_py.storage.formats import lxd_metadata
from nova_lxd_py.storage.formats import squashfs
from nova_lxd_py.storage.formats import stream

LOG = logging.getLogger(__name__)

NAME = 'lxd'
DISK_FORMATS = ('raw',)
CONTAINER_FORMATS = ('bare', 'compressed')

HEAD_BYTES = 1 << 20        # decompressed bytes read to recognise an image
HEAD_MEMBERS = 8            # tar members looked at to recognise one
METADATA_TARBALL_MAX = 64 << 20
SQUASHFS_SLACK = 64 << 20   # a squashfs may outgrow the tree it holds

METADATA = lxd_metadata.METADATA
UNIFIED = 'unified'
SPLIT = 'split'


# -- recognising an image ---------------------------------------------------

def detect(head, path):
    return kind(head, path) is not None


def kind(head, path):
    """UNIFIED, SPLIT or None, from the start of the (decompressed) tar."""
    if not (_is_tar(head) or stream.compression(head)[0]):
        return None
    members = _head_members(_decompressed_head(path, head))
    for info, _ in members:
        if stream.normalise(info.name) == METADATA and info.isreg():
            return UNIFIED
    files = [(i, d) for i, d in members if stream.normalise(i.name) != '.']
    if not files:
        return None
    info, data = files[0]
    if not info.isreg() or '/' in stream.normalise(info.name):
        return None
    if data.startswith(squashfs.MAGIC) or _is_metadata_tarball(data):
        return SPLIT
    return None


def _is_tar(data):
    return len(data) >= 512 and data[257:262] == b'ustar'


def _decompressed_head(path, head, limit=HEAD_BYTES):
    """The first ``limit`` bytes of the file, decompressed if it is."""
    argv, _ = stream.compression(head)
    with open(path, 'rb') as f:
        if argv is None:
            return f.read(limit)
        return _head_of_output(argv, f, limit)


def _head_of_output(argv, source, limit):
    """The first ``limit`` bytes ``argv`` writes, fed ``source`` (a file
    or bytes); a truncated or corrupt input just gives fewer bytes."""
    feed = source if not isinstance(source, bytes) else subprocess.PIPE
    proc = subprocess.Popen(argv, stdin=feed, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    writer = None
    if feed is subprocess.PIPE:
        def write():
            try:
                proc.stdin.write(source)
                proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
    try:
        return proc.stdout.read(limit)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if writer is not None:
            writer.join()


def _head_members(data, count=HEAD_MEMBERS):
    """[(TarInfo, the part of its data in ``data``)] for the first members
    of the tar that ``data`` starts; fewer if ``data`` ends before."""
    if not _is_tar(data):
        return []
    found = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as tar:
            for info in tar:
                found.append((info, data[info.offset_data:
                                         info.offset_data + info.size]))
                if len(found) >= count:
                    break
    except (tarfile.TarError, EOFError, ValueError):
        pass
    return found


def _is_metadata_tarball(data):
    """True if ``data`` starts a (compressed) tar with metadata.yaml."""
    argv, _ = stream.compression(data)
    if argv is not None:
        data = _head_of_output(argv, data, HEAD_BYTES)
    return any(stream.normalise(i.name) == METADATA and i.isreg()
               for i, _ in _head_members(data))


# -- unpacking --------------------------------------------------------------

def unpack(archive, target, workdir):
    with open(archive, 'rb') as f:
        head = f.read(stream.HEAD_BYTES)
    found = kind(head, archive)
    if found == UNIFIED:
        return _unpack_unified(archive, head, target, workdir)
    if found == SPLIT:
        return _unpack_split(archive, target, workdir)
    raise stream.UnsafeImage('it is neither an LXD image tarball with '
                             'metadata.yaml first nor a split LXD image '
                             'bundle')


def _unpack_unified(archive, head, target, workdir):
    # metadata.yaml is near the start: refuse another architecture before
    # unpacking gigabytes. The one unpacked is read again: it is the last
    # of its name in the tarball, the one that counts.
    for info, data in _head_members(_decompressed_head(archive, head)):
        if (stream.normalise(info.name) == METADATA and info.isreg()
                and len(data) == info.size):
            lxd_metadata.parse_metadata(data)
            break
    scratch = target.replace(dest=stream.scratch(workdir, 'lxd-image'))
    checker = stream.extract(scratch, archive=archive, prefix='rootfs/')
    facts = lxd_metadata.read_metadata(scratch.dest)
    _move_rootfs(os.path.join(scratch.dest, 'rootfs'), target.dest)
    facts.update(members=checker.members, tree_bytes=checker.bytes)
    return facts


def _move_rootfs(rootfs, dest):
    """Rename the unpacked rootfs/ to ``dest`` (absent or empty)."""
    try:
        st = os.lstat(rootfs)
    except FileNotFoundError:
        raise stream.UnsafeImage('the LXD image has no rootfs/ directory '
                                 '(LXD virtual-machine images are not '
                                 'supported)')
    if not stat.S_ISDIR(st.st_mode):
        raise stream.UnsafeImage("the LXD image's rootfs is not a "
                                 'directory')
    if os.path.lexists(dest):
        os.rmdir(dest)
    os.rename(rootfs, dest)


def _unpack_split(archive, target, workdir):
    rootfs, metadata = _bundle_parts(archive, target, workdir)
    scratch = target.replace(dest=stream.scratch(workdir, 'lxd-metadata'))
    stream.extract(scratch, archive=metadata)
    facts = lxd_metadata.read_metadata(scratch.dest)
    path, offset, length = rootfs
    facts.update(squashfs.unpack_image(path, target, workdir, offset,
                                       length))
    return facts


def _bundle_parts(archive, target, workdir):
    """((squashfs path, offset, length), metadata tarball path).

    A plain bundle's squashfs is read in place; a compressed bundle is
    streamed and its two files copied out into ``workdir``.
    """
    with open(archive, 'rb') as f:
        argv, name = stream.compression(f.read(8))
    if argv is None:
        try:
            with tarfile.open(archive, 'r:') as tar:
                return _split_members(tar, target, workdir,
                                      in_place=archive)
        except (tarfile.TarError, EOFError) as e:
            raise stream.UnsafeImage('the bundle is corrupt or truncated '
                                     '(%s)' % e)
    with open(archive, 'rb') as f:
        proc = subprocess.Popen(argv, stdin=f, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode='r|') as tar:
            parts = _split_members(tar, target, workdir)
        # To the end, so that the decompressor checks its trailer.
        while proc.stdout.read(stream.CHUNK):
            pass
    except (tarfile.TarError, EOFError) as e:
        proc.kill()
        proc.wait()
        raise stream.UnsafeImage('the bundle is corrupt or truncated (%s)'
                                 % e)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    err = proc.stderr.read().decode(errors='replace').strip()
    proc.stderr.close()
    if proc.wait() != 0:
        raise stream.UnsafeImage('the %s data is corrupt or truncated (%s)'
                                 % (name, err.splitlines()[-1] if err
                                    else 'exit status %d'
                                    % proc.returncode))
    return parts


def _split_members(tar, target, workdir, in_place=None):
    """Walk the bundle's members, refusing anything but the two files."""
    rootfs = metadata = None
    try:
        for info in tar:
            member = stream.normalise(info.name)
            if member == '.' and info.isdir():
                continue
            if not info.isreg() or '/' in member or info.issparse():
                raise stream.UnsafeImage(
                    'a split LXD image bundle holds only a metadata tarball '
                    'and a squashfs, at its top level; %r is not one'
                    % info.name)
            data = tar.extractfile(info)
            start = data.read(4)
            if start == squashfs.MAGIC and rootfs is None:
                rootfs = _squashfs_part(info, data, target, workdir,
                                        in_place)
            elif metadata is None:
                metadata = _copy_out(data, info, start, workdir, 'metadata',
                                     METADATA_TARBALL_MAX)
            else:
                raise stream.UnsafeImage(
                    'a split LXD image bundle holds one metadata tarball '
                    'and one squashfs; %r is a third file' % info.name)
    except (tarfile.TarError, EOFError) as e:
        raise stream.UnsafeImage('the bundle is corrupt or truncated (%s)'
                                 % e)
    if rootfs is None or metadata is None:
        raise stream.UnsafeImage(
            'the split LXD image bundle has no %s'
            % ('squashfs (LXD virtual-machine images are not supported)'
               if rootfs is None else 'metadata tarball'))
    return rootfs, metadata


def _squashfs_part(info, data, target, workdir, in_place):
    if in_place:
        return in_place, info.offset_data, info.size
    cap = target.max_bytes and target.max_bytes + SQUASHFS_SLACK
    path = _copy_out(data, info, squashfs.MAGIC, workdir, 'rootfs.squashfs',
                     cap)
    return path, 0, None


def _copy_out(data, info, start, workdir, name, cap):
    """Copy a member's data (``start`` already read) into ``workdir``."""
    if cap and info.size > cap:
        raise stream.UnsafeImage('%r in the bundle is %d MiB, more than '
                                 'the %d MiB allowed'
                                 % (info.name, info.size >> 20, cap >> 20))
    path = os.path.join(workdir, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, 'wb') as out:
        out.write(start)
        while True:
            chunk = data.read(stream.CHUNK)
            if not chunk:
                break
            out.write(chunk)
    return path
