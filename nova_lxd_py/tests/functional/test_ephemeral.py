"""Ephemeral disks and swap limits on real containers."""

import os

from nova.virt import driver as nova_driver

from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.tests.functional import driver_base
from nova_lxd_py.tests.functional import test_root_disk
from nova_lxd_py.virt import container
from nova_lxd_py.virt import host


def memory_cgroup_file(pid, name):
    """Path of memory cgroup file ``name`` of process ``pid``."""
    with open('/proc/%d/cgroup' % pid) as f:
        lines = [line.strip().split(':', 2) for line in f]
    for _, controllers, path in lines:
        if 'memory' in controllers.split(','):
            return os.path.join(host.CGROUP_ROOT, 'memory',
                                path.lstrip('/'), name)
    path = [p for _, c, p in lines if c == ''][0]
    return os.path.join(host.CGROUP_ROOT, path.lstrip('/'), name)


class EphemeralDiskTest(driver_base.DriverTestCase):

    share_image_cache = True

    def test_flavor_ephemeral_disk_mounted_at_mnt(self):
        instance = self.make_instance()
        instance.flavor.ephemeral_gb = 1
        self.spawn(instance)
        df = self.run_in_guest(instance, 'df', '-k', '/mnt').splitlines()
        size_kb = int(df[-1].split()[1])
        self.assertGreater(size_kb, 900 * 1024)
        self.assertLess(size_kb, 1024 * 1024)
        self.run_in_guest(instance, 'sh', '-c', 'echo data > /mnt/file')
        code, out = container.run_in_guest(instance.uuid, [
            'sh', '-c', 'dd if=/dev/zero of=/mnt/fill bs=1M count=1100 '
            '2>&1'], 120)
        self.assertIn('No space left on device', out)
        # Kept across a stop and start (mounted again before the start).
        self.driver.power_off(instance)
        self.driver.power_on(self.context, instance, None)
        self.wait_booted(instance, times=2)
        self.assertEqual('data', self.run_in_guest(
            instance, 'cat', '/mnt/file').strip())
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual([], test_root_disk.loop_devices(instance.uuid))

    def test_block_device_mapping_ephemerals(self):
        instance = self.make_instance()
        info = {'ephemerals': [
            {'num': 0, 'size': 1, 'device_name': '/dev/vdb',
             'guest_format': None},
            {'num': 1, 'size': 2, 'device_name': '/dev/vdc',
             'guest_format': 'ext4'}]}
        self.assertEqual(2, len(
            nova_driver.block_device_info_get_ephemerals(info)))
        self.driver.spawn(self.context, instance, self.image_meta(), [],
                          None, {}, network_info=None,
                          block_device_info=info)
        self.wait_booted(instance)
        sizes = {}
        for path in ('/mnt', '/media/ephemeral1'):
            df = self.run_in_guest(instance, 'df', '-k', path).splitlines()
            sizes[path] = round(int(df[-1].split()[1]) / 2**20)
        self.assertEqual({'/mnt': 1, '/media/ephemeral1': 2}, sizes)
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_swap_limit_from_the_flavor(self):
        if not host.swap_accounting():
            self.skipTest('this host does not account swap in cgroups')
        instance = self.make_instance(memory_mb=128)
        instance.flavor.swap = 64
        self.spawn(instance)
        pid = self.init_pid(instance)
        if host.cgroup_version() == 1:
            path = memory_cgroup_file(pid, 'memory.memsw.limit_in_bytes')
            expected = (128 + 64) << 20
        else:
            path = memory_cgroup_file(pid, 'memory.swap.max')
            expected = 64 << 20
        with open(path) as f:
            self.assertEqual(expected, int(f.read()))
