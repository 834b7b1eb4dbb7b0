"""OCI image layouts and ``docker save`` archives, flattened into a rootfs.

The Glance blob is one tar (plain or compressed) holding either an OCI
image layout (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``) or a
``docker save`` archive (``manifest.json`` naming a config and layer tars;
docker 25 and later write both). Unpacking goes:

1. the outer tar is streamed through the member checker into a scratch
   directory (as root: nothing in it is ever run, only read);
2. the image for this host's architecture is chosen and every blob it uses
   is checked against its digest before anything reads it as a tar
   (:mod:`oci_manifest`);
3. each layer is streamed through the checker into its own scratch
   directory in the guest's user namespace (owners land shifted), then
   moved onto the root file system with renames: whiteouts first delete
   from the lower layers, then the layer's entries replace or merge into
   theirs. No step follows a symlink, so a layer cannot reach out of the
   tree through a link an earlier layer made (:mod:`oci_merge`).

An application image rarely has an init; a system container needs one, so
``[lxc] oci_init`` (a static binary, e.g. busybox) is copied in as its
/sbin/init when it has none. The image's own entrypoint is recorded in the
facts, not run.
"""

import os
import re
import shutil
import stat
import subprocess
import tarfile
import time

from oslo_log import log as logging

from nova_lxd_py import conf
from nova_lxd_py.storage.formats import oci_manifest
from nova_lxd_py.storage.formats import oci_merge
from nova_lxd_py.storage.formats import stream
from nova_lxd_py.storage.formats import tar as tarball
from nova_lxd_py.storage import rootfs

LOG = logging.getLogger(__name__)

NAME = 'oci'
DISK_FORMATS = ('raw',)
CONTAINER_FORMATS = ('docker', 'oci')

UnsafeImage = stream.UnsafeImage

# What may sit at the top of a layout or a docker-save archive (layers and
# configs named by digest: <hex>/layer.tar, <hex>.json, podman's <hex>.tar).
_TOP = re.compile(r'(oci-layout|index\.json|manifest\.json|repositories|'
                  r'blobs|[0-9a-f]{64}(\.json|\.tar)?)\Z')
_BLOB_NAME = re.compile(r'(blobs/sha(256|512)/[0-9a-f]+|[0-9a-f]{64}/layer'
                        r'\.tar|[0-9a-f]{64}\.tar)\Z')

DETECT_MEMBERS = 10000          # a layout has a handful of members
DETECT_BYTES = 64 << 20         # of a compressed archive, at most


# -- detect ----------------------------------------------------------------

class _Enough(Exception):
    """Detection read as far as it may."""


class _CappedReader:
    """A pipe that ends (as far as tarfile knows) after ``limit`` bytes."""

    def __init__(self, raw, limit):
        self.raw, self.left = raw, limit

    def read(self, size=-1):
        if self.left <= 0:
            raise _Enough()
        data = self.raw.read(min(size, self.left) if size >= 0 else
                             self.left)
        self.left -= len(data)
        return data


def _judge(members):
    """True if the member names are a layout's or a docker-save archive's.

    Any top-level name a layout does not have (a rootfs's ``etc``, an LXD
    image's ``metadata.yaml``) ends it at once. At the cap, blobs named by
    digest under an all-layout top level are enough.
    """
    keys, blobs = set(), False
    try:
        for count, member in enumerate(members):
            name = stream.normalise(member.name)
            if name == '.':
                continue
            if not _TOP.match(name.split('/', 1)[0]):
                return False
            if name in ('oci-layout', 'index.json', 'manifest.json'):
                keys.add(name)
            blobs = blobs or bool(_BLOB_NAME.match(name))
            if count >= DETECT_MEMBERS:
                raise _Enough()
    except _Enough:
        return bool(keys or blobs)
    except (tarfile.TarError, EOFError, ValueError, UnicodeError, OSError):
        return False
    return 'manifest.json' in keys or {'oci-layout', 'index.json'} <= keys


def detect(head, path):
    if tarball.is_tar(head):
        # Headers only: tarfile seeks over the members' data.
        try:
            with tarfile.open(path, 'r:') as tar:
                return _judge(iter(tar.next, None))
        except (tarfile.TarError, EOFError, ValueError, OSError):
            return False
    argv, _ = stream.compression(head)
    if argv is None:
        return False
    with open(path, 'rb') as f:
        proc = subprocess.Popen(argv, stdin=f, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        reader = _CappedReader(proc.stdout, DETECT_BYTES)
        try:
            tar = tarfile.open(fileobj=reader, mode='r|')
        except (tarfile.TarError, EOFError, _Enough):
            return False
        return _judge(tar)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# -- unpacking -------------------------------------------------------------

def _guest_dir(root, guest_path, uid, gid):
    """Host path of a guest directory, made (guest-owned) if missing."""
    path = rootfs.resolve_in_root(root, guest_path)
    if path is None:
        raise UnsafeImage('its %s is a symlink loop' % guest_path)
    here = root
    for part in filter(None, os.path.relpath(path, root).split('/')):
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here, 0o755)
            os.chown(here, uid, gid, follow_symlinks=False)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeImage('its %s is not a directory' % guest_path)
    return path


def _ensure_init(target):
    """False if the image has an init; True once [lxc] oci_init is in.

    An absolute link such as /sbin/init -> /bin/busybox resolves inside the
    guest's tree. A copy goes in as a file of the guest's root, never
    through a link; a dangling /sbin/init link is replaced.
    """
    init = rootfs.resolve_in_root(target.dest, '/sbin/init')
    if init is not None and os.path.isfile(init):
        return False
    source = conf.CONF.lxc.oci_init
    if not source:
        raise UnsafeImage('it has no /sbin/init and [lxc] oci_init is not '
                          'set, so it cannot boot as a system container')
    path = os.path.join(
        _guest_dir(target.dest, '/sbin', target.uid, target.gid), 'init')
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.lexists(path):
        raise UnsafeImage('its /sbin/init is not a file')
    try:
        src = open(source, 'rb')
    except OSError as e:
        raise UnsafeImage('it has no /sbin/init and [lxc] oci_init (%s) '
                          'cannot be read: %s' % (source, e.strerror))
    with src:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700)
        with os.fdopen(fd, 'wb') as dst:
            shutil.copyfileobj(src, dst, stream.CHUNK)
            os.fchown(fd, target.uid, target.gid)
            os.fchmod(fd, 0o755)
    LOG.info('%(label)s has no /sbin/init: %(init)s copied in as one',
             {'label': target.label, 'init': source})
    return True


def unpack(archive, target, workdir):
    started = time.monotonic()
    outer = stream.scratch(workdir, 'archive')
    # Uncompressed layers carry a header and padding per file on top of the
    # tree they hold; the cap on the tree itself applies when flattening.
    cap = target.max_bytes + target.max_bytes // 4
    stream.extract(stream.Target(dest=outer, max_bytes=cap,
                                 label='%s archive' % target.label),
                   archive=archive)
    image = oci_manifest.choose(outer)
    members, tree_bytes = oci_merge.flatten(image, target, workdir)
    shutil.rmtree(outer)
    facts = image.facts()
    facts.update(members=members, tree_bytes=tree_bytes,
                 injected_init=_ensure_init(target))
    LOG.info('%(label)s: %(source)s image with %(n)d layers flattened in '
             '%(s).1f s', {'label': target.label, 'source': image.source,
                           'n': len(image.layers),
                           's': time.monotonic() - started})
    return facts
