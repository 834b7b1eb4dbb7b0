"""The flavor's root disk size on real containers, for each backend.

A guest that writes past ``root_gb`` gets ENOSPC (the host's file system
only holds what it really wrote), and nothing of the disk (mount, loop
device, image file) outlives the instance.
"""

import os
import subprocess

import ddt

from nova_lxd_py.storage.backends import disk
from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.tests.functional import driver_base
from nova_lxd_py.virt import container

FILL = ('dd if=/dev/zero of=/root/fill bs=1M count=1200 2>&1; '
        'echo "dd exit $?"; sync')


def loop_devices(path):
    out = subprocess.run(['losetup', '-a'], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if path in line]


@ddt.ddt
class RootDiskTest(driver_base.DriverTestCase):

    share_image_cache = True

    def use(self, backend):
        self.flags(group='lxc', root_disk_backend=backend)
        self.driver = type(self.driver)(self.driver.virtapi)
        self.driver.init_host(driver_base.NODE)

    @ddt.data('overlay', 'dir')
    def test_guest_writing_past_root_gb_gets_enospc(self, backend):
        self.use(backend)
        instance = self.spawn()   # the flavor has root_gb=1
        cdir = container.container_dir(instance.uuid)
        code, out = container.run_in_guest(instance.uuid,
                                           ['sh', '-c', FILL], 120)
        self.assertIn('No space left on device', out)
        self.assertNotIn('dd exit 0', out)
        # The guest is fine and the host holds at most the disk's size.
        self.assertEqual('busybox-guest', self.run_in_guest(
            instance, 'cat', '/etc/image-marker'))
        used = os.stat(disk.image_path(cdir)).st_blocks * 512
        self.assertLess(used, 1100 << 20)
        self.assertEqual(1 << 30, os.path.getsize(disk.image_path(cdir)))
        self.assertTrue(loop_devices(instance.uuid))

        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual([], loop_devices(instance.uuid))

    @ddt.data('overlay', 'dir')
    def test_disk_is_mounted_again_before_a_start(self, backend):
        # After a host reboot the mount is gone; power_on makes it again.
        self.use(backend)
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', 'echo kept > /root/file')
        self.driver.power_off(instance)
        cdir = container.container_dir(instance.uuid)
        disk.unmount(cdir)
        self.assertFalse(os.path.ismount(disk.mount_point(cdir)))
        self.driver.power_on(self.context, instance, None)
        self.wait_booted(instance, times=2)
        self.assertEqual('kept', self.run_in_guest(
            instance, 'cat', '/root/file').strip())

    @ddt.data('overlay', 'dir')
    def test_no_root_gb_means_no_disk_image(self, backend):
        self.use(backend)
        instance = self.make_instance()
        instance.flavor.root_gb = 0
        self.spawn(instance)
        cdir = container.container_dir(instance.uuid)
        self.assertFalse(os.path.exists(disk.image_path(cdir)))
        self.assertEqual('busybox-guest', self.run_in_guest(
            instance, 'cat', '/etc/image-marker'))
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
