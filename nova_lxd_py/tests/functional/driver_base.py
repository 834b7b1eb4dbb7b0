"""Shared base for the driver tests on real unprivileged liblxc containers.

The driver class is driven directly, the way the compute manager calls it.
The one seam is Nova's Glance client, ``nova.image.glance.API``: its
``get`` returns a record with the image's sha512 (as Glance's multihash),
its ``download`` writes a local file's bytes (a busybox guest built by
``fixtures.guest_tarball`` unless a test adds its own image).

Base class: oslotest's, not ``nova.test.NoDBTestCase``. Nova's test base
installs poison fixtures that make ``os.uname`` raise and refuse reads under
/sys, which the driver needs for real (cgroups, the freezer, liblxc itself);
these tests exist to exercise the real host, so they get a base that lets
them. Nova's objects and concurrency mode come from ``nova.tests.unit``.
"""
import functools
import hashlib
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova import objects  # noqa: E402
from nova.tests.unit import fake_instance  # noqa: E402
from nova.virt import fake  # noqa: E402
from oslo_config import cfg  # noqa: E402
from oslo_config import fixture as config_fixture  # noqa: E402
from oslotest import base  # noqa: E402

from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import driver  # noqa: E402

CONF = cfg.CONF
BUSYBOX_IMAGE = 'b0b0b0b0-0000-4000-8000-000000000001'
NODE = 'compute-1'
BOOTED = 'guest init: booted'
SHUTTING_DOWN = 'guest init: shutting down'
LOCKS_DIR = '.locks'   # the image cache's lock files, not entries


def wait_until(predicate, timeout=10.0, what='condition'):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %.1f s waiting for %s'
                                 % (timeout, what))
        time.sleep(0.02)


def host_uid(pid):
    """Real uid of a host process, from /proc."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('Uid:'):
                return int(line.split()[1])
    raise AssertionError('no Uid line for pid %d' % pid)


def file_sha512(path):
    """sha512 of a file, computed once per version of it."""
    st = os.stat(path)
    return _sha512(path, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _sha512(path, inode, size, mtime_ns):
    digest = hashlib.sha512()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


class DriverTestCase(base.BaseTestCase):
    """A driver over a private instances_path; every container it started
    is killed and removed after the test, pass or fail."""

    # True: the tests of the class share one image cache (made in
    # setUpClass), so the image is unpacked once for all of them.
    share_image_cache = False
    _shared_cache = None

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('real containers need root')
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        # oslotest nests each test's temp files in a private 0700 dir that
        # the guests' root (host uid 100000) cannot pass through, and that
        # is removed after the test: what the guests read and the tarballs
        # built once per process go in the system's temp dir instead.
        with fixtures.MonkeyPatch('tempfile.tempdir', None):
            self.dirs = self.useFixture(lxc_fixtures.HostDirs())
            self.images = {BUSYBOX_IMAGE: lxc_fixtures.guest_tarball()}
        # get_available_resource writes the node's compute_id here.
        self.flags(state_path=self.dirs.path)
        self.flags(group='lxc', soft_reboot_timeout=20)
        if self._shared_cache:
            self.flags(group='lxc', image_cache_path=self._shared_cache)
        # Glance records by image id, over the defaults of _glance_get.
        self.glance_records = {}
        glance_api = self.useFixture(fixtures.MockPatch(
            'nova.image.glance.API', autospec=True)).mock.return_value
        glance_api.get.side_effect = self._glance_get
        glance_api.download.side_effect = self._glance_download
        self.fetch = glance_api.download
        self.driver = driver.LXCDriver(fake.FakeVirtAPI())
        self.driver.init_host(NODE)
        self.context = nova_context.get_admin_context()

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if cls.share_image_cache:
            top = tempfile.mkdtemp(prefix='nova-lxd-py-cache-')
            os.chmod(top, 0o755)   # the guests' root must reach the cache
            cls._shared_cache = os.path.join(top, 'cache')

    @classmethod
    def tearDownClass(cls):
        if cls._shared_cache:
            shutil.rmtree(os.path.dirname(cls._shared_cache),
                          ignore_errors=True)
            cls._shared_cache = None
        super().tearDownClass()

    def flags(self, group=None, **kw):
        self.conf.config(group=group, **kw)

    def _glance_get(self, context, image_id, include_locations=False,
                    show_deleted=True):
        if image_id not in self.images:
            raise nova_exception.ImageNotFound(image_id=image_id)
        source = self.images[image_id]
        record = {'id': image_id, 'status': 'active', 'disk_format': 'raw',
                  'container_format': 'bare'}
        if isinstance(source, str):   # callables are read at download
            record.update(os_hash_algo='sha512',
                          os_hash_value=file_sha512(source))
        record.update(self.glance_records.get(image_id, {}))
        return record

    def _glance_download(self, context, image_id, data=None, dest_path=None,
                         trusted_certs=None):
        # What Glance's client does with ``data``: write the bytes to it.
        source = self.images[image_id]
        if callable(source):
            source = source()
        with open(source, 'rb') as f:
            shutil.copyfileobj(f, data, 1 << 20)

    # -- helpers -----------------------------------------------------------

    def make_instance(self, hostname='guest-1', memory_mb=256, vcpus=1,
                      **extra_specs):
        flavor = objects.Flavor(vcpus=vcpus, memory_mb=memory_mb, root_gb=1,
                                ephemeral_gb=0, swap=0,
                                extra_specs=extra_specs)
        instance = fake_instance.fake_instance_obj(
            self.context, flavor=flavor, hostname=hostname)
        instance.trusted_certs = None
        # Loaded by the compute manager; image_meta (config drive policy)
        # reads it.
        instance.system_metadata = {}
        return instance

    def image_meta(self, image_id=BUSYBOX_IMAGE, **glance):
        """Glance's record of an image; ``glance`` overrides its fields."""
        record = {'id': image_id, 'name': 'rootfs', 'status': 'active',
                  'disk_format': 'raw', 'container_format': 'bare'}
        record.update(glance)
        return objects.ImageMeta.from_dict(record)

    def spawn(self, instance=None, image_id=BUSYBOX_IMAGE, power_on=True,
              wait_boot=True, **glance):
        instance = instance or self.make_instance()
        self.driver.spawn(self.context, instance,
                          self.image_meta(image_id, **glance),
                          [], None, {}, network_info=None,
                          power_on=power_on)
        if power_on and wait_boot:
            self.wait_booted(instance)
        return instance

    def console(self, instance):
        return self.driver.get_console_output(self.context, instance)

    def wait_booted(self, instance, times=1):
        # rcS prints the line once the guest's sysinit has run.
        wait_until(lambda: self.console(instance).count(BOOTED) >= times,
                   what='guest boot #%d' % times)

    def state(self, instance):
        return self.driver.get_info(instance).state

    def run_in_guest(self, instance, *argv):
        code, out = container.run_in_guest(instance.uuid, list(argv), 10)
        self.assertEqual(0, code, out)
        return out

    def init_pid(self, instance):
        lxc_state, pid = container.state(instance.uuid)
        self.assertEqual('RUNNING', lxc_state)
        return pid

    def cache_entries(self):
        """The image cache's entries and temp dirs, not its lock files."""
        path = CONF.lxc.image_cache_path
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path)
                      if n != LOCKS_DIR)

    def container_dirs(self):
        path = CONF.lxc.container_path
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
