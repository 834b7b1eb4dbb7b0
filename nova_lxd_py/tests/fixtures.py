"""Fixtures for tests on real containers (run as root).

Each owns one real resource and always cleans it up, even when the test
fails: a private instances_path with its containers, and the guest images.
"""

import atexit
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import fixtures
from oslo_config import cfg

from nova_lxd_py import conf  # noqa: F401  (registers [lxc])
from nova_lxd_py import privsep
from nova_lxd_py.tests import guest_image

CONF = cfg.CONF


class PrivsepInProcess(fixtures.Fixture):
    """Run privsep entrypoints in the test process (tests run as root)."""

    def _setUp(self):
        self.useFixture(fixtures.MockPatchObject(
            privsep.sys_admin_pctxt, 'client_mode', False))


class HostDirs(fixtures.Fixture):
    """A private instances_path; on cleanup every container in it is killed
    and the directory removed, so a failed test leaves nothing running."""

    def _setUp(self):
        # Not the per-test temp dir of oslotest/nova: it is private (0700),
        # and a guest's root (a subordinate uid) must pass through to reach
        # its image and root layer.
        self.path = tempfile.mkdtemp(prefix='nova-lxd-py-test-',
                                     dir='/var/tmp')
        os.chmod(self.path, 0o755)   # guests' root must reach the cache
        self.addCleanup(self._clean)
        self.container_path = os.path.join(self.path, 'containers')
        self.image_cache_path = os.path.join(self.path, '_base_lxc')
        CONF.set_override('instances_path', self.path)
        self.addCleanup(CONF.clear_override, 'instances_path')

    def _clean(self):
        if os.path.isdir(self.container_path):
            for name in os.listdir(self.container_path):
                subprocess.run(['lxc-stop', '-k', '-n', name, '-P',
                                self.container_path],
                               capture_output=True, check=False)
        # Instances' root disks left mounted by a test that did not delete
        # them: unmount (loop devices go with them) before removing.
        for point in sorted(mounts_under(self.path), reverse=True):
            subprocess.run(['umount', point], capture_output=True,
                           check=False)
        shutil.rmtree(self.path, ignore_errors=True)


class GlanceUploads(fixtures.Fixture):
    """Nova's GlanceFixture, reading uploaded data as Glance does.

    The fixture's ``update`` drops ``data`` unread; a snapshot's stream
    then has no reader and rightly fails. Here the bytes are read to the
    end and kept as ``create`` keeps them, and the record gets what real
    Glance computes on upload (size, sha512 multihash, status active),
    which the driver's image cache checks when it downloads the image.
    ``uploads`` lists the image ids that received data, in order.
    """

    def __init__(self, glance):
        super().__init__()
        self.glance = glance
        self.uploads = []

    def _setUp(self):
        fixture_update = self.glance.update

        def update(context, image_id, metadata, data=None,
                   purge_props=False):
            image = fixture_update(context, image_id, metadata,
                                   purge_props=purge_props)
            if data is not None:
                blob = data.read()
                self.uploads.append(image_id)
                self.glance._imagedata[image_id] = blob
                image.update(size=len(blob), status='active',
                             os_hash_algo='sha512',
                             os_hash_value=hashlib.sha512(blob).hexdigest())
            return image

        self.useFixture(fixtures.MockPatchObject(
            self.glance, 'update', side_effect=update))


def mounts_under(path):
    """Mount points at or below ``path`` in this mount namespace."""
    found = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            point = line.split()[4]
            if point == path or point.startswith(path.rstrip('/') + '/'):
                found.append(point)
    return found


@functools.lru_cache(maxsize=None)
def _image_dir():
    # Not the default temp dir: oslotest points TMPDIR at a per-test
    # directory that is deleted after that test, and images outlive tests.
    path = tempfile.mkdtemp(prefix='nova-lxd-py-images-', dir='/var/tmp')
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def guest_tarball(marker='busybox-guest', with_init=True, compression='gz'):
    """Path of a bootable busybox rootfs tarball, built once per process.

    ``/etc/image-marker`` in the guest holds ``marker``. Every spelling
    of the same arguments gets the same file, written once: a rewrite would
    change its bytes (gzip stores a time) under tests that hashed it.
    """
    return _guest_tarball(marker, with_init, compression)


@functools.lru_cache(maxsize=None)
def _guest_tarball(marker, with_init, compression):
    name = '%s-%s.tar%s' % (marker, 'init' if with_init else 'noinit',
                            '.' + compression if compression else '')
    path = os.path.join(_image_dir(), name)
    return guest_image.write_tarball(path, marker, with_init, compression)


def host_leftovers(name):
    """Everything of container ``name`` still on the host (should be [])."""
    found = []
    for root in ('/sys/fs/cgroup',):
        for dirpath, dirnames, _ in os.walk(root):
            for d in dirnames:
                if name in d:
                    found.append(os.path.join(dirpath, d))
            if dirpath.count('/') >= 5:
                dirnames[:] = []
    with open('/proc/self/mountinfo') as f:
        found += [line.strip() for line in f if name in line]
    container_dir = os.path.join(CONF.lxc.container_path, name)
    if os.path.lexists(container_dir):
        found.append(container_dir)
    return found
