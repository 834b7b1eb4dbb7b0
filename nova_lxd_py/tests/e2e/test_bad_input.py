"""Requests that cannot work, through Nova's REST API.

Each build must end in ERROR with a fault an operator can act on, leave
nothing on the host, and stay deletable. Mistakes Nova can catch at the API
(flavor extra-spec typos) must be refused there with a 400.
"""

import os
import random

from nova.tests.functional.api import client as api_client

from nova_lxd_py.tests.e2e import base

USER_WITHOUT_SUBIDS = 'nobody'


class BadBuildTest(base.ContainerTestBase):

    def _boot_expecting_fault(self, image_id, flavor_id=None):
        """Boot; return the fault message after checking the host is clean."""
        flavor_id = flavor_id or self._create_container_flavor()
        server = self._boot(image_id, flavor_id, expected_state='ERROR')
        uuid = server['id']
        self.assertHostClean(uuid)
        unpacked = [e for e in self.cache_entries() if os.path.isdir(
            os.path.join(self.host_dirs.image_cache_path, e))]
        self.assertEqual([], unpacked)
        self.assertEqual({}, self._get_allocations_by_server_uuid(uuid))

        self._delete_server(server)
        self.assertHostClean(uuid)
        return server['fault']['message']

    def test_image_of_no_known_format(self):
        data = random.Random(1).randbytes(64 * 1024)
        message = self._boot_expecting_fault(
            self._create_container_image(data, name='random-bytes'))
        self.assertIn('is unacceptable: its bytes are none of the formats',
                      message)

    def test_image_without_sbin_init(self):
        message = self._boot_expecting_fault(
            self._create_guest_image(with_init=False))
        self.assertIn('is unacceptable: it has no /sbin/init', message)

    def test_privileged_flavor_on_a_host_that_forbids_it(self):
        self.flags(allow_privileged=False, group='lxc')
        flavor_id = self._create_container_flavor(
            extra_spec={'lxc:privileged': 'true'})
        message = self._boot_expecting_fault(self._create_guest_image(),
                                             flavor_id)
        self.assertIn('lxc:privileged asks for a privileged container, '
                      'which this compute host does not allow', message)
        self.assertIn('[lxc] allow_privileged', message)

    def test_host_without_subordinate_ids(self):
        self.flags(idmap_user=USER_WITHOUT_SUBIDS, group='lxc')
        message = self._boot_expecting_fault(self._create_guest_image())
        self.assertIn('cannot run unprivileged containers: user %s has no '
                      'subordinate uid range' % USER_WITHOUT_SUBIDS, message)


class ExtraSpecValidationTest(base.ContainerTestBase):
    """Our validators reach nova-api through the entry point in setup.cfg."""

    def _set_spec(self, key, value):
        flavor_id = self._create_container_flavor()
        return self.admin_api.post_extra_spec(
            flavor_id, {'extra_specs': {key: value}}).body['extra_specs']

    def assertRefused(self, key, value, reason):
        error = self.assertRaises(api_client.OpenStackApiException,
                                  self._set_spec, key, value)
        self.assertEqual(400, error.response.status_code)
        self.assertIn(reason, error.response.json()['badRequest']['message'])

    def test_value_that_is_not_a_boolean_is_refused(self):
        self.assertRefused('lxc:privileged', 'maybe',
                           "'maybe' is not a valid boolean-like value")

    def test_misspelt_key_is_refused(self):
        self.assertRefused('lxc:privilged', 'true',
                           "extra spec 'lxc:privilged' does not appear to "
                           "be a valid extra spec")

    def test_negative_process_limit_is_refused(self):
        self.assertRefused('lxc:pids_max', '-1',
                           "'-1' is less than the min value of '0'")

    def test_valid_spec_is_accepted(self):
        specs = self._set_spec('lxc:pids_max', '512')
        self.assertEqual('512', specs['lxc:pids_max'])
