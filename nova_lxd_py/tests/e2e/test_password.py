"""changePassword through Nova's REST API, checked in the guest."""

import time

from nova_lxd_py.tests.e2e import base
from nova_lxd_py.tests.functional import test_password

SERVER_NAME = 'e2e-password'
BOOTED = 'guest init: booted %s' % SERVER_NAME
PASSWORD = 'E2e-New-Pass-1'


class ChangePasswordTest(base.ContainerTestBase):

    def root_hash(self, uuid):
        for line in self.run_in_guest(uuid, 'cat', '/etc/shadow').split():
            if line.startswith('root:'):
                return line.split(':')[1]

    def test_change_password_sets_roots_password_in_the_guest(self):
        image_id = self._create_guest_image()
        flavor_id = self._create_container_flavor()
        server = self._boot(image_id, flavor_id, name=SERVER_NAME)
        self.wait_for_console(server['id'], BOOTED)
        before = self.root_hash(server['id'])
        self.api.post_server_action(
            server['id'], {'changePassword': {'adminPass': PASSWORD}})
        # The API casts to the compute service: wait for the guest.
        deadline = time.monotonic() + 30
        while self.root_hash(server['id']) == before:
            self.assertLess(time.monotonic(), deadline, 'no new password')
            time.sleep(0.1)
        hashed = self.root_hash(server['id'])
        self.assertEqual(hashed, test_password.crypt_with_salt_of(
            hashed, PASSWORD))
        self._wait_for_state_change(server, 'ACTIVE')
        self._delete_server(server)
