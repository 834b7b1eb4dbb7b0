"""Glance image -> root file system, unpacked once per host and id range.

Cache layout under ``[lxc] image_cache_path``::

    <image id>.<hash>.<id range>/rootfs/    the tree containers are built on
    <image id>.<hash>.<id range>/meta.json  format, init kind, sizes, timing

``<hash>`` is the start of Glance's ``os_hash_value`` (or md5 ``checksum``),
so an entry is the image's exact bytes. The download is hashed as it is
written and refused if it does not match Glance's record. An entry is
unpacked into a temporary directory and renamed into place, so a reader
never sees half an image; an external lock per entry makes concurrent spawns
of one image download it once. ``remove_unused`` is the cache manager's
pass: entries no container or instance uses, older than Nova's
``[image_cache] remove_unused_original_minimum_age_seconds``, are removed.
"""

import hashlib
import json
import os
import tempfile
import time

from nova import exception as nova_exception
from nova.image import glance
from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import excutils

from nova_lxd_py import conf
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import formats
from nova_lxd_py.storage import rootfs as rootfs_tree

LOG = logging.getLogger(__name__)
META = 'meta.json'
ROOTFS = 'rootfs'
LOCKS = '.locks'
TMP_PREFIX = '.tmp-'
PROGRESS_SECONDS = 10
HASH_CHARS = 16


class CachedImage:
    def __init__(self, path, meta):
        self.path = path
        self.rootfs = os.path.join(path, ROOTFS)
        self.init_kind = meta['init']
        self.meta = meta


# Kept here for the callers that know them as images.*.
resolve_in_root = rootfs_tree.resolve_in_root
init_kind = rootfs_tree.init_kind


class _HashingWriter:
    """The file Glance's download writes to: hashes and counts as it goes."""

    def __init__(self, f, algo, image_id):
        self.f = f
        self.hash = hashlib.new(algo, usedforsecurity=False) if algo \
            else None
        self.bytes = 0
        self.image_id = image_id
        self.started = self._logged = time.monotonic()

    def write(self, chunk):
        self.f.write(chunk)
        if self.hash is not None:
            self.hash.update(chunk)
        self.bytes += len(chunk)
        now = time.monotonic()
        if now - self._logged >= PROGRESS_SECONDS:
            self._logged = now
            LOG.info('Image %(image)s: %(mib).0f MiB downloaded '
                     '(%(rate).1f MiB/s)',
                     {'image': self.image_id, 'mib': self.bytes / 2**20,
                      'rate': self.bytes / 2**20 / (now - self.started)})

    def truncate(self, size=None):
        return self.f.truncate(size)

    def flush(self):
        self.f.flush()


def expected_hash(record):
    """(algorithm, hex digest) Glance records for an image, or (None, None).

    ``os_hash_algo``/``os_hash_value`` (multihash, sha512 by default) when
    Glance has them, else the legacy md5 ``checksum``.
    """
    algo, value = record.get('os_hash_algo'), record.get('os_hash_value')
    if algo and value and algo in hashlib.algorithms_available:
        return algo, value.lower()
    if record.get('checksum'):
        return 'md5', record['checksum'].lower()
    return None, None


class ImageCache:
    def __init__(self, path):
        self.path = path
        self._glance = glance.API()

    @staticmethod
    def entry_name(image_id, digest, idmap):
        suffix = 'u%dg%d' % (idmap.uid_start, idmap.gid_start) if idmap \
            else 'privileged'
        return '%s.%s.%s' % (image_id, (digest or 'nohash')[:HASH_CHARS],
                             suffix)

    def get(self, context, instance, image_meta, idmap, max_bytes=0):
        """The CachedImage for the instance's image, fetching it if needed.

        ``max_bytes`` (0: none) caps the unpacked tree: an entry unpacked
        earlier for a larger flavor is refused for a smaller one too.
        """
        image, fetched = self.ensure(
            context, image_meta.id, idmap, max_bytes,
            trusted_certs=instance.trusted_certs,
            disk_format=image_meta.obj_attr_is_set('disk_format') and
            image_meta.disk_format or None,
            container_format=image_meta.obj_attr_is_set('container_format')
            and image_meta.container_format or None)
        tree = image.meta.get('tree_bytes', 0)
        if max_bytes and tree > max_bytes:
            raise nova_exception.FlavorDiskSmallerThanImage(
                flavor_size=max_bytes, image_size=tree)
        return image

    def ensure(self, context, image_id, idmap, max_bytes,
               trusted_certs=None, disk_format=None, container_format=None):
        """(CachedImage, True if it was fetched now) for ``image_id``."""
        record = self._glance.get(context, image_id)
        algo, digest = expected_hash(record)
        name = self.entry_name(image_id, digest, idmap)
        entry = os.path.join(self.path, name)
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        fetched = False
        with lockutils.lock(name, lock_file_prefix='image-', external=True,
                            lock_path=os.path.join(self.path, LOCKS)):
            if not os.path.exists(os.path.join(entry, META)):
                self._fetch(context, image_id, record, (algo, digest),
                            idmap, entry, max_bytes, trusted_certs,
                            disk_format or record.get('disk_format'),
                            container_format or
                            record.get('container_format'))
                fetched = True
            else:
                os.utime(entry)   # last use, for remove_unused
            with open(os.path.join(entry, META)) as f:
                return CachedImage(entry, json.load(f)), fetched

    def _download(self, context, image_id, path, hashed, trusted_certs):
        algo, digest = hashed
        with open(path, 'wb') as f:
            writer = _HashingWriter(f, algo, image_id)
            self._glance.download(context, image_id, data=writer,
                                  trusted_certs=trusted_certs)
        if writer.hash is None:
            LOG.warning('Image %s has no checksum in Glance; its download '
                        'is not verified.', image_id)
        elif writer.hash.hexdigest() != digest:
            raise nova_exception.ImageUnacceptable(
                image_id=image_id,
                reason='the downloaded bytes do not match Glance\'s %s '
                       'checksum (%s... expected, %s... received): the image '
                       'is corrupt or was altered in transit'
                       % (algo, digest[:16], writer.hash.hexdigest()[:16]))
        return writer.bytes

    def _fetch(self, context, image_id, record, hashed, idmap, entry,
               max_bytes, trusted_certs, disk_format, container_format):
        started = time.monotonic()
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.path)
        # The user namespace that unpacks reaches rootfs through it.
        os.chmod(tmp, 0o711)
        archive = os.path.join(tmp, 'download')
        try:
            size = self._download(context, image_id, archive, hashed,
                                  trusted_certs)
            fmt = self._format(image_id, archive, disk_format,
                               container_format, conf.CONF.lxc.image_formats)
            cap = conf.CONF.lxc.max_unpacked_image_gb << 30
            cap = min(cap, max_bytes) if max_bytes else cap
            workdir = os.path.join(tmp, 'work')
            os.mkdir(workdir, 0o711)
            rootfs = os.path.join(tmp, ROOTFS)
            uid, gid = (idmap.uid_start, idmap.gid_start) if idmap \
                else (0, 0)
            count = idmap.size if idmap else 65536
            try:
                facts = formats.unpack(
                    fmt.NAME, archive, rootfs, uid, gid, count, cap,
                    'Image %s' % image_id, workdir)
            except formats.UnsafeImage as e:
                raise nova_exception.ImageUnacceptable(
                    image_id=image_id,
                    reason='%s image refused: %s' % (fmt.NAME, e))
            os.unlink(archive)
            fs.remove_tree(workdir)
            init = init_kind(rootfs)
            if init is None:
                raise nova_exception.ImageUnacceptable(
                    image_id=image_id,
                    reason='it has no /sbin/init, so it cannot boot as a '
                           'system container')
            meta = dict(facts or {}, init=init, format=fmt.NAME, bytes=size,
                        hash=hashed[1], seconds=round(
                            time.monotonic() - started, 3))
            with open(os.path.join(tmp, META), 'w') as f:
                json.dump(meta, f)
            os.chmod(tmp, 0o755)
            fs.rename(tmp, entry)
        except Exception:
            with excutils.save_and_reraise_exception():
                fs.remove_tree(tmp)
        LOG.info('Image %(image)s unpacked into the cache in %(sec).2f s '
                 '(%(bytes)d bytes, %(fmt)s, init %(init)s)',
                 {'image': image_id, 'sec': meta['seconds'],
                  'bytes': size, 'fmt': fmt.NAME, 'init': init})

    @staticmethod
    def _format(image_id, archive, disk_format, container_format, enabled):
        fmt = formats.detect(archive)
        if fmt is None:
            raise nova_exception.ImageUnacceptable(
                image_id=image_id,
                reason='its bytes are none of the formats this driver '
                       'takes (%s)' % ', '.join(formats.names()))
        if fmt.NAME not in enabled:
            raise nova_exception.ImageUnacceptable(
                image_id=image_id,
                reason='it is a %s image, which this host does not take '
                       '([lxc] image_formats = %s)'
                       % (fmt.NAME, ', '.join(enabled)))
        try:
            formats.check_hints(fmt, disk_format, container_format)
        except formats.UnsafeImage as e:
            raise nova_exception.ImageUnacceptable(image_id=image_id,
                                                   reason=str(e))
        return fmt

    # -- the cache manager's pass ------------------------------------------

    def entries(self):
        """{entry name: (image id, path)} of the published entries."""
        found = {}
        if not os.path.isdir(self.path):
            return found
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if name.startswith('.') or not os.path.exists(
                    os.path.join(path, META)):
                continue
            found[name] = (name.split('.', 1)[0], path)
        return found

    def remove_unused(self, used_images, used_paths, min_age):
        """Remove entries unused for ``min_age`` seconds; their names.

        ``used_images``: image ids of this host's instances; ``used_paths``:
        root file systems that containers' configs name. Either keeps an
        entry (and counts as a use now).
        """
        removed = []
        now = time.time()
        for name, (image_id, path) in sorted(self.entries().items()):
            rootfs = os.path.join(path, ROOTFS)
            if image_id in used_images or rootfs in used_paths:
                os.utime(path)
                continue
            age = now - os.stat(path).st_mtime
            if age < min_age:
                continue
            with lockutils.lock(name, lock_file_prefix='image-',
                                external=True,
                                lock_path=os.path.join(self.path, LOCKS)):
                fs.remove_tree(path)
            LOG.info('Removed image %(image)s from the cache: unused for '
                     '%(age)d s', {'image': image_id, 'age': age})
            removed.append(name)
        return removed
