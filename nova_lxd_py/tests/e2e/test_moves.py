"""Resize, cold migration, evacuate and unshelve between two compute
services, through Nova's REST API, on real containers.

Both compute services (``host1``, ``host2``) run in this process, so they
share the host's file system and ``[lxc] container_path``; what keeps the
test honest is the transfer: a move between them goes through ssh to a
private sshd on loopback (``SshServer``), as between two machines, and
only a move on one service copies locally. The real multi-host cloud
(``tools/cloud/cloud.sh up --computes 2``) runs each host in its own mount
and network namespace.
"""

import os
import shutil
import time

from nova.compute import power_state
from nova.tests.functional.api import client
from nova.virt import node

from nova_lxd_py.storage import ephemeral
from nova_lxd_py.storage import transfer
from nova_lxd_py.storage import backends
from nova_lxd_py.storage.backends import disk
from nova_lxd_py.tests.e2e import base
from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.virt import container
from nova_lxd_py.virt import migration

SERVER_NAME = 'e2e-move'
BOOTED = 'guest init: booted %s' % SERVER_NAME
NOTE = 'echo before-the-move > /root/note'
BIG_MEMORY_MB = 512


class MoveTestBase(base.ContainerTestBase):
    """Two compute services on this host's liblxc; moves cross ssh."""

    # The API answers before the compute services move the server, as in
    # a real cloud: a failed move shows in the server, not the request.
    CAST_AS_CALL = False

    def setUp(self):
        super().setUp()
        self.image_id = self._create_guest_image()
        self.flavor_id = self._create_container_flavor()
        self.big_flavor_id = self._create_flavor(
            name='big', memory_mb=BIG_MEMORY_MB, vcpu=base.FLAVOR_VCPUS,
            disk=base.FLAVOR_DISK_GB + 1, ephemeral=0,
            extra_spec=base.CONTAINER_FLAVOR_SPECS)

    def _setup_services(self):
        # Moves go to the destination's my_ip: loopback, where the sshd is.
        self.flags(my_ip=lxc_fixtures.SshServer.ADDRESS)
        self.sshd = self.useFixture(lxc_fixtures.SshServer())
        super()._setup_services()

    def _setup_compute_service(self):
        for hostname in ('host1', 'host2'):
            # Each host has its own node identity (a file in its own
            # state_path on a real host; here one process-wide cache).
            node.LOCAL_NODE_UUID = None
            self._start_compute(hostname)
        return self.computes['host1']

    def _boot_on(self, hostname, flavor_id=None):
        server = self._create_server(
            name=SERVER_NAME, image_uuid=self.image_id,
            flavor_id=flavor_id or self.flavor_id, networks='none',
            host=hostname)
        self.assertEqual(hostname, server['OS-EXT-SRV-ATTR:host'])
        self.wait_for_console(server['id'], BOOTED)
        self.run_in_guest(server['id'], 'sh', '-c', NOTE)
        return server

    def assertGuestKeptItsFiles(self, uuid):
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertEqual('before-the-move\n',
                         self.run_in_guest(uuid, 'cat', '/root/note'))

    def root_disk_gib(self, uuid):
        total = disk.usage(container.container_dir(uuid))[1]
        return round(total / (1 << 30))

    def memory_limit(self, uuid):
        for line in container.read_config(uuid).splitlines():
            key, _, value = line.partition('=')
            if key.strip() in ('lxc.cgroup2.memory.max',
                               'lxc.cgroup.memory.limit_in_bytes'):
                return int(value.strip())
        return None

    def assertNothingInFlight(self, uuid):
        """No kept source copy and no incoming tree of ``uuid``."""
        self.assertFalse(os.path.lexists(migration.kept_dir(uuid)))
        self.assertFalse(os.path.lexists(transfer.incoming_dir(uuid)))

    def _disable(self, hostname):
        service = self.admin_api.get_services(binary='nova-compute',
                                              host=hostname)[0]
        self.admin_api.put_service(service['id'], {'status': 'disabled'})

    def _resize_fault(self, uuid, timeout=30):
        """The messages of the resize's failed events (the move's fault).

        Nova rolls the instance back to ACTIVE before the failed event is
        finished with its message (wrap_instance_event writes it as the
        exception leaves the method), so a test that saw ACTIVE waits for
        the message too.
        """
        deadline = time.monotonic() + timeout
        while True:
            actions = self.api.get_instance_actions(uuid)
            resize = [a for a in actions if a['action'] == 'resize'][0]
            action = self.api.api_get(
                '/servers/%s/os-instance-actions/%s' % (
                    uuid, resize['request_id'])).body['instanceAction']
            # 'details' (microversion 2.84): the message of the fault.
            details = [e['details'] for e in action['events']
                       if e.get('details')]
            if details or time.monotonic() > deadline:
                return ' '.join(details)
            time.sleep(0.1)


class ResizeTest(MoveTestBase):

    def test_resize_to_the_other_host_and_confirm(self):
        server = self._boot_on('host1')
        uuid = server['id']
        self.assertEqual(1, self.root_disk_gib(uuid))

        server = self._resize_server(server, self.big_flavor_id)
        self.assertEqual('host2', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('VERIFY_RESIZE', server['status'])
        self.assertGuestKeptItsFiles(uuid)
        self.assertEqual(2, self.root_disk_gib(uuid))
        self.assertEqual(BIG_MEMORY_MB << 20, self.memory_limit(uuid))
        self.assertTrue(os.path.isdir(migration.kept_dir(uuid)))
        # The kept copy holds on to its cached image until confirmed.
        cached = {backends.image_of(p)
                  for p in migration.kept_rootfs_paths()} - {None}
        self.assertEqual(1, len(cached))      # overlay, the default
        self.assertTrue(os.path.isdir(cached.pop()))

        server = self._confirm_resize(server)
        self.assertEqual([], migration.kept_rootfs_paths())
        self.assertEqual('big', server['flavor']['original_name'])
        self.assertNothingInFlight(uuid)
        self.assertGuestKeptItsFiles(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_resize_revert_returns_the_guest_as_it_was(self):
        server = self._boot_on('host1')
        uuid = server['id']
        config_before = container.read_config(uuid)

        server = self._resize_server(server, self.big_flavor_id)
        self.assertEqual('host2', server['OS-EXT-SRV-ATTR:host'])
        self.run_in_guest(uuid, 'sh', '-c', 'echo after > /root/later')

        server = self._revert_resize(server)
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('ACTIVE', server['status'])
        self.assertGuestKeptItsFiles(uuid)
        # The source copy as it was: what the guest wrote on the
        # destination went with the destination's copy.
        self.run_in_guest(uuid, 'test', '!', '-e', '/root/later')
        self.assertEqual(1, self.root_disk_gib(uuid))
        self.assertEqual(config_before, container.read_config(uuid))
        self.assertNothingInFlight(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_resize_on_the_same_host_copies_locally(self):
        self.flags(allow_resize_to_same_host=True)
        self._disable('host2')
        server = self._boot_on('host1')
        uuid = server['id']
        # Nothing may go through ssh for a move on one host.
        self.sshd.stop()

        server = self._resize_server(server, self.big_flavor_id)
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertGuestKeptItsFiles(uuid)
        self.assertEqual(2, self.root_disk_gib(uuid))

        server = self._revert_resize(server)
        self.assertGuestKeptItsFiles(uuid)
        self.assertEqual(1, self.root_disk_gib(uuid))
        self.assertNothingInFlight(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_resize_of_a_stopped_server_keeps_it_stopped(self):
        server = self._boot_on('host1')
        uuid = server['id']
        server = self._stop_server(server)

        server = self._resize_server(server, self.big_flavor_id)
        self.assertEqual(power_state.SHUTDOWN,
                         server['OS-EXT-STS:power_state'])
        self.assertEqual('STOPPED', self.lxc_state(uuid))
        self.api.post_server_action(uuid, {'confirmResize': None})
        server = self._wait_for_state_change(server, 'SHUTOFF')
        self.assertNothingInFlight(uuid)

        self._start_server(server)
        self.assertGuestKeptItsFiles(uuid)
        self.assertEqual(2, self.root_disk_gib(uuid))
        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_resize_to_a_smaller_root_disk_is_refused_by_the_api(self):
        server = self._boot_on('host1', flavor_id=self.big_flavor_id)
        uuid = server['id']
        init = self.init_pid(uuid)

        error = self.assertRaises(
            client.OpenStackApiException, self.api.post_server_action,
            uuid, {'resize': {'flavorRef': self.flavor_id}})
        self.assertEqual(400, error.response.status_code)
        self.assertEqual(init, self.init_pid(uuid))
        self.assertGuestKeptItsFiles(uuid)
        self.assertNothingInFlight(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_resize_to_a_smaller_ephemeral_disk_is_refused_untouched(self):
        with_ephemeral = self._create_flavor(
            name='eph', memory_mb=base.FLAVOR_MEMORY_MB,
            vcpu=base.FLAVOR_VCPUS, disk=base.FLAVOR_DISK_GB, ephemeral=1,
            extra_spec=base.CONTAINER_FLAVOR_SPECS)
        server = self._boot_on('host1', flavor_id=with_ephemeral)
        uuid = server['id']
        init = self.init_pid(uuid)

        self.api.post_server_action(
            uuid, {'resize': {'flavorRef': self.flavor_id}})
        server = self._wait_for_server_parameter(
            server, {'status': 'ACTIVE', 'OS-EXT-STS:task_state': None})
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual('eph', server['flavor']['original_name'])
        self.assertIn('ephemeral disks cannot shrink',
                      self._resize_fault(uuid))
        # Refused before anything was touched: the same init, running.
        self.assertEqual(init, self.init_pid(uuid))
        self.assertGuestKeptItsFiles(uuid)
        self.assertNothingInFlight(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_destination_unreachable_leaves_the_guest_on_its_source(self):
        server = self._boot_on('host1')
        uuid = server['id']
        self.sshd.stop()   # the destination is gone

        self.api.post_server_action(
            uuid, {'resize': {'flavorRef': self.big_flavor_id}})
        server = self._wait_for_server_parameter(
            server, {'status': 'ACTIVE', 'OS-EXT-STS:task_state': None})
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertIn('could not be moved', self._resize_fault(uuid))
        self.assertGuestKeptItsFiles(uuid)
        self.assertEqual(1, self.root_disk_gib(uuid))
        self.assertNothingInFlight(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)


class MigrateTest(MoveTestBase):

    def test_cold_migrate_to_a_named_host_then_revert(self):
        server = self._boot_on('host1')
        uuid = server['id']

        server = self._migrate_server(server, host='host2')
        self.assertEqual('host2', server['OS-EXT-SRV-ATTR:host'])
        self.assertGuestKeptItsFiles(uuid)

        server = self._revert_resize(server)
        self.assertEqual('host1', server['OS-EXT-SRV-ATTR:host'])
        self.assertGuestKeptItsFiles(uuid)
        self.assertNothingInFlight(uuid)

        server = self._migrate_server(server)
        self.assertEqual('host2', server['OS-EXT-SRV-ATTR:host'])
        server = self._confirm_resize(server)
        self.assertGuestKeptItsFiles(uuid)
        self.assertNothingInFlight(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)


class EvacuateTest(MoveTestBase):

    def test_evacuate_rebuilds_on_the_other_host_from_the_image(self):
        server = self._boot_on('host1')
        uuid = server['id']
        # host1 dies: its service stops, its guests with it, and its disk
        # is out of reach (here: moved out of the shared container_path).
        self.computes['host1'].stop()
        container.stop(uuid)
        cdir = container.container_dir(uuid)
        # Its mounts went down with it (they are this kernel's here).
        self.computes['host1'].driver._backend.deactivate(cdir)
        ephemeral.destroy(cdir)
        dead = os.path.join(self.host_dirs.container_path,
                            'dead-host1-' + uuid)
        os.rename(cdir, dead)
        self.addCleanup(shutil.rmtree, dead, ignore_errors=True)
        service = self.admin_api.get_services(binary='nova-compute',
                                              host='host1')[0]
        self.admin_api.put_service_force_down(service['id'], True)

        # Since microversion 2.95 an evacuated guest arrives stopped: the
        # operator starts it once the old host is known to be fenced.
        server = self._evacuate_server(server, expected_host='host2',
                                       expected_state='SHUTOFF')
        self.assertEqual('STOPPED', self.lxc_state(uuid))
        server = self._start_server(server)
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.wait_for_console(uuid, BOOTED)
        # Rebuilt from its image: the old root stayed on the dead host.
        self.run_in_guest(uuid, 'test', '!', '-e', '/root/note')

        self._delete_server(server)
        self.assertHostClean(uuid)


class UnshelveTest(MoveTestBase):

    def setUp(self):
        super().setUp()
        self.uploads = self.useFixture(
            lxc_fixtures.GlanceUploads(self.glance)).uploads

    def test_unshelve_on_the_other_host_keeps_the_files(self):
        server = self._boot_on('host1')
        uuid = server['id']
        server = self._shelve_server(server)
        self._disable('host1')

        server = self._unshelve_server(server)
        self.assertEqual('host2', server['OS-EXT-SRV-ATTR:host'])
        self.wait_for_console(uuid, BOOTED)
        self.assertGuestKeptItsFiles(uuid)

        self._delete_server(server)
        self.assertHostClean(uuid)
