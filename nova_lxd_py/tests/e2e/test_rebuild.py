"""Rebuild through Nova's REST API, checked on the host.

LXCDriver has no ``rebuild`` of its own, so the compute manager uses its
generic one: power off, ``destroy``, then ``spawn`` with the new image under
the same server. These tests prove that is a real rebuild of a container:
the same server (id, hostname) on a fresh root from the new image (what the
user wrote is gone, init is a new process), a stopped server stays stopped,
the flavor's root disk size still holds, and an image that cannot boot ends
in ERROR with a clear fault and nothing left of a half-made container.
"""

import os
import subprocess

from nova.compute import power_state

from nova_lxd_py.storage.backends import disk
from nova_lxd_py.tests.e2e import base
from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.virt import container

SERVER_NAME = 'e2e-rebuild'
BOOTED = 'guest init: booted %s' % SERVER_NAME
OTHER_MARKER = 'nova-lxd-py-e2e-rebuilt'
NOTE = 'echo mine > /root/note'
REBUILD_RETRIES = 120     # x 0.5 s: clean shutdown, unpack, boot
ROOT_GB = 2               # not the default flavor's size, to tell them apart


def loop_devices(name):
    out = subprocess.run(['losetup', '-a'], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if name in line]


class RebuildTest(base.ContainerTestBase):

    # The API answers before the compute service rebuilds, as in a real
    # cloud. With casts run as calls the whole rebuild happens inside the
    # request: a failure comes back as the request's 400, and a rebuilt
    # SHUTOFF server fails Nova's rebuild response schema ('progress' is
    # required there but only shown for statuses such as REBUILD).
    CAST_AS_CALL = False

    def setUp(self):
        super().setUp()
        self.image_id = self._create_guest_image()
        with open(lxc_fixtures.guest_tarball(OTHER_MARKER), 'rb') as f:
            self.other_id = self._create_container_image(f.read(),
                                                         name='other')
        self.flavor_id = self._create_container_flavor()

    def _boot_server(self, flavor_id=None):
        server = self._boot(self.image_id, flavor_id or self.flavor_id,
                            name=SERVER_NAME)
        self.wait_for_console(server['id'], BOOTED)
        self.run_in_guest(server['id'], 'sh', '-c', NOTE)
        return server

    def _rebuild(self, server, image_id, status='ACTIVE'):
        """Rebuild; the server once Nova is done with it (task None).

        The API sets the task state before it answers, so polling cannot
        see the state from before the rebuild; the response must say so.
        """
        body = self.api.post_server_action(
            server['id'], {'rebuild': {'imageRef': image_id}})
        self.assertEqual('REBUILD', body['server']['status'])
        return self._wait_for_server_parameter(
            server, {'status': status, 'OS-EXT-STS:task_state': None},
            max_retries=REBUILD_RETRIES)

    def marker(self, uuid):
        return self.run_in_guest(uuid, 'cat', '/etc/image-marker')

    def assertFreshRoot(self, uuid, marker):
        """The guest runs ``marker``'s image, without the user's file."""
        self.assertEqual(marker, self.marker(uuid))
        self.run_in_guest(uuid, 'test', '!', '-e', '/root/note')
        self.assertEqual(SERVER_NAME,
                         self.run_in_guest(uuid, 'hostname').strip())

    def test_rebuild_with_another_image(self):
        server = self._boot_server()
        uuid = server['id']
        init = self.init_pid(uuid)
        self.assertEqual(base.IMAGE_MARKER, self.marker(uuid))

        server = self._rebuild(server, self.other_id)
        self.assertEqual(uuid, server['id'])
        self.assertEqual(self.other_id, server['image']['id'])
        self.assertEqual(power_state.RUNNING,
                         server['OS-EXT-STS:power_state'])
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertNotEqual(init, self.init_pid(uuid))
        self.assertFreshRoot(uuid, OTHER_MARKER)
        # A new container directory: its console log holds one boot.
        self.assertEqual(1, self.wait_for_console(uuid, BOOTED).count(
            BOOTED))

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_rebuild_with_the_same_image_resets_the_root(self):
        server = self._boot_server()
        uuid = server['id']
        init = self.init_pid(uuid)

        server = self._rebuild(server, self.image_id)
        self.assertEqual(self.image_id, server['image']['id'])
        self.assertNotEqual(init, self.init_pid(uuid))
        self.assertFreshRoot(uuid, base.IMAGE_MARKER)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_rebuild_of_a_stopped_server_keeps_it_stopped(self):
        server = self._boot_server()
        uuid = server['id']
        server = self._stop_server(server)

        server = self._rebuild(server, self.other_id, status='SHUTOFF')
        self.assertEqual(power_state.SHUTDOWN,
                         server['OS-EXT-STS:power_state'])
        self.assertEqual(('STOPPED', -1), container.state(uuid))

        self._start_server(server)
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.wait_for_console(uuid, BOOTED)
        self.assertFreshRoot(uuid, OTHER_MARKER)

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_rebuilt_root_keeps_the_flavor_disk_size(self):
        flavor_id = self._create_flavor(
            memory_mb=base.FLAVOR_MEMORY_MB, vcpu=base.FLAVOR_VCPUS,
            disk=ROOT_GB, ephemeral=0,
            extra_spec=base.CONTAINER_FLAVOR_SPECS)
        server = self._boot_server(flavor_id)
        uuid = server['id']

        self._rebuild(server, self.other_id)
        self.assertFreshRoot(uuid, OTHER_MARKER)
        # The guest's / is the flavor's ext4 disk (a little less for its
        # metadata), not the host's file system.
        df = self.run_in_guest(uuid, 'df', '-P', '-k', '/').splitlines()
        size_kb = int(df[1].split()[1])
        self.assertGreater(size_kb, (ROOT_GB << 20) * 9 // 10, df)
        self.assertLessEqual(size_kb, ROOT_GB << 20, df)
        cdir = container.container_dir(uuid)
        self.assertEqual(ROOT_GB << 30,
                         os.path.getsize(disk.image_path(cdir)))
        # The old root's disk was released: one loop device, the new one.
        self.assertEqual(1, len(loop_devices(uuid)), loop_devices(uuid))

        self._delete_server(server)
        self.assertHostClean(uuid)
        self.assertEqual([], loop_devices(uuid))

    def test_rebuild_with_an_unbootable_image_errors_cleanly(self):
        server = self._boot_server()
        uuid = server['id']
        bad_id = self._create_guest_image(with_init=False)

        server = self._rebuild(server, bad_id, status='ERROR')
        self.assertIn('is unacceptable: it has no /sbin/init',
                      server['fault']['message'])
        # Nova destroyed the old root before the spawn failed: nothing of
        # either is left, and the bad image was not kept in the cache.
        self.assertEqual(bad_id, server['image']['id'])
        self.assertHostClean(uuid)
        self.assertEqual([], loop_devices(uuid))
        self.assertEqual([], [e for e in self.cache_entries()
                              if bad_id in e])

        # An operator recovers the server by rebuilding it with a good image.
        server = self._rebuild(server, self.image_id)
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertFreshRoot(uuid, base.IMAGE_MARKER)

        self._delete_server(server)
        self.assertHostClean(uuid)
