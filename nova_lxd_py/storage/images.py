"""Glance image -> root file system, unpacked once per host and id range.

Cache layout under ``[lxc] image_cache_path``::

    <image id>.<id range>/rootfs/   the tree containers are built on
    <image id>.<id range>/meta.json  init kind, format, size, time taken

An entry is unpacked into a temporary directory and renamed into place, so
a reader never sees half an image; an external lock per entry makes
concurrent spawns of one image download it once.
"""

import json
import os
import tempfile
import time

from nova import exception as nova_exception
from nova.virt import images as nova_images
from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils

from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import formats

LOG = logging.getLogger(__name__)
META = 'meta.json'
ROOTFS = 'rootfs'


class CachedImage:
    def __init__(self, path, meta):
        self.path = path
        self.rootfs = os.path.join(path, ROOTFS)
        self.init_kind = meta['init']


def resolve_in_root(rootfs, path, max_links=40):
    """Host path of guest ``path``, following links as the guest would.

    Every component is resolved inside ``rootfs``: an absolute link target
    restarts at the guest's root, never the host's. None if it loops.
    """
    parts = [p for p in path.split('/') if p]
    resolved = []
    while parts:
        part = parts.pop(0)
        if part == '..':
            resolved = resolved[:-1]
            continue
        if part == '.':
            continue
        host_path = os.path.join(rootfs, *resolved, part)
        if os.path.islink(host_path):
            max_links -= 1
            if max_links < 0:
                return None
            target = os.readlink(host_path)
            if target.startswith('/'):
                resolved = []
            parts = [p for p in target.split('/') if p] + parts
            continue
        resolved.append(part)
    return os.path.join(rootfs, *resolved)


def init_kind(rootfs):
    """'busybox', 'systemd' or 'sysv' from what /sbin/init is; None if none."""
    path = resolve_in_root(rootfs, '/sbin/init')
    if path is None or not os.path.isfile(path):
        return None
    # Judge the guest's path only: the cache's host path may say anything.
    guest_path = os.path.relpath(path, rootfs)
    if os.path.basename(guest_path) == 'busybox':
        return 'busybox'
    return 'systemd' if 'systemd' in guest_path else 'sysv'


class ImageCache:
    def __init__(self, path):
        self.path = path

    def entry_name(self, image_id, idmap):
        suffix = 'u%dg%d' % (idmap.uid_start, idmap.gid_start) if idmap \
            else 'privileged'
        return '%s.%s' % (image_id, suffix)

    def get(self, context, instance, image_meta, idmap):
        """The CachedImage for the instance's image, fetching it if needed."""
        name = self.entry_name(image_meta.id, idmap)
        entry = os.path.join(self.path, name)
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        with lockutils.lock(name, lock_file_prefix='image-', external=True,
                            lock_path=os.path.join(self.path, '.locks')):
            if not os.path.exists(os.path.join(entry, META)):
                self._fetch(context, instance, image_meta, idmap, entry)
            else:
                os.utime(entry)   # last use, for manage_image_cache
            with open(os.path.join(entry, META)) as f:
                return CachedImage(entry, json.load(f))

    def _fetch(self, context, instance, image_meta, idmap, entry):
        started = time.monotonic()
        tmp = tempfile.mkdtemp(prefix='.tmp-', dir=self.path)
        archive = os.path.join(tmp, 'download')
        try:
            nova_images.fetch(context, image_meta.id, archive,
                              trusted_certs=instance.trusted_certs)
            fmt = formats.detect(archive)
            if fmt is None:
                raise nova_exception.ImageUnacceptable(
                    image_id=image_meta.id,
                    reason='it is not a root file system tarball (tar, '
                           'tar.gz, tar.xz or tar.bz2)')
            rootfs = os.path.join(tmp, ROOTFS)
            shift = (idmap.uid_start, idmap.gid_start) if idmap else (0, 0)
            try:
                fmt.unpack(archive, rootfs, *shift)
            except Exception as e:
                raise nova_exception.ImageUnacceptable(
                    image_id=image_meta.id,
                    reason='could not unpack it as %s: %s' % (fmt.NAME, e))
            size = os.path.getsize(archive)
            os.unlink(archive)
            init = init_kind(rootfs)
            if init is None:
                raise nova_exception.ImageUnacceptable(
                    image_id=image_meta.id,
                    reason='it has no /sbin/init, so it cannot boot as a '
                           'system container')
            meta = {'init': init, 'format': fmt.NAME, 'bytes': size,
                    'seconds': round(time.monotonic() - started, 3)}
            with open(os.path.join(tmp, META), 'w') as f:
                json.dump(meta, f)
            os.chmod(tmp, 0o755)
            fs.rename(tmp, entry)
        except Exception:
            with excutils.save_and_reraise_exception():
                fs.remove_tree(tmp)
        LOG.info('Image %(image)s unpacked into the cache in %(sec).2f s '
                 '(%(bytes)d bytes, %(fmt)s, init %(init)s)',
                 {'image': image_meta.id, 'sec': meta['seconds'],
                  'bytes': size, 'fmt': fmt.NAME, 'init': init})
