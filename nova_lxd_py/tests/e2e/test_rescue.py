"""Rescue and unrescue through Nova's REST API, checked on the host.

The compute manager shuts the guest down, the driver boots the rescue image
under the server's name with the server's root at /mnt/rescue; unrescue
brings the server back on its own root, with what was fixed in rescue.
"""

from nova.compute import power_state

from nova_lxd_py.tests.e2e import base
from nova_lxd_py.tests import fixtures as lxc_fixtures

SERVER_NAME = 'e2e-rescue'
BOOTED = 'guest init: booted %s' % SERVER_NAME
RESCUE_MARKER = 'nova-lxd-py-e2e-rescue'
PASSWORD = 'Rescue-Pass-1'


class RescueTest(base.ContainerTestBase):

    def setUp(self):
        super().setUp()
        self.image_id = self._create_guest_image()
        with open(lxc_fixtures.guest_tarball(RESCUE_MARKER), 'rb') as f:
            self.rescue_image_id = self._create_container_image(
                f.read(), name='rescue')
        self.flavor_id = self._create_container_flavor()

    def _boot_server(self):
        server = self._boot(self.image_id, self.flavor_id, name=SERVER_NAME)
        self.wait_for_console(server['id'], BOOTED)
        return server

    def _rescue(self, server, **args):
        self.api.post_server_action(server['id'], {'rescue': args})
        return self._wait_for_state_change(server, 'RESCUE')

    def _unrescue(self, server):
        self.api.post_server_action(server['id'], {'unrescue': None})
        return self._wait_for_state_change(server, 'ACTIVE')

    def marker(self, uuid, path='/etc/image-marker'):
        return self.run_in_guest(uuid, 'cat', path)

    def test_rescue_image_fixes_the_server_and_unrescue_boots_it(self):
        server = self._boot_server()
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', 'echo broken > /root/before')

        server = self._rescue(server, rescue_image_ref=self.rescue_image_id,
                              adminPass=PASSWORD)
        self.assertEqual(power_state.RUNNING,
                         server['OS-EXT-STS:power_state'])
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertEqual(2, self.wait_for_console(uuid, BOOTED, 2).count(
            BOOTED))
        self.assertEqual(RESCUE_MARKER, self.marker(uuid))
        self.assertEqual(base.IMAGE_MARKER,
                         self.marker(uuid, '/mnt/rescue/etc/image-marker'))
        self.assertEqual('broken\n',
                         self.marker(uuid, '/mnt/rescue/root/before'))
        # The password Nova was given is root's in the rescue guest (in
        # its /etc/shadow, which the guest image has).
        hashed = self.run_in_guest(uuid, 'cat', '/etc/shadow').split(':')[1]
        self.assertEqual(hashed, self.run_in_guest(
            uuid, 'mkpasswd', '-m', 'sha512', PASSWORD,
            hashed.split('$')[2]).strip())
        self.run_in_guest(uuid, 'sh', '-c',
                          'echo fixed > /mnt/rescue/root/fixed')

        server = self._unrescue(server)
        self.assertEqual(power_state.RUNNING,
                         server['OS-EXT-STS:power_state'])
        self.assertEqual(3, self.wait_for_console(uuid, BOOTED, 3).count(
            BOOTED))
        self.assertEqual(base.IMAGE_MARKER, self.marker(uuid))
        self.assertEqual('broken\nfixed\n', self.run_in_guest(
            uuid, 'cat', '/root/before', '/root/fixed'))
        self.run_in_guest(uuid, 'test', '!', '-e', '/mnt/rescue')

        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_rescue_with_the_server_image_and_delete_while_rescued(self):
        server = self._boot_server()
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', 'echo mine > /root/before')

        self._rescue(server)
        self.assertEqual(base.IMAGE_MARKER, self.marker(uuid))
        self.run_in_guest(uuid, 'test', '!', '-e', '/root/before')
        self.assertEqual('mine\n',
                         self.marker(uuid, '/mnt/rescue/root/before'))

        self._delete_server(server)
        self.assertHostClean(uuid)
