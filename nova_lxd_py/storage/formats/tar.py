"""Root file system tarballs: tar, tar.gz, tar.xz, tar.zst, tar.bz2.

The tarball is decompressed by its native tool and streamed through the
member checker into GNU tar (see :mod:`stream`).
"""

from nova_lxd_py.storage.formats import stream

NAME = 'tarball'
DISK_FORMATS = ('raw',)
CONTAINER_FORMATS = ('bare', 'compressed')


def is_tar(head):
    """True if ``head`` starts an uncompressed tar archive."""
    return len(head) >= 512 and head[257:262] == b'ustar'


def detect(head, path):
    """A (compressed) tarball; the more specific formats were tried first."""
    return is_tar(head) or stream.compression(head)[0] is not None


def unpack(archive, target, workdir):
    checker = stream.extract(target, archive=archive)
    return {'members': checker.members, 'tree_bytes': checker.bytes}
