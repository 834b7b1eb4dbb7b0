"""Nova in one process, with a compute service on our driver.

Nova's own functional harness (``_IntegratedTestBase``) runs the REST API
through wsgi-intercept, conductor, scheduler, Placement and a fake Glance;
the compute service here runs ``LXCDriver`` on this host's liblxc, so every
server is a real container under a private ``instances_path``.
"""

import functools
import hashlib
import importlib
import io
import os
import sys
import time
import unittest
from unittest import mock

import fixtures
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers

from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.virt import container
from nova_lxd_py.virt import driver as lxc_driver

# Installed by the nova wheel as a data file, not inside site-packages.
API_PASTE = os.path.join(sys.prefix, 'etc', 'nova', 'api-paste.ini')
COMPUTE_DRIVER = 'lxc_py.LXCDriver'
IMAGE_MARKER = 'nova-lxd-py-e2e'
FLAVOR_MEMORY_MB = 256
FLAVOR_VCPUS = 1
FLAVOR_DISK_GB = 1
CONTAINER_FLAVOR_SPECS = {
    'trait:%s' % lxc_driver.CONTAINER_HOST_TRAIT: 'required'}
CGROUP_ROOT = '/sys/fs/cgroup'
GUEST_COMMAND_TIMEOUT = 30
CONSOLE_TIMEOUT = 30


class CgroupsAllowedSysFsPoison(nova_fixtures.SysFsPoisonFixture):
    """Nova's guard against reading /sys, minus the cgroup tree.

    The driver checks for cgroups at init_host and freezes containers by
    writing their freezer files; everything else under /sys stays poisoned.
    """

    def inject_poison(self, module_name, function_name):
        module = importlib.import_module(module_name)
        real = getattr(module, function_name)
        super().inject_poison(module_name, function_name)
        poisoned = getattr(module, function_name)

        def guarded(*args, **kwargs):
            path = args[0] if args else None
            if isinstance(path, bytes):
                path = path.decode(errors='replace')
            if isinstance(path, str) and (
                    path == CGROUP_ROOT or
                    path.startswith(CGROUP_ROOT + '/')):
                return real(*args, **kwargs)
            return poisoned(*args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            '%s.%s' % (module_name, function_name), guarded))


@functools.lru_cache(maxsize=None)
def guest_image_bytes(with_init=True):
    """The busybox rootfs tarball, built once per process."""
    with open(lxc_fixtures.guest_tarball(IMAGE_MARKER, with_init), 'rb') as f:
        return f.read()


def load_our_driver(virtapi, compute_driver=None):
    return lxc_driver.LXCDriver(virtapi)


@unittest.skipUnless(os.geteuid() == 0, 'runs real containers: needs root')
class ContainerTestBase(integrated_helpers._IntegratedTestBase):
    """Full in-process Nova whose compute service runs real containers."""

    ADMIN_API = True
    microversion = 'latest'

    def setUp(self):
        with mock.patch.object(nova_fixtures, 'SysFsPoisonFixture',
                               CgroupsAllowedSysFsPoison):
            super().setUp()

    def _clear_attrs(self):
        # nova.test.TestCase deletes public attributes after each test,
        # including the ones pytest itself set and later deletes.
        pass

    def _setup_services(self):
        self.flags(api_paste_config=API_PASTE, group='wsgi')
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        self.host_dirs = self.useFixture(lxc_fixtures.HostDirs())
        self._use_our_driver()
        super()._setup_services()
        self.driver = self.compute.manager.driver
        self.assertIsInstance(self.driver, lxc_driver.LXCDriver)

    def _use_our_driver(self):
        """Load LXCDriver as operators do, through the nova.virt shim.

        Without the shim (an install that predates it) nova is handed the
        class directly, exactly as it would have loaded it.
        """
        try:
            importlib.import_module('nova.virt.' +
                                    COMPUTE_DRIVER.rsplit('.', 1)[0])
        except ImportError:
            self.useFixture(fixtures.MockPatch(
                'nova.virt.driver.load_compute_driver',
                side_effect=load_our_driver))
        self.flags(compute_driver=COMPUTE_DRIVER)

    # -- Glance and flavors ----------------------------------------------

    def _create_container_image(self, data, name='busybox',
                                disk_format='raw', container_format='bare'):
        """Upload image bytes to the Glance fixture; return the image id.

        The record carries the sha512 multihash real Glance computes, which
        the driver checks the download against.
        """
        meta = {
            'name': name,
            'status': 'active',
            'visibility': 'public',
            'container_format': container_format,
            'disk_format': disk_format,
            'os_hash_algo': 'sha512',
            'os_hash_value': hashlib.sha512(data).hexdigest(),
            'size': len(data),
            'min_ram': 0,
            'min_disk': 0,
            'properties': {'img_hv_type': 'lxc', 'hw_vm_mode': 'exe'},
        }
        return self.glance.create(None, meta, data=io.BytesIO(data))['id']

    def _create_guest_image(self, with_init=True):
        return self._create_container_image(guest_image_bytes(with_init))

    def _create_container_flavor(self, extra_spec=None, name=None):
        specs = dict(CONTAINER_FLAVOR_SPECS, **(extra_spec or {}))
        return self._create_flavor(
            name=name, memory_mb=FLAVOR_MEMORY_MB, vcpu=FLAVOR_VCPUS,
            disk=FLAVOR_DISK_GB, ephemeral=0, extra_spec=specs)

    def _boot(self, image_id, flavor_id, name='e2e',
              expected_state='ACTIVE'):
        return self._create_server(
            name=name, image_uuid=image_id, flavor_id=flavor_id,
            networks='none', expected_state=expected_state)

    # -- the host --------------------------------------------------------

    def lxc_state(self, uuid):
        return container.state(uuid)[0]

    def init_pid(self, uuid):
        return container.state(uuid)[1]

    def run_in_guest(self, uuid, *argv):
        """Output of ``argv`` run inside the guest; fails if it fails."""
        code, output = container.run_in_guest(uuid, list(argv),
                                              GUEST_COMMAND_TIMEOUT)
        self.assertEqual(0, code, '%s in the guest: %s' % (argv, output))
        return output

    def wait_for_console(self, uuid, text, count=1):
        """The console log, once ``text`` is in it ``count`` times.

        The guest writes it after liblxc reports RUNNING; on timeout the
        log is returned as it is, for the caller's assertion to show.
        """
        deadline = time.monotonic() + CONSOLE_TIMEOUT
        while True:
            log = container.read_console_log(uuid, 1024 * 1024).decode(
                errors='replace')
            if log.count(text) >= count or time.monotonic() > deadline:
                return log
            time.sleep(0.05)

    def cache_entries(self):
        """The image cache's entries and temp dirs, not its lock files."""
        path = self.host_dirs.image_cache_path
        if not os.path.isdir(path):
            return []
        return sorted(e for e in os.listdir(path) if e != '.locks')

    def assertHostClean(self, uuid):
        """Nothing of container ``uuid`` is left, and no half-made image."""
        self.assertEqual([], lxc_fixtures.host_leftovers(uuid))
        self.assertEqual('UNDEFINED', self.lxc_state(uuid))
        self.assertNotIn(uuid, self.driver.list_instance_uuids())
        leftovers = [e for e in self.cache_entries()
                     if e.startswith('.tmp') or uuid in e]
        self.assertEqual([], leftovers)


class UploadTestBase(ContainerTestBase):
    """A guest image, a container flavor, and a Glance fixture that keeps
    what is uploaded to it (``self.uploads``: image ids, in order), for the
    operations that upload the server's root (snapshot, shelve)."""

    def setUp(self):
        super().setUp()
        self.image_id = self._create_guest_image()
        self.flavor_id = self._create_container_flavor()
        self.uploads = self.useFixture(
            lxc_fixtures.GlanceUploads(self.glance)).uploads
