"""Live migration and suspend to disk through Nova's REST API, on real
containers.

``os-migrateLive`` moves a running server between two compute services
(``host1``, ``host2``): CRIU checkpoints it on the source, its directory
goes over ssh to a private sshd on loopback (as between two machines), and
the destination restores it there, through the same channel. The guest's
processes carry on (the same pids inside it, a counter going on from its
value, a file it wrote); the source keeps nothing. A restore killed on the
destination leaves the server running on its source, ACTIVE, with nothing
of the attempt on either side. Suspend and resume go to disk and back,
across a restart of the compute service.

Both services run in this process and share the host's file system; the
real multi-host cloud (``tools/cloud/cloud.sh up --computes 2``) runs each
in its own mount and network namespace.
"""

import os
import subprocess
import threading
import time

from nova_lxd_py.storage import transfer
from nova_lxd_py.tests.e2e import test_moves
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import live_migration
from nova_lxd_py.virt import suspend

COUNTER = ("setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/n; "
           "sleep 0.1; done' </dev/null >/dev/null 2>&1 &")


class LiveMigrationTest(test_moves.MoveTestBase):

    def setUp(self):
        super().setUp()
        driver = self.computes['host1'].driver
        if not driver._checkpoints.available:
            self.skipTest('no working CRIU: %s'
                          % driver._checkpoints.reason)

    def counter(self, uuid):
        return int(self.run_in_guest(uuid, 'cat', '/tmp/n'))

    def guest_pids(self, uuid):
        out = self.run_in_guest(uuid, 'ps', '-o', 'pid,args')
        return sorted(line for line in out.splitlines()[1:]
                      if not line.split(None, 1)[1].startswith(
                          ('ps ', 'sleep ', '{exe} sleep ')))

    def boot_with_counter(self, hostname='host1'):
        server = self._boot_on(hostname)
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', COUNTER)
        deadline = time.monotonic() + 10
        while self.counter(uuid) < 3:
            self.assertLess(time.monotonic(), deadline, 'no counter')
            time.sleep(0.1)
        return server

    def assertNothingOfTheMoveLeft(self, uuid):
        self.assertFalse(os.path.lexists(live_migration.aside_dir(uuid)))
        self.assertFalse(os.path.lexists(transfer.incoming_dir(uuid)))
        self.assertFalse(os.path.lexists(checkpoint.images_dir(uuid)))
        with open('/proc/mounts') as f:
            self.assertEqual([], [line for line in f
                                  if checkpoint.RESTORE_ROOT in line])

    def _live_migrate(self, server, host,
                      migration_expected_state='completed',
                      server_expected_state='ACTIVE'):
        """Nova's helper, with time for a checkpoint and a restore: its
        own waits 5 s for the migration's end."""
        self.api.post_server_action(
            server['id'],
            {'os-migrateLive': {'host': host, 'block_migration': 'auto'}})
        deadline = time.monotonic() + 90
        while True:
            status = (self.last_migration(server['id']) or {}).get(
                'status')
            if status == migration_expected_state:
                break
            self.assertNotIn(status, ('completed', 'failed', 'error'),
                             'not %s' % migration_expected_state)
            self.assertLess(time.monotonic(), deadline,
                            'migration %s, not %s' % (
                                status, migration_expected_state))
            time.sleep(0.2)
        # Nova finishes the move (or its rollback) after the migration's
        # status: the server's task is done only then.
        while True:
            server = self.api.get_server(server['id'])
            if server['status'] == server_expected_state and \
                    server['OS-EXT-STS:task_state'] is None:
                return server
            self.assertLess(time.monotonic(), deadline,
                            'server %s/%s, not %s' % (
                                server['status'],
                                server['OS-EXT-STS:task_state'],
                                server_expected_state))
            time.sleep(0.2)

    def last_migration(self, uuid):
        migrations = self.api.api_get(
            '/os-migrations?instance_uuid=%s' % uuid).body['migrations']
        return sorted(migrations, key=lambda m: m['id'])[-1] \
            if migrations else None

    def test_live_migration_moves_a_running_guest(self):
        server = self.boot_with_counter()
        uuid = server['id']
        pids = self.guest_pids(uuid)
        before = self.counter(uuid)

        server = self._live_migrate(server, host='host2')
        self.assertEqual('host2', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        # The same processes, carrying on from where they were.
        self.assertEqual(pids, self.guest_pids(uuid))
        after = self.counter(uuid)
        self.assertGreaterEqual(after, before)
        time.sleep(0.5)
        self.assertGreater(self.counter(uuid), after)
        self.assertGuestKeptItsFiles(uuid)
        self.assertNothingOfTheMoveLeft(uuid)
        migration = self.last_migration(uuid)
        self.assertEqual('live-migration', migration['migration_type'])
        self.assertEqual('completed', migration['status'])

        # And back again.
        server = self._live_migrate(server, host='host1')
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual(pids, self.guest_pids(uuid))
        self.assertNothingOfTheMoveLeft(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_killed_restore_leaves_the_guest_running_on_its_source(self):
        server = self.boot_with_counter()
        uuid = server['id']
        pids = self.guest_pids(uuid)
        killer = CriuRestoreKiller()
        killer.start()
        self.addCleanup(killer.stop)

        server = self._live_migrate(server, host='host2',
                                    migration_expected_state='failed',
                                    server_expected_state='ACTIVE')
        self.assertTrue(killer.killed, 'no criu restore was seen')
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertEqual(pids, self.guest_pids(uuid))
        at = self.counter(uuid)
        time.sleep(0.5)
        self.assertGreater(self.counter(uuid), at)
        self.assertGuestKeptItsFiles(uuid)
        self.assertNothingOfTheMoveLeft(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_suspend_to_disk_survives_a_compute_restart(self):
        # host2: the service the harness can restart (its node identity is
        # the process's last).
        server = self.boot_with_counter('host2')
        uuid = server['id']
        pids = self.guest_pids(uuid)
        server = self._suspend_server(server)
        self.assertEqual('STOPPED', self.lxc_state(uuid))
        self.assertTrue(suspend.is_checkpointed(uuid))

        self.computes['host2'] = self.restart_compute_service(
            self.computes['host2'])
        server = self.api.get_server(uuid)
        self.assertEqual('SUSPENDED', server['status'])
        self.assertEqual('STOPPED', self.lxc_state(uuid))

        server = self._resume_server(server)
        self.assertEqual(pids, self.guest_pids(uuid))
        at = self.counter(uuid)
        time.sleep(0.5)
        self.assertGreater(self.counter(uuid), at)
        self.assertFalse(suspend.is_checkpointed(uuid))
        self._delete_server(server)
        self.assertHostClean(uuid)


class CriuRestoreKiller(threading.Thread):
    """Kills the first ``criu restore`` it sees (the destination's)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed = False
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set() and not self.killed:
            found = subprocess.run(['pgrep', '-f', '^[^ ]*criu restore'],
                                   capture_output=True, text=True).stdout
            for pid in found.split():
                subprocess.run(['kill', '-KILL', pid], check=False)
                self.killed = True
            time.sleep(0.005)

    def stop(self):
        self._done.set()
        self.join(5)
