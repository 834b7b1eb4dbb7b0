"""LXCDriver on real unprivileged liblxc containers (run as root).

The driver class is driven directly, the way the compute manager calls it.
The one seam is the Glance download, ``nova.virt.images.fetch``: it copies a
local tarball (a busybox guest built by ``fixtures.guest_tarball``).

Base class: oslotest's, not ``nova.test.NoDBTestCase``. Nova's test base
installs poison fixtures that make ``os.uname`` raise and refuse reads under
/sys, which the driver needs for real (cgroups, the freezer, liblxc itself);
these tests exist to exercise the real host, so they get a base that lets
them. Nova's objects and concurrency mode come from ``nova.tests.unit``.
"""

import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import io  # noqa: E402,I100
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402
import lxc  # noqa: E402
from nova.compute import power_state  # noqa: E402
from nova.compute import provider_tree  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova import objects  # noqa: E402
from nova.tests.unit import fake_instance  # noqa: E402
from nova.virt import fake  # noqa: E402
from oslo_config import cfg  # noqa: E402
from oslo_config import fixture as config_fixture  # noqa: E402
from oslo_utils.fixture import uuidsentinel  # noqa: E402
from oslotest import base  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import driver  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402

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
        self.fetch = self.useFixture(fixtures.MockPatch(
            'nova.virt.images.fetch', autospec=True,
            side_effect=self._fetch)).mock
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

    def _fetch(self, context, image_href, path, trusted_certs=None):
        # What nova.virt.images.fetch does: write the image's bytes to path.
        source = self.images[image_href]
        if callable(source):
            source = source()
        shutil.copyfile(source, path)

    # -- helpers -----------------------------------------------------------

    def make_instance(self, hostname='guest-1', memory_mb=256, vcpus=1,
                      **extra_specs):
        flavor = objects.Flavor(vcpus=vcpus, memory_mb=memory_mb, root_gb=1,
                                ephemeral_gb=0, swap=0,
                                extra_specs=extra_specs)
        instance = fake_instance.fake_instance_obj(
            self.context, flavor=flavor, hostname=hostname)
        instance.trusted_certs = None
        return instance

    def image_meta(self, image_id=BUSYBOX_IMAGE):
        return objects.ImageMeta.from_dict({
            'id': image_id, 'name': 'rootfs', 'status': 'active',
            'disk_format': 'raw', 'container_format': 'bare'})

    def spawn(self, instance=None, image_id=BUSYBOX_IMAGE, power_on=True,
              wait_boot=True):
        instance = instance or self.make_instance()
        self.driver.spawn(self.context, instance, self.image_meta(image_id),
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


class LifecycleTest(DriverTestCase):
    """One guest per test, all built on one cached image."""

    share_image_cache = True

    def test_spawn_runs_guest_init(self):
        instance = self.spawn()
        self.assertEqual(power_state.RUNNING, self.state(instance))
        ps = self.run_in_guest(instance, 'ps')
        self.assertRegex(ps, r'(?m)^\s*1\s+root\s+init\s*$')
        self.assertIn("sleep 3600", ps)   # inittab's respawn entry

    def test_spawn_leaves_caller_cgroups_alone(self):
        # liblxc's start() moves its caller into the container's monitor
        # cgroup; nova-compute (here: the test process) must stay put.
        with open('/proc/self/cgroup') as f:
            before = f.read()
        self.spawn()
        with open('/proc/self/cgroup') as f:
            self.assertEqual(before, f.read())

    def test_spawn_sets_hostname_from_instance(self):
        instance = self.spawn(self.make_instance(hostname='Web_Server.01'))
        self.assertEqual('web-server-01\n',
                         self.run_in_guest(instance, 'hostname'))

    def test_spawn_guest_sees_flavor_size(self):
        if not host.lxcfs_active():
            self.skipTest('lxcfs is not running at %s' % CONF.lxc.lxcfs_path)
        if len(host.cpus()) < 2:
            self.skipTest('needs a host with 2 CPUs or more')
        instance = self.spawn(self.make_instance(memory_mb=256, vcpus=1))
        free = self.run_in_guest(instance, '/usr/bin/free', '-m')
        total = int(re.search(r'(?m)^Mem:\s+(\d+)', free).group(1))
        self.assertEqual(256, total)
        self.assertEqual('1\n', self.run_in_guest(instance, 'nproc'))

    def test_spawn_maps_guest_root_to_subordinate_id(self):
        instance = self.spawn()
        self.assertEqual('0\n', self.run_in_guest(instance, 'id', '-u'))
        self.assertEqual(host.idmap().uid_start,
                         host_uid(self.init_pid(instance)))
        self.assertEqual(100000, host_uid(self.init_pid(instance)))

    def test_spawn_without_power_on_leaves_it_stopped(self):
        instance = self.spawn(power_on=False)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
        self.driver.power_on(self.context, instance, None)
        self.wait_booted(instance)
        self.assertEqual(power_state.RUNNING, self.state(instance))

    def test_get_console_output_shows_boot(self):
        instance = self.spawn()
        self.assertIn('guest init: booted guest-1', self.console(instance))

    def test_power_off_graceful_then_power_on(self):
        instance = self.spawn()
        started = time.monotonic()
        self.driver.power_off(instance, timeout=15, retry_interval=5)
        self.assertLess(time.monotonic() - started, 15)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
        # The guest ran its own shutdown: init's inittab action printed.
        self.assertIn(SHUTTING_DOWN, self.console(instance))
        self.assertIn('Requesting system poweroff', self.console(instance))

        self.driver.power_on(self.context, instance, None)
        self.wait_booted(instance, times=2)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual('0\n', self.run_in_guest(instance, 'id', '-u'))

    def test_power_off_forced(self):
        instance = self.spawn()
        started = time.monotonic()
        self.driver.power_off(instance, timeout=0)
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
        self.assertNotIn(SHUTTING_DOWN, self.console(instance))

    def test_power_off_stopped_is_noop(self):
        instance = self.spawn(power_on=False)
        self.driver.power_off(instance, timeout=10)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))

    def test_reboot_soft_restarts_init(self):
        instance = self.spawn()
        old_pid = self.init_pid(instance)
        started = time.monotonic()
        self.driver.reboot(self.context, instance, None, 'SOFT')
        # Well within soft_reboot_timeout (20 s): no hard fallback.
        self.assertLess(time.monotonic() - started, 10)
        self.assertNotEqual(old_pid, self.init_pid(instance))
        self.assertIn('Requesting system reboot', self.console(instance))
        self.wait_booted(instance, times=2)
        self.assertEqual(power_state.RUNNING, self.state(instance))

    def test_reboot_hard_restarts_init(self):
        instance = self.spawn()
        old_pid = self.init_pid(instance)
        started = time.monotonic()
        self.driver.reboot(self.context, instance, None, 'HARD')
        self.assertLess(time.monotonic() - started, 3)
        self.assertNotEqual(old_pid, self.init_pid(instance))
        self.wait_booted(instance, times=2)
        self.assertNotIn(SHUTTING_DOWN, self.console(instance))
        self.assertEqual(power_state.RUNNING, self.state(instance))

    def test_pause_unpause(self):
        instance = self.spawn()
        self.driver.pause(instance)
        self.assertEqual('FROZEN', container.state(instance.uuid)[0])
        self.assertEqual(power_state.PAUSED, self.state(instance))
        # Frozen for real: a command in the guest cannot run.
        code, _ = container.run_in_guest(instance.uuid, ['true'], 1)
        self.assertEqual(124, code)

        self.driver.unpause(instance)
        self.assertEqual('RUNNING', container.state(instance.uuid)[0])
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual('0\n', self.run_in_guest(instance, 'id', '-u'))

    def test_power_off_paused_is_quick(self):
        # A frozen init cannot act on its halt signal: no point waiting.
        instance = self.spawn()
        self.driver.pause(instance)
        started = time.monotonic()
        self.driver.power_off(instance, timeout=15, retry_interval=5)
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))

    def test_suspend_resume(self):
        instance = self.spawn()
        self.driver.suspend(self.context, instance)
        self.assertEqual(power_state.SUSPENDED, self.state(instance))
        self.driver.resume(self.context, instance, None)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.run_in_guest(instance, 'true')

    def test_power_on_thaws_suspended(self):
        # After a host reboot Nova powers on what it believes is running.
        instance = self.spawn()
        self.driver.suspend(self.context, instance)
        self.driver.resume_state_on_host_boot(self.context, instance, None,
                                              None)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.run_in_guest(instance, 'true')

    def test_destroy_leaves_nothing(self):
        instance = self.spawn()
        self.assertEqual([instance.uuid], self.container_dirs())
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual([], self.container_dirs())
        self.assertRaises(nova_exception.InstanceNotFound,
                          self.driver.get_info, instance)
        self.assertRaises(nova_exception.InstanceNotFound,
                          self.driver.get_console_output, self.context,
                          instance)
        # Twice is fine: the compute manager retries deletes.
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_destroy_never_spawned(self):
        instance = self.make_instance()
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_destroy_paused_leaves_nothing(self):
        instance = self.spawn()
        self.driver.pause(instance)
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_destroy_keeps_cached_image(self):
        instance = self.spawn()
        entries = self.cache_entries()
        self.driver.destroy(self.context, instance, None)
        self.assertEqual(entries, self.cache_entries())
        self.assertEqual(1, len(entries))

    def test_list_instance_uuids_and_exists(self):
        self.assertEqual([], self.driver.list_instance_uuids())
        first = self.spawn(wait_boot=False)
        second = self.spawn(self.make_instance(hostname='guest-2'),
                            power_on=False)
        self.assertEqual(sorted([first.uuid, second.uuid]),
                         sorted(self.driver.list_instance_uuids()))
        self.assertTrue(self.driver.instance_exists(first))
        self.assertTrue(self.driver.instance_exists(second))
        self.driver.destroy(self.context, first, None)
        self.assertEqual([second.uuid], self.driver.list_instance_uuids())
        self.assertFalse(self.driver.instance_exists(first))
        self.assertFalse(self.driver.instance_exists(self.make_instance()))


class ImageCacheTest(DriverTestCase):
    """Each test starts from an empty image cache."""

    def test_cached_image_reused(self):
        first = self.spawn()
        second = self.spawn(self.make_instance(hostname='guest-2'))
        self.assertEqual(1, self.fetch.call_count)
        self.assertEqual(1, len(self.cache_entries()))
        for instance in (first, second):
            self.assertEqual(power_state.RUNNING, self.state(instance))

    def test_concurrent_spawns_fetch_once(self):
        tarball = self.images[BUSYBOX_IMAGE]

        def slow_download():
            # Long enough for the second spawn to arrive mid-download.
            time.sleep(0.5)
            return tarball

        self.images[BUSYBOX_IMAGE] = slow_download
        instances = [self.make_instance(hostname='guest-%d' % i)
                     for i in range(2)]
        barrier = threading.Barrier(len(instances))
        errors = []

        def spawn(instance):
            try:
                barrier.wait(5)
                self.spawn(instance, wait_boot=False)
            except Exception as e:   # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=spawn, args=(i,))
                   for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual([], errors)
        self.assertEqual(1, self.fetch.call_count)
        self.assertEqual(1, len(self.cache_entries()))
        for instance in instances:
            self.wait_booted(instance)
            self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual(sorted(i.uuid for i in instances),
                         sorted(self.driver.list_instance_uuids()))


class HostResourcesTest(DriverTestCase):

    def setUp(self):
        super().setUp()
        # nova-compute parses its command line (registering config_file,
        # where the node's identity is looked up); the fixture undoes it.
        CONF([], project='nova', default_config_files=[],
             default_config_dirs=[])

    def test_get_available_resource(self):
        resources = self.driver.get_available_resource(NODE)
        with open('/proc/meminfo') as f:
            mem_total = int(re.search(r'MemTotal:\s+(\d+)', f.read())
                            .group(1)) // 1024
        self.assertEqual(len(os.sched_getaffinity(0)), resources['vcpus'])
        self.assertEqual(mem_total, resources['memory_mb'])
        self.assertEqual(shutil.disk_usage(self.dirs.path).total // 1024 ** 3,
                         resources['local_gb'])
        self.assertEqual('lxc', resources['hypervisor_type'])
        major, minor, micro = (int(p) for p in lxc.version.split('.')[:3])
        self.assertEqual(major * 1000000 + minor * 1000 + micro,
                         resources['hypervisor_version'])
        self.assertEqual(NODE, resources['hypervisor_hostname'])
        arch = objects.fields.Architecture.canonicalize(platform.machine())
        self.assertEqual([(arch, 'lxc', 'exe')],
                         resources['supported_instances'])
        # The node's identity persists across calls (and restarts).
        self.assertEqual(resources['uuid'],
                         self.driver.get_available_resource(NODE)['uuid'])

    def provider_tree(self, inventory=None):
        tree = provider_tree.ProviderTree()
        tree.new_root(NODE, uuidsentinel.node)
        if inventory:
            tree.update_inventory(NODE, inventory)
        self.driver.update_provider_tree(tree, NODE)
        return tree.data(NODE)

    def test_update_provider_tree_inventory_from_config(self):
        self.flags(cpu_allocation_ratio=3.0, ram_allocation_ratio=1.5,
                   disk_allocation_ratio=2.0, reserved_host_cpus=1,
                   reserved_host_memory_mb=1024, reserved_host_disk_mb=3000)
        resources = self.driver.get_available_resource(NODE)
        data = self.provider_tree()
        inv = data.inventory
        self.assertEqual({'VCPU', 'MEMORY_MB', 'DISK_GB'}, set(inv))
        self.assertEqual(
            {'total': resources['vcpus'], 'reserved': 1, 'min_unit': 1,
             'max_unit': resources['vcpus'], 'step_size': 1,
             'allocation_ratio': 3.0}, inv['VCPU'])
        self.assertEqual(
            {'total': resources['memory_mb'], 'reserved': 1024,
             'min_unit': 1, 'max_unit': resources['memory_mb'],
             'step_size': 1, 'allocation_ratio': 1.5}, inv['MEMORY_MB'])
        self.assertEqual(
            {'total': resources['local_gb'], 'reserved': 3, 'min_unit': 1,
             'max_unit': resources['local_gb'], 'step_size': 1,
             'allocation_ratio': 2.0}, inv['DISK_GB'])
        self.assertIn('CUSTOM_SYSTEM_CONTAINER_HOST', data.traits)

    def test_update_provider_tree_initial_ratios(self):
        self.flags(initial_cpu_allocation_ratio=8.0,
                   initial_ram_allocation_ratio=1.25,
                   initial_disk_allocation_ratio=1.5)
        inv = self.provider_tree().inventory
        self.assertEqual((8.0, 1.25, 1.5), (
            inv['VCPU']['allocation_ratio'],
            inv['MEMORY_MB']['allocation_ratio'],
            inv['DISK_GB']['allocation_ratio']))

    def test_update_provider_tree_keeps_ratios_set_in_placement(self):
        # An operator's ratio set through the placement API survives.
        existing = {rc: {'total': 1, 'allocation_ratio': ratio}
                    for rc, ratio in (('VCPU', 16.0), ('MEMORY_MB', 0.9),
                                      ('DISK_GB', 1.1))}
        inv = self.provider_tree(existing).inventory
        self.assertEqual((16.0, 0.9, 1.1), (
            inv['VCPU']['allocation_ratio'],
            inv['MEMORY_MB']['allocation_ratio'],
            inv['DISK_GB']['allocation_ratio']))


def hostile_tarball(path, extra_members):
    """A bootable busybox rootfs followed by ``extra_members``."""
    with tarfile.open(path, 'w') as tar:
        for info, data in guest_image.busybox_members('hostile'):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for info, data in extra_members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, kind=tarfile.REGTYPE, data=None, link=''):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, data


class BadInputTest(DriverTestCase):
    """Refused requests leave nothing behind: no container, no cache entry,
    no file outside the image."""

    def setUp(self):
        super().setUp()
        # Stands for the rest of the host, outside every directory we own.
        self.outside = self.useFixture(fixtures.TempDir()).path
        with open(os.path.join(self.outside, 'secret'), 'w') as f:
            f.write('host secret')
        self.files = self.useFixture(fixtures.TempDir()).path

    def add_image(self, name, path):
        image_id = getattr(uuidsentinel, name)
        self.images[image_id] = path
        return image_id

    def assert_nothing_left(self, instance):
        self.assertEqual([], self.cache_entries())
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual(['secret'], os.listdir(self.outside))
        self.assertEqual(1, os.stat(os.path.join(self.outside,
                                                 'secret')).st_nlink)
        self.assertNotIn(instance.uuid, self.driver.list_instance_uuids())

    def assert_refused(self, image_id, *reasons):
        instance = self.make_instance()
        e = self.assertRaises(nova_exception.ImageUnacceptable, self.spawn,
                              instance, image_id)
        for reason in reasons:
            self.assertIn(reason, str(e))
        self.assert_nothing_left(instance)

    def test_spawn_non_tarball_refused(self):
        path = os.path.join(self.files, 'disk.qcow2')
        with open(path, 'wb') as f:
            f.write(b'QFI\xfb\x00\x00\x00\x03' + b'\x00' * 4096)
        self.assert_refused(self.add_image('qcow2', path),
                            'not a root file system tarball')

    def test_spawn_truncated_tarball_refused(self):
        path = os.path.join(self.files, 'cut.tar.gz')
        with open(self.images[BUSYBOX_IMAGE], 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data[:len(data) // 2])
        self.assert_refused(self.add_image('cut', path), 'could not unpack')

    def test_spawn_tarball_without_init_refused(self):
        self.assert_refused(
            self.add_image('noinit', lxc_fixtures.guest_tarball(
                'no-init', with_init=False, compression='')),
            'no /sbin/init')

    def test_spawn_path_traversal_refused(self):
        climb = '../' * 40 + self.outside.lstrip('/') + '/pwned'
        path = hostile_tarball(os.path.join(self.files, 'climb.tar'),
                               [member(climb, data=b'x')])
        self.assert_refused(self.add_image('climb', path), 'unsafe path')

    def test_spawn_short_path_traversal_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'up.tar'),
                               [member('../x', data=b'x')])
        self.assert_refused(self.add_image('up', path), 'unsafe path')

    def test_spawn_absolute_path_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'abs.tar'), [
            member(os.path.join(self.outside, 'pwned'), data=b'x'),
            member('/etc/x', data=b'x')])
        self.assert_refused(self.add_image('abs', path), 'unsafe path')

    def test_spawn_write_through_symlink_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'sym.tar'), [
            member('escape', tarfile.SYMTYPE, link=self.outside),
            member('escape/pwned', data=b'x')])
        self.assert_refused(self.add_image('sym', path),
                            'written through a symlink')

    def test_spawn_hard_link_through_symlink_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'lnk.tar'), [
            member('escape', tarfile.SYMTYPE, link=self.outside),
            member('stolen', tarfile.LNKTYPE, link='escape/secret')])
        self.assert_refused(self.add_image('lnk', path), 'leaves the tree')

    def test_spawn_download_failure_leaves_nothing(self):
        image_id = self.add_image('gone', None)

        def gone():
            raise nova_exception.ImageNotFound(image_id=image_id)

        self.images[image_id] = gone
        instance = self.make_instance()
        self.assertRaises(nova_exception.ImageNotFound, self.spawn, instance,
                          image_id)
        self.assert_nothing_left(instance)

    def test_spawn_with_ports_refused_before_anything(self):
        instance = self.make_instance()
        self.assertRaises(
            exception.NetworkNotSupported, self.driver.spawn, self.context,
            instance, self.image_meta(), [], None, {},
            network_info=[{'id': uuidsentinel.port}])
        self.assertEqual(0, self.fetch.call_count)
        self.assertFalse(os.path.exists(CONF.lxc.container_path))

    def test_spawn_privileged_not_allowed(self):
        instance = self.make_instance(**{'lxc:privileged': 'true'})
        self.assertRaises(exception.PrivilegedNotAllowed, self.spawn,
                          instance)
        # Refused before anything was fetched or created.
        self.assertEqual(0, self.fetch.call_count)
        self.assertFalse(os.path.exists(CONF.lxc.image_cache_path))
        self.assertFalse(os.path.exists(CONF.lxc.container_path))

    def test_spawn_without_subordinate_ids(self):
        self.flags(group='lxc', idmap_user='no-such-user-nova-lxd-py')
        instance = self.make_instance()
        self.assertRaises(exception.NoSubordinateIds, self.spawn, instance)
        self.assertEqual(0, self.fetch.call_count)
        self.assertFalse(os.path.exists(CONF.lxc.image_cache_path))
        self.assertFalse(os.path.exists(CONF.lxc.container_path))

    def test_spawn_failed_start_leaves_nothing(self):
        # A seccomp policy liblxc cannot parse makes the start itself fail,
        # after the root file system and the config were made.
        policy = os.path.join(self.files, 'broken.seccomp')
        with open(policy, 'w') as f:
            f.write('this is not a seccomp policy\n')
        self.flags(group='lxc', seccomp_profile=policy)
        instance = self.make_instance()
        self.assertRaises(exception.ContainerStartFailed, self.spawn,
                          instance)
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual([], self.driver.list_instance_uuids())
        # The image itself was fine: it stays cached for the next spawn.
        self.assertEqual(1, len(self.cache_entries()))


class PrivilegedTest(DriverTestCase):

    def test_spawn_privileged_when_allowed(self):
        self.flags(group='lxc', allow_privileged=True)
        instance = self.spawn(self.make_instance(
            **{'lxc:privileged': 'true'}))
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual(0, host_uid(self.init_pid(instance)))
        self.assertEqual('0\n', self.run_in_guest(instance, 'id', '-u'))
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
