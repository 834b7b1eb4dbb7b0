"""A Debian guest with systemd and cloud-init, as a Nova instance.

The image is built by debootstrap (``tests.debian_image``, cached under
/var/tmp) and served by the Glance seam like the busybox guest. The guest is
an unprivileged container (the default): systemd must come up in it
(``systemctl is-system-running`` says running or degraded), stop cleanly
when Nova powers it off (its own shutdown, not a kill) and come back after a
soft reboot as a new init.
"""

import time

from nova.compute import power_state

from nova_lxd_py.tests import debian_image
from nova_lxd_py.tests.functional import driver_base
from nova_lxd_py.virt import container

DEBIAN_IMAGE = 'deb1a000-0000-4000-8000-000000000001'
BOOT_TIMEOUT = 60
# Printed by systemd on the console as it powers the guest off or reboots.
POWER_OFF_LINE = 'System Power Off'
REBOOT_LINE = 'System Reboot'


class DebianGuestTest(driver_base.DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        # unittest.SkipTest (a clear reason) where debootstrap is missing.
        self.images[DEBIAN_IMAGE] = debian_image.build()
        # systemd stops its units on halt; Nova's default is 60 s.
        self.flags(group='lxc', soft_reboot_timeout=BOOT_TIMEOUT)

    def system_state(self, instance):
        code, out = container.run_in_guest(
            instance.uuid, ['systemctl', 'is-system-running'], 10)
        return out.strip()

    def wait_running(self, instance):
        """Seconds until systemd is up (running or degraded)."""
        start = time.monotonic()
        state = driver_base.wait_until(
            lambda: self.system_state(instance) in ('running', 'degraded')
            and self.system_state(instance),
            timeout=BOOT_TIMEOUT, what='systemd to finish booting')
        if state == 'degraded':
            failed = self.run_in_guest(
                instance, 'systemctl', '--failed', '--no-legend', '--plain')
            self.fail('systemd is degraded, failed units:\n%s\nconsole:\n%s'
                      % (failed, self.console(instance)[-3000:]))
        return time.monotonic() - start

    def boot(self):
        instance = self.spawn(image_id=DEBIAN_IMAGE, wait_boot=False)
        self.addCleanup(self.driver.destroy, self.context, instance, None)
        return instance

    def test_systemd_boots_unprivileged(self):
        instance = self.boot()
        self.wait_running(instance)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual('lxc\n', self.run_in_guest(
            instance, 'systemd-detect-virt', '--container'))
        # Unprivileged: the guest's root is a subordinate uid on the host.
        self.assertNotEqual(0, driver_base.host_uid(self.init_pid(instance)))
        # cloud-init ran its stages. No datasource here: it settles on None,
        # which cloud-init 23 and later count as a recoverable error (exit
        # status 2), 22.4 (Debian 12) does not.
        code, out = container.run_in_guest(
            instance.uuid, ['cloud-init', 'status', '--wait', '--long'], 30)
        self.assertIn(code, (0, 2), out)
        self.assertIn('status: done', out)
        self.assertIn('DataSourceNone', out)
        self.assertNotIn('ssh_host', out)   # no sshd: no host keys tried

    def test_power_off_is_clean_shutdown(self):
        instance = self.boot()
        self.wait_running(instance)
        start = time.monotonic()
        self.driver.power_off(instance, timeout=BOOT_TIMEOUT,
                              retry_interval=BOOT_TIMEOUT)
        took = time.monotonic() - start
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
        # systemd's own shutdown ran to its end, well before the timeout
        # after which the driver kills the guest.
        self.assertLess(took, BOOT_TIMEOUT - 5)
        self.assertIn(POWER_OFF_LINE, self.console(instance))
        # And it comes back.
        self.driver.power_on(self.context, instance, None)
        self.wait_running(instance)

    def test_soft_reboot_starts_new_init(self):
        instance = self.boot()
        self.wait_running(instance)
        old_pid = self.init_pid(instance)
        self.driver.reboot(self.context, instance, None, 'SOFT')
        self.assertNotEqual(old_pid, self.init_pid(instance))
        # systemd's own reboot, not the driver's stop and start.
        self.assertIn(REBOOT_LINE, self.console(instance))
        self.wait_running(instance)
