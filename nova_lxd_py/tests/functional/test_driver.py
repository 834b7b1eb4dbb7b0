"""LXCDriver lifecycle, image cache and host resources on real containers
(run as root); see driver_base for the seam and the base class."""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import lxc  # noqa: E402
from nova.compute import power_state  # noqa: E402
from nova.compute import provider_tree  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova import objects  # noqa: E402
from oslo_utils.fixture import uuidsentinel  # noqa: E402

from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402

from nova_lxd_py.tests.functional.driver_base import BUSYBOX_IMAGE  # noqa
from nova_lxd_py.tests.functional.driver_base import CONF  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import DriverTestCase  # noqa
from nova_lxd_py.tests.functional.driver_base import host_uid  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import NODE  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import SHUTTING_DOWN  # noqa


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
        # After a host reboot Nova powers on what it believes is running;
        # a guest frozen by suspend (not checkpointed to disk) is thawed.
        self.flags(group='lxc', suspend_to_disk=False)
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

    def test_privsep_daemon_keeps_no_file_of_a_removed_container(self):
        # The daemon lives as long as nova-compute; a descriptor kept per
        # container would exhaust its limit and pin deleted files. (Here
        # privsep runs in this process.)
        def ours():
            found = []
            for fd in os.listdir('/proc/self/fd'):
                try:
                    target = os.readlink('/proc/self/fd/' + fd)
                except OSError:   # closed meanwhile
                    continue
                if target.startswith(CONF.lxc.container_path):
                    found.append(target)
            return found

        for hostname in ('fd-1', 'fd-2'):
            instance = self.spawn(self.make_instance(hostname=hostname))
            self.driver.power_off(instance)
            self.driver.power_on(self.context, instance, None)
            self.driver.get_info(instance)
            self.driver.destroy(self.context, instance, None)
        self.assertEqual([], ours())

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

    def test_cache_entry_named_by_image_hash_and_id_range(self):
        self.spawn()
        digest = self.driver._images._glance.get(
            self.context, BUSYBOX_IMAGE)['os_hash_value']
        idmap = host.idmap()
        self.assertEqual(['%s.%s.u%dg%d' % (BUSYBOX_IMAGE, digest[:16],
                                            idmap.uid_start,
                                            idmap.gid_start)],
                         self.cache_entries())

    def test_cache_image_precaches_for_spawn(self):
        # Nova's aggregate image pre-caching calls this on each host.
        self.assertTrue(self.driver.cache_image(self.context, BUSYBOX_IMAGE))
        self.assertFalse(self.driver.cache_image(self.context,
                                                 BUSYBOX_IMAGE))
        self.spawn()
        self.assertEqual(1, self.fetch.call_count)

    def test_manage_image_cache_removes_only_unused_entries(self):
        other = uuidsentinel.other_image
        self.images[other] = lxc_fixtures.guest_tarball('other-image')
        first = self.spawn()
        self.driver.cache_image(self.context, other)
        self.assertEqual(2, len(self.cache_entries()))
        self.flags(group='image_cache',
                   remove_unused_original_minimum_age_seconds=0)
        # Nova lists no instance: the container's own config keeps its
        # image, and it keeps running.
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual([BUSYBOX_IMAGE], [
            n.split('.')[0] for n in self.cache_entries()])
        self.assertEqual('booted', self.run_in_guest(
            first, 'sh', '-c', 'test -x /bin/busybox && echo booted').strip())
        self.driver.destroy(self.context, first, None)
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual([], self.cache_entries())

    def test_manage_image_cache_keeps_young_and_listed_entries(self):
        other = uuidsentinel.other_image
        self.images[other] = lxc_fixtures.guest_tarball('other-image')
        self.driver.cache_image(self.context, other)
        self.driver.cache_image(self.context, BUSYBOX_IMAGE)
        # Nova's default minimum age (a day): nothing is old enough.
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual(2, len(self.cache_entries()))
        self.flags(group='image_cache',
                   remove_unused_original_minimum_age_seconds=0)
        listed = objects.Instance(uuid=uuidsentinel.listed, image_ref=other,
                                  deleted=False)
        self.driver.manage_image_cache(self.context, [listed])
        self.assertEqual([other], [
            n.split('.')[0] for n in self.cache_entries()])
        self.flags(group='image_cache', remove_unused_base_images=False)
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual(1, len(self.cache_entries()))

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
