"""The image-type capabilities follow ``[lxc] image_formats``."""

import ddt
from nova.virt import fake
from oslo_config import fixture as config_fixture
from oslotest import base

from nova_lxd_py import conf
from nova_lxd_py.virt import driver


@ddt.ddt
class ImageCapabilitiesTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(conf.CONF))

    def caps(self, enabled=None):
        if enabled is not None:
            self.conf.config(group='lxc', image_formats=enabled)
        return {k: v for k, v in
                driver.LXCDriver(fake.FakeVirtAPI()).capabilities.items()
                if k.startswith('supports_image_type_') and v}

    @ddt.unpack
    @ddt.data(
        (None, {'supports_image_type_qcow2', 'supports_image_type_raw'}),
        (['tarball', 'oci'], {'supports_image_type_raw'}),
        (['qcow2'], {'supports_image_type_qcow2'}),
        (['raw'], {'supports_image_type_raw'}),
    )
    def test_image_types_follow_enabled_formats(self, enabled, expected):
        self.assertEqual(expected, set(self.caps(enabled)))

    def test_image_cache_and_trusted_certs_advertised(self):
        caps = driver.LXCDriver(fake.FakeVirtAPI()).capabilities
        self.assertTrue(caps['has_imagecache'])
        self.assertTrue(caps['supports_trusted_certs'])

    def test_class_capabilities_stay_the_defaults(self):
        self.caps(['tarball'])
        self.assertTrue(
            driver.LXCDriver.capabilities['supports_image_type_qcow2'])

    def test_interface_attach_advertised_without_tags(self):
        caps = driver.LXCDriver(fake.FakeVirtAPI()).capabilities
        self.assertTrue(caps['supports_attach_interface'])
        self.assertFalse(caps['supports_tagged_attach_interface'])
        self.assertFalse(caps['supports_device_tagging'])
