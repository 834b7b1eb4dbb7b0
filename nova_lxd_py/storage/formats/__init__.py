"""Image formats: each Glance image becomes a guest's root file system.

A format module has:

``NAME``
    the format's name, as in ``[lxc] image_formats`` and in messages;
``DISK_FORMATS`` / ``CONTAINER_FORMATS``
    the Glance ``disk_format`` / ``container_format`` values it may be
    uploaded with (hints only: the bytes decide, a mismatch is refused);
``detect(head, path) -> bool``
    True if the file at ``path``, whose first bytes are ``head``, is one;
``unpack(archive, target, workdir) -> dict``
    fill ``target.dest`` (a :class:`stream.Target`) with the tree. It runs
    as root inside the privsep daemon; ``workdir`` is an empty scratch
    directory on the same file system, removed by the caller. It returns
    facts for the cache entry's meta.json (JSON-serialisable) and raises
    :class:`stream.UnsafeImage` with a reason for anything it refuses.

Formats are tried in ``FORMATS`` order: the more specific tarballs (LXD,
OCI) before plain root file system tarballs.
"""


from nova_lxd_py import privsep
from nova_lxd_py.storage.formats import disk
from nova_lxd_py.storage.formats import lxd
from nova_lxd_py.storage.formats import oci
from nova_lxd_py.storage.formats import qcow2
from nova_lxd_py.storage.formats import squashfs
from nova_lxd_py.storage.formats import stream
from nova_lxd_py.storage.formats import tar

HEAD_BYTES = stream.HEAD_BYTES

FORMATS = [qcow2, disk, squashfs, lxd, oci, tar]
UnsafeImage = stream.UnsafeImage


def by_name(name):
    for fmt in FORMATS:
        if fmt.NAME == name:
            return fmt
    raise KeyError(name)


def names():
    return [fmt.NAME for fmt in FORMATS]


def detect(path):
    """The format module for the file at ``path``, or None."""
    with open(path, 'rb') as f:
        head = f.read(HEAD_BYTES)
    for fmt in FORMATS:
        if fmt.detect(head, path):
            return fmt
    return None


def check_hints(fmt, disk_format, container_format):
    """UnsafeImage if Glance's formats say something else than the bytes."""
    if disk_format and disk_format not in fmt.DISK_FORMATS:
        raise UnsafeImage(
            'its bytes are a %s image but Glance says disk_format=%s '
            '(expected %s)' % (fmt.NAME, disk_format,
                               ' or '.join(fmt.DISK_FORMATS)))
    if container_format and container_format not in fmt.CONTAINER_FORMATS:
        raise UnsafeImage(
            'its bytes are a %s image but Glance says container_format=%s '
            '(expected %s)' % (fmt.NAME, container_format,
                               ' or '.join(fmt.CONTAINER_FORMATS)))


def disk_formats(enabled):
    """Glance disk formats that the enabled formats take."""
    return sorted({d for fmt in FORMATS if fmt.NAME in enabled
                   for d in fmt.DISK_FORMATS})


scratch = stream.scratch


@privsep.sys_admin_pctxt.entrypoint
def unpack(name: str, archive: str, dest: str, uid: int, gid: int,
           count: int, max_bytes: int, label: str, workdir: str) -> dict:
    """Unpack ``archive`` as format ``name`` into ``dest`` (privileged).

    ``dest`` and ``workdir`` are under the image cache (the caller's temp
    directory); see the module docstring for the rest.
    """
    target = stream.Target(dest=dest, uid=uid, gid=gid, count=count,
                           max_bytes=max_bytes, label=label)
    return by_name(name).unpack(archive, target, workdir)
