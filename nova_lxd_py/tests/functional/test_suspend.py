"""Suspend to disk and resume, through the driver, on real guests.

A suspended guest is checkpointed by CRIU into its instance directory and
stopped; resume gives it back its processes (the same pids, a counter
going on from its value), its files, its console and, on a port, its open
TCP connections. It survives a new nova-compute and a host restart (its
disks unmounted, its ports' pairs gone). Where CRIU cannot checkpoint it,
the guest is frozen in memory instead; off and hard reboot drop the
checkpoint; nothing is left of it after a delete.
"""

import os
import subprocess
import time

from nova.compute import power_state
from nova import exception as nova_exception
from nova.network import model as network_model

from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.tests.functional import driver_base
from nova_lxd_py.tests.functional import test_vif
from nova_lxd_py.vif import naming
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import container
from nova_lxd_py.virt import driver
from nova_lxd_py.virt import suspend

# A process of the guest's own (its own session, none of the attach's
# descriptors): only those can be checkpointed.
COUNTER = ("setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/n; "
           "sleep 0.1; done' </dev/null >/dev/null 2>&1 &")


def own(command):
    return "setsid sh -c '%s' </dev/null >/dev/null 2>&1 &" % command


class SuspendMixin:

    def setUp(self):
        super().setUp()
        if not self.driver._checkpoints.available:
            self.skipTest('no working CRIU: %s'
                          % self.driver._checkpoints.reason)

    def counter(self, instance):
        return int(self.run_in_guest(instance, 'cat', '/tmp/n'))

    def start_counter(self, instance):
        self.run_in_guest(instance, 'sh', '-c', COUNTER)
        driver_base.wait_until(lambda: self.counter(instance) > 2,
                               what='the counter')

    def guest_pids(self, instance):
        out = self.run_in_guest(instance, 'ps', '-o', 'pid,args')
        return sorted(line for line in out.splitlines()[1:]
                      if not line.split(None, 1)[1].startswith(
                          ('ps ', 'sleep ', '{exe} sleep ')))

    def assert_checkpointed(self, instance):
        self.assertEqual(power_state.SUSPENDED, self.state(instance))
        self.assertEqual('STOPPED', container.state(instance.uuid)[0])
        self.assertTrue(os.path.exists(os.path.join(
            checkpoint.images_dir(instance.uuid), 'pstree.img')))

    def assert_no_checkpoint(self, instance):
        self.assertFalse(os.path.exists(checkpoint.images_dir(instance.uuid)))
        self.assertFalse(suspend.is_checkpointed(instance.uuid))
        self.assertFalse(container.is_marked(instance.uuid, suspend.FROZEN))


class SuspendTest(SuspendMixin, driver_base.DriverTestCase):

    share_image_cache = True

    def test_suspend_to_disk_and_resume_carries_on(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', 'echo kept > /root/file')
        self.start_counter(instance)
        pids = self.guest_pids(instance)
        self.driver.suspend(self.context, instance)
        self.assert_checkpointed(instance)
        # Its memory is freed: no process of it is left on the host.
        self.assertEqual(('STOPPED', -1), container.state(instance.uuid))

        self.driver.resume(self.context, instance, None)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual(pids, self.guest_pids(instance))
        at_resume = self.counter(instance)
        driver_base.wait_until(lambda: self.counter(instance) > at_resume,
                               what='the counter to go on')
        self.assertEqual('kept', self.run_in_guest(
            instance, 'cat', '/root/file').strip())
        self.assert_no_checkpoint(instance)
        # Twice over: a restored guest checkpoints again.
        self.driver.suspend(self.context, instance)
        self.assert_checkpointed(instance)
        self.driver.resume(self.context, instance, None)
        self.assertEqual(pids, self.guest_pids(instance))

    def test_suspended_guest_survives_compute_and_host_restart(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', 'echo kept > /root/file')
        self.start_counter(instance)
        pids = self.guest_pids(instance)
        at_suspend = self.counter(instance)
        self.driver.suspend(self.context, instance)

        # The host restarts: its mounts go (the root disk's among them),
        # then nova-compute starts afresh.
        cdir = container.container_dir(instance.uuid)
        with open('/proc/mounts') as f:
            points = [line.split()[1] for line in f
                      if line.split()[1].startswith(cdir + '/')]
        self.assertNotEqual([], points)
        for point in reversed(points):
            subprocess.run(['umount', point], check=True)
        self.driver = driver.LXCDriver(self.driver.virtapi)
        self.driver.init_host(driver_base.NODE)
        self.assertEqual(power_state.SUSPENDED, self.state(instance))
        # Nova's resume_guests_state_on_host_boot: it stays suspended.
        self.driver.resume_state_on_host_boot(self.context, instance, None,
                                              None)
        self.assert_checkpointed(instance)

        self.driver.resume(self.context, instance, None)
        self.assertEqual(pids, self.guest_pids(instance))
        self.assertGreaterEqual(self.counter(instance), at_suspend)
        self.assertEqual('kept', self.run_in_guest(
            instance, 'cat', '/root/file').strip())

    def test_a_guest_criu_refuses_is_frozen_instead(self):
        instance = self.spawn()
        pid = self.init_pid(instance)
        # Left in the attach's session: CRIU cannot checkpoint it.
        self.run_in_guest(instance, 'sh', '-c',
                          'sleep 300 >/dev/null 2>&1 & exit 0')
        self.driver.suspend(self.context, instance)
        self.assertEqual(power_state.SUSPENDED, self.state(instance))
        self.assertEqual(('FROZEN', pid), container.state(instance.uuid))
        self.assertFalse(os.path.exists(checkpoint.images_dir(instance.uuid)))
        self.driver.resume(self.context, instance, None)
        self.assertEqual(('RUNNING', pid), container.state(instance.uuid))
        self.assert_no_checkpoint(instance)

    def test_suspend_to_disk_off_freezes(self):
        self.flags(group='lxc', suspend_to_disk=False)
        instance = self.spawn()
        pid = self.init_pid(instance)
        self.driver.suspend(self.context, instance)
        self.assertEqual(power_state.SUSPENDED, self.state(instance))
        self.assertEqual(('FROZEN', pid), container.state(instance.uuid))
        self.driver.resume(self.context, instance, None)
        self.assertEqual(('RUNNING', pid), container.state(instance.uuid))

    def test_off_and_hard_reboot_drop_the_checkpoint(self):
        instance = self.spawn()
        self.driver.suspend(self.context, instance)
        self.assert_checkpointed(instance)
        # Nova's hard reboot of a suspended server: a fresh boot.
        self.driver.reboot(self.context, instance, None, 'HARD')
        self.wait_booted(instance, times=2)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assert_no_checkpoint(instance)
        # Shelving a suspended server powers it off first.
        self.driver.suspend(self.context, instance)
        self.assert_checkpointed(instance)
        self.driver.power_off(instance)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
        self.assert_no_checkpoint(instance)
        self.assertRaises(nova_exception.InstanceResumeFailure,
                          self.driver.resume, self.context, instance, None)

    def test_failed_restore_keeps_the_checkpoint_and_says_why(self):
        instance = self.spawn()
        self.driver.suspend(self.context, instance)
        os.unlink(os.path.join(checkpoint.images_dir(instance.uuid),
                               'pstree.img'))
        exc = self.assertRaises(nova_exception.InstanceResumeFailure,
                                self.driver.resume, self.context, instance,
                                None)
        self.assertIn('CRIU could not restore', str(exc))
        self.assertEqual(power_state.SUSPENDED, self.state(instance))
        with open('/proc/mounts') as f:
            self.assertEqual([], [line for line in f
                                  if checkpoint.RESTORE_ROOT in line])
        # The operator's way out: a hard reboot starts it afresh.
        self.driver.reboot(self.context, instance, None, 'HARD')
        self.wait_booted(instance, times=2)
        self.assert_no_checkpoint(instance)

    def test_delete_of_a_suspended_guest_leaves_nothing(self):
        instance = self.spawn()
        self.driver.suspend(self.context, instance)
        self.assert_checkpointed(instance)
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))


class SuspendOnPortTest(SuspendMixin, test_vif.VifTestCase):
    """A guest on an OVS port keeps its MAC, address and an open TCP
    connection through suspend and resume."""

    def setUp(self):
        super().setUp()
        self.ovs = self.useFixture(lxc_fixtures.OpenVSwitch())
        self.net = self.useFixture(test_vif.Network(bridge=self.ovs.bridge))

    def port(self, host):
        return self.net.port(host, network_model.VIF_TYPE_OVS,
                             {'datapath_type': 'netdev'})

    def test_tcp_connection_survives_suspend_and_resume(self):
        a, b = self.port(1), self.port(2)
        client, _ = self.spawn_on(a)
        server, nw_server = self.spawn_on(b)
        self.configure(client, a)
        self.configure(server, b)
        # The server sends a line every 0.1 s on one connection; the
        # client writes what it receives to a file (busybox's nc hangs up
        # at the end of its input: it gets none that ends).
        self.run_in_guest(server, 'sh', '-c', own(
            'i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done | '
            'nc -l -p 9000'))
        time.sleep(0.3)
        self.run_in_guest(client, 'sh', '-c', own(
            'sleep 100000 | nc %s 9000 > /tmp/recv' % self.net.address(b)))
        driver_base.wait_until(lambda: self.received(client) > 5,
                               what='data from the server')
        self.driver.suspend(self.context, server)
        self.assert_checkpointed(server)
        # Its port's guest end is back on the host, the host end in OVS.
        self.assertIn(naming.peer_name(b), test_vif.host_links())
        self.assertIn(naming.host_name(b), self.ovs.ports())
        during = self.received(client)
        time.sleep(1)
        self.assertEqual(during, self.received(client))

        self.driver.resume(self.context, server, nw_server)
        self.assert_guest_nic(server, b)
        driver_base.wait_until(lambda: self.received(client) > during + 5,
                               timeout=20, what='data after the resume')
        # One connection throughout: every number once, in order.
        lines = self.run_in_guest(client, 'cat', '/tmp/recv').split()
        self.assertEqual([str(i) for i in range(1, len(lines) + 1)], lines)
        self.assertIn('2 packets received', self.ping(client, b))

    def received(self, client):
        out = self.run_in_guest(client, 'sh', '-c',
                                'wc -l < /tmp/recv 2>/dev/null || echo 0')
        return int(out.strip() or 0)
