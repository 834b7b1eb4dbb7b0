"""A cold move that breaks off in the middle of its transfer.

The destination's disk fills, or the destination dies (its sshd and the
session receiving the stream are killed at once), while the guest's root
is on its way. Either way the guest must be back on its source as it was
(running, its files unchanged, ACTIVE: Nova's rollback, no ERROR), and
nothing of it may stay on the destination: at once when the destination
can still be reached, else when its compute service starts again.

The two compute services share this host's ``[lxc] container_path`` (see
test_moves), so the destination's incoming directory is the one both see;
the stream still goes through ssh to a private sshd on loopback.
"""

import os
import subprocess
import threading
import time

from nova_lxd_py.storage import transfer
from nova_lxd_py.tests.e2e import base
from nova_lxd_py.tests.e2e import test_moves
from nova_lxd_py.tests import fixtures as lxc_fixtures

# Incompressible data in the guest's root: it has to cross the stream.
DATA_MB = 100
SMALL_DISK = '32m'


class MoveFaultTest(test_moves.MoveTestBase):

    def _boot_with_data(self, megabytes):
        server = self._boot_on('host1')
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', 'head -c %d /dev/urandom > '
                          '/root/data' % (megabytes << 20))
        digest = self.run_in_guest(uuid, 'md5sum', '/root/data')
        return server, uuid, digest

    def _wait_rolled_back(self, server):
        """The move failed at the source: ACTIVE again, on host1."""
        # A clean shutdown, the stopped guest letting go of its disk and
        # the failed stream come first: more than Nova's default 5 s.
        server = self._wait_for_server_parameter(
            server, {'status': 'ACTIVE', 'OS-EXT-STS:task_state': None},
            max_retries=120)
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual(base.FLAVOR_MEMORY_MB, server['flavor']['ram'])
        return server

    def assertBackAsItWas(self, uuid, digest):
        self.assertGuestKeptItsFiles(uuid)
        self.assertEqual(digest,
                         self.run_in_guest(uuid, 'md5sum', '/root/data'))
        self.assertEqual(1, self.root_disk_gib(uuid))
        self.assertNothingInFlight(uuid)

    def incoming_top(self):
        return os.path.join(self.host_dirs.container_path, transfer.INCOMING)

    def test_destination_disk_full_puts_the_guest_back(self):
        server, uuid, digest = self._boot_with_data(DATA_MB)
        # The destination has less room than the guest's root needs.
        top = self.incoming_top()
        os.makedirs(top, mode=0o711, exist_ok=True)
        subprocess.run(['mount', '-t', 'tmpfs', '-o',
                        'size=%s,mode=0711' % SMALL_DISK, 'nova-lxd-py-full',
                        top], check=True)
        self.addCleanup(subprocess.run, ['umount', '-l', top])

        self.api.post_server_action(
            uuid, {'resize': {'flavorRef': self.big_flavor_id}})
        server = self._wait_rolled_back(server)
        fault = self._resize_fault(uuid)
        self.assertIn('could not be moved', fault)
        self.assertIn('No space left on device', fault)
        self.assertBackAsItWas(uuid, digest)
        # The partial copy went at once (the destination was reachable).
        self.assertEqual([], os.listdir(top))

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_destination_dies_mid_stream_then_cleans_up_at_start(self):
        server, uuid, digest = self._boot_with_data(DATA_MB * 2)
        incoming = transfer.incoming_dir(uuid)
        killed = []

        def kill_when_streaming():
            # The receiving tar has begun writing the root: power off.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if os.listdir(incoming):
                        killed.extend(self.sshd.kill())
                        return
                except FileNotFoundError:
                    pass
                time.sleep(0.005)

        killer = threading.Thread(target=kill_when_streaming, daemon=True)
        killer.start()
        self.api.post_server_action(
            uuid, {'resize': {'flavorRef': self.big_flavor_id}})
        killer.join(timeout=150)
        self.assertTrue(killed, 'the stream never reached the destination')

        server = self._wait_rolled_back(server)
        self.assertIn('could not be moved', self._resize_fault(uuid))
        init = self.init_pid(uuid)
        # The source put its guest back; the source's own copy was kept.
        self.assertGuestKeptItsFiles(uuid)
        self.assertEqual(digest,
                         self.run_in_guest(uuid, 'md5sum', '/root/data'))
        # The destination could not be told to remove its partial copy;
        # it does so when its compute service starts again.
        self.assertTrue(os.path.isdir(incoming))
        self.computes['host2'] = self.restart_compute_service(
            self.computes['host2'])
        self.assertFalse(os.path.lexists(incoming))
        self.assertBackAsItWas(uuid, digest)
        # host2's start left host1's guest alone (the same init, running).
        self.assertEqual(init, self.init_pid(uuid))

        # The destination is back: the same move now goes through.
        self.sshd = self.useFixture(lxc_fixtures.SshServer())
        server = self._resize_server(server, self.big_flavor_id)
        self.assertEqual('host2', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual(digest,
                         self.run_in_guest(uuid, 'md5sum', '/root/data'))
        server = self._confirm_resize(server)
        self.assertNothingInFlight(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)
