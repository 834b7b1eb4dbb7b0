"""Checkpoint and restore of real guests through liblxc and CRIU.

A guest the driver spawned is checkpointed (and so stopped) and restored
from its images: its processes carry on where they were (a counter in the
guest's memory and tmpfs goes on from its value, the same guest pids), its
root file system is mounted again for it, and its console works again
(written to the same console log). Failures say why and leave nothing.
"""

import os
import time

from nova_lxd_py.tests.functional import driver_base
from nova_lxd_py.tests.functional import test_suspend
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import container

TIMEOUT = 60
COUNTER = test_suspend.COUNTER


class CheckpointRestoreTest(test_suspend.SuspendMixin,
                            driver_base.DriverTestCase):
    """Skipped without a working CRIU (SuspendMixin)."""

    share_image_cache = True

    def restore_mounts(self):
        with open('/proc/mounts') as f:
            return [line for line in f if checkpoint.RESTORE_ROOT in line]

    def test_guest_carries_on_after_restore(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', COUNTER)
        driver_base.wait_until(lambda: self.counter(instance) > 3,
                               what='the counter')
        before = self.guest_pids(instance)

        started = time.monotonic()
        self.assertEqual('', checkpoint.dump(instance.uuid, TIMEOUT))
        dumped = time.monotonic() - started
        self.assertEqual('STOPPED', container.state(instance.uuid)[0])
        self.assertTrue(os.path.exists(os.path.join(
            checkpoint.images_dir(instance.uuid), 'pstree.img')))

        started = time.monotonic()
        self.assertEqual('', checkpoint.restore(instance.uuid, TIMEOUT))
        restored = time.monotonic() - started
        self.assertEqual('RUNNING', container.state(instance.uuid)[0])
        self.assertEqual(before, self.guest_pids(instance))
        # The counter's memory came back: it goes on, it did not restart.
        at_restore = self.counter(instance)
        self.assertGreater(at_restore, 3)
        driver_base.wait_until(
            lambda: self.counter(instance) > at_restore + 3,
            what='the counter to go on')
        # The console is there again and written to the same log.
        self.run_in_guest(instance, 'sh', '-c',
                          'echo console-after-restore > /dev/console')
        driver_base.wait_until(
            lambda: 'console-after-restore' in self.console(instance),
            what='the console after the restore')
        self.assertIn(driver_base.BOOTED, self.console(instance))
        self.assertEqual([], self.restore_mounts())
        self.assertFalse(os.path.exists(os.path.join(
            container.container_dir(instance.uuid),
            checkpoint.RESTORE_CONFIG)))
        # And it stops as any guest does (its console keeper with it).
        self.driver.power_off(instance, timeout=0)
        self.assertEqual('STOPPED', container.state(instance.uuid)[0])
        print('dump %.2fs restore %.2fs' % (dumped, restored))

    def test_restore_of_no_checkpoint_says_why_and_leaves_nothing(self):
        instance = self.spawn()
        self.driver.power_off(instance, timeout=0)
        why = checkpoint.restore(instance.uuid, TIMEOUT)
        self.assertNotEqual('', why)
        self.assertEqual('STOPPED', container.state(instance.uuid)[0])
        self.assertEqual([], self.restore_mounts())
        self.assertFalse(os.path.exists(os.path.join(
            container.container_dir(instance.uuid), checkpoint.RESTORE_ROOT)))
        # The guest still starts as usual.
        self.driver.power_on(self.context, instance, None)
        self.assertEqual('RUNNING', container.state(instance.uuid)[0])

    def test_dump_failure_keeps_the_guest_running(self):
        instance = self.spawn()
        pid = self.init_pid(instance)
        # A process the attach started and left in the attach's session:
        # CRIU refuses it (its session leader is outside the guest).
        self.run_in_guest(instance, 'sh', '-c',
                          'sleep 300 >/dev/null 2>&1 & exit 0')
        why = checkpoint.dump(instance.uuid, TIMEOUT)
        self.assertNotEqual('', why)
        self.assertEqual(('RUNNING', pid), container.state(instance.uuid))
