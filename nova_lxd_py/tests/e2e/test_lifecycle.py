"""A server's life through Nova's REST API, checked on the host.

Every API call goes through nova-api, conductor and the compute manager to
LXCDriver; every assertion about the guest looks at the real container
(liblxc state, its init process, commands run inside it).
"""

import os

from nova.compute import power_state

from nova_lxd_py.tests.e2e import base
from nova_lxd_py.virt import container
from nova_lxd_py.virt import driver

SERVER_NAME = 'e2e-lifecycle'
BOOTED = 'guest init: booted %s' % SERVER_NAME
# Printed by the guest's init only when it shuts down cleanly.
CLEAN_SHUTDOWN = 'guest init: shutting down'
FROZEN_PROBE_SECONDS = 2


class LifecycleTest(base.ContainerTestBase):

    def setUp(self):
        super().setUp()
        self.image_id = self._create_guest_image()
        self.flavor_id = self._create_container_flavor()

    def _boot_server(self):
        server = self._boot(self.image_id, self.flavor_id, name=SERVER_NAME)
        self.assertEqual('RUNNING', self.lxc_state(server['id']))
        return server

    def assertGuestFrozen(self, uuid):
        """liblxc says FROZEN and nothing new runs in the guest."""
        self.assertEqual('FROZEN', self.lxc_state(uuid))
        code, _ = container.run_in_guest(uuid, ['true'],
                                         FROZEN_PROBE_SECONDS)
        self.assertEqual(124, code, 'a command ran in a frozen guest')

    def test_boot_runs_the_image_with_the_flavor_size(self):
        server = self._boot_server()
        uuid = server['id']
        self.assertEqual(power_state.RUNNING,
                         server['OS-EXT-STS:power_state'])
        self.assertEqual('compute', server['OS-EXT-SRV-ATTR:host'])

        ps = self.run_in_guest(uuid, 'ps')
        pid1 = [line.split() for line in ps.splitlines()
                if line.split()[:1] == ['1']]
        self.assertEqual([['1', 'root', 'init']], pid1, ps)
        self.assertEqual(base.IMAGE_MARKER,
                         self.run_in_guest(uuid, 'cat', '/etc/image-marker'))
        self.assertEqual(SERVER_NAME,
                         self.run_in_guest(uuid, 'hostname').strip())
        # lxcfs shows the flavor's memory in the guest's /proc/meminfo.
        free = self.run_in_guest(uuid, '/usr/bin/free', '-m')
        mem = [line.split() for line in free.splitlines()
               if line.startswith('Mem:')]
        self.assertEqual(str(base.FLAVOR_MEMORY_MB), mem[0][1], free)
        self.assertEqual(str(base.FLAVOR_VCPUS),
                         self.run_in_guest(uuid, 'nproc').strip())
        # Guest root is a subordinate id on the host: unprivileged.
        with open('/proc/%d/status' % self.init_pid(uuid)) as f:
            uids = [line.split()[1:] for line in f
                    if line.startswith('Uid:')][0]
        self.assertEqual({'100000'}, set(uids))

        self.wait_for_console(uuid, BOOTED)
        output = self.api.post_server_action(
            uuid, {'os-getConsoleOutput': {'length': 50}})['output']
        self.assertIn(BOOTED, output)

        self._delete_server(server)
        self.assertHostClean(uuid)
        # The unpacked image stays cached for the next server; nothing else.
        self.assertEqual([], [e for e in self.cache_entries()
                              if self.image_id not in e])

    def test_stop_shuts_down_cleanly_and_start_boots_again(self):
        server = self._boot_server()
        uuid = server['id']
        first_init = self.init_pid(uuid)

        server = self._stop_server(server)
        self.assertEqual(power_state.SHUTDOWN,
                         server['OS-EXT-STS:power_state'])
        self.assertEqual(('STOPPED', -1), container.state(uuid))
        self.assertIn(CLEAN_SHUTDOWN,
                      self.wait_for_console(uuid, CLEAN_SHUTDOWN))

        self._start_server(server)
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertNotEqual(first_init, self.init_pid(uuid))
        self.assertEqual(2, self.wait_for_console(uuid, BOOTED, 2).count(
            BOOTED))
        self.run_in_guest(uuid, 'true')

    def test_reboot_soft_asks_init_and_hard_restarts(self):
        server = self._boot_server()
        uuid = server['id']
        init = self.init_pid(uuid)

        self._reboot_server(server)
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertNotEqual(init, self.init_pid(uuid))
        log = self.wait_for_console(uuid, BOOTED, 2)
        self.assertEqual(2, log.count(BOOTED))
        self.assertEqual(1, log.count(CLEAN_SHUTDOWN), log)

        init = self.init_pid(uuid)
        self._reboot_server(server, hard=True)
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertNotEqual(init, self.init_pid(uuid))
        log = self.wait_for_console(uuid, BOOTED, 3)
        self.assertEqual(3, log.count(BOOTED))
        # A hard reboot does not wait for the guest.
        self.assertEqual(1, log.count(CLEAN_SHUTDOWN), log)
        self.run_in_guest(uuid, 'true')

    def test_pause_freezes_and_unpause_thaws(self):
        server = self._boot_server()
        uuid = server['id']
        init = self.init_pid(uuid)

        self.api.post_server_action(uuid, {'pause': None})
        server = self._wait_for_state_change(server, 'PAUSED')
        self.assertEqual(power_state.PAUSED,
                         server['OS-EXT-STS:power_state'])
        self.assertGuestFrozen(uuid)

        self.api.post_server_action(uuid, {'unpause': None})
        self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual(('RUNNING', init), container.state(uuid))
        self.run_in_guest(uuid, 'true')

    def test_suspend_in_memory_freezes_and_resume_thaws(self):
        # Suspend to disk is in test_live_migration.py; this is the
        # freezer, where suspend_to_disk is off or CRIU cannot be used.
        self.flags(group='lxc', suspend_to_disk=False)
        server = self._boot_server()
        uuid = server['id']
        init = self.init_pid(uuid)

        server = self._suspend_server(server)
        self.assertEqual(power_state.SUSPENDED,
                         server['OS-EXT-STS:power_state'])
        self.assertGuestFrozen(uuid)

        self._resume_server(server)
        self.assertEqual(('RUNNING', init), container.state(uuid))
        self.run_in_guest(uuid, 'true')

    def test_delete_of_a_paused_server_leaves_nothing(self):
        server = self._boot_server()
        self.api.post_server_action(server['id'], {'pause': None})
        self._wait_for_state_change(server, 'PAUSED')

        self._delete_server(server)
        self.assertHostClean(server['id'])

    def test_compute_node_offers_containers_to_placement(self):
        rp_uuid = self._get_provider_uuid_by_host('compute')
        self.assertIn(driver.CONTAINER_HOST_TRAIT,
                      self._get_provider_traits(rp_uuid))

        inventory = self._get_provider_inventory(rp_uuid)
        self.assertEqual(len(os.sched_getaffinity(0)),
                         inventory['VCPU']['total'])
        with open('/proc/meminfo') as f:
            mem_kb = int(f.readline().split()[1])    # MemTotal
        self.assertEqual(mem_kb // 1024, inventory['MEMORY_MB']['total'])
        st = os.statvfs(self.host_dirs.path)
        self.assertEqual(st.f_blocks * st.f_frsize // 1024 ** 3,
                         inventory['DISK_GB']['total'])

        hypervisor = self.admin_api.api_get(
            'os-hypervisors/detail').body['hypervisors'][0]
        self.assertEqual('lxc', hypervisor['hypervisor_type'])

        server = self._boot_server()
        self.assertEqual({'VCPU': base.FLAVOR_VCPUS,
                          'MEMORY_MB': base.FLAVOR_MEMORY_MB,
                          'DISK_GB': base.FLAVOR_DISK_GB},
                         self._get_provider_usages(rp_uuid))
        self._delete_server(server)
        self.assertEqual({'VCPU': 0, 'MEMORY_MB': 0, 'DISK_GB': 0},
                         self._get_provider_usages(rp_uuid))
