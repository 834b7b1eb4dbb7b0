"""Guests booted from OCI layouts and docker-save archives (run as root);
see driver_base for the seam and the base class."""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import json  # noqa: E402

from nova.compute import power_state  # noqa: E402

from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.tests.images import oci as images  # noqa: E402

from nova_lxd_py.tests.functional.driver_base import CONF  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import DriverTestCase  # noqa

OCI_IMAGE = 'b0b0b0b0-0000-4000-8000-0000000000c1'
DOCKER_IMAGE = 'b0b0b0b0-0000-4000-8000-0000000000c2'
NO_INIT_IMAGE = 'b0b0b0b0-0000-4000-8000-0000000000c3'


class OCIBootTest(DriverTestCase):

    def add_image(self, image_id, writer, *args):
        path = os.path.join(self.dirs.path, image_id)
        self.images[image_id] = writer(path, *args)

    def meta(self):
        """meta.json of the one cache entry."""
        entries = [n for n in self.cache_entries() if not n.startswith('.')]
        self.assertEqual(1, len(entries), entries)
        with open(os.path.join(CONF.lxc.image_cache_path, entries[0],
                               'meta.json')) as f:
            return json.load(f)

    def assert_flattened_guest(self, instance, marker):
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual(marker, self.run_in_guest(
            instance, 'cat', '/etc/image-marker'))
        self.assertEqual('layer 2\n', self.run_in_guest(
            instance, 'cat', '/etc/motd'))
        self.assertEqual('new-file\n', self.run_in_guest(
            instance, 'ls', '-A', '/opt/app'))
        self.assertNotIn('remove-me', self.run_in_guest(
            instance, 'ls', '-A', '/etc'))
        # Owners as the image has them, seen from inside the guest.
        self.assertEqual('1000:1000\n', self.run_in_guest(
            instance, 'stat', '-c', '%u:%g', '/users/u1000/notes'))

    def test_spawn_from_oci_layout(self):
        self.add_image(OCI_IMAGE, images.write_oci_layout, 'oci-guest')
        instance = self.spawn(image_id=OCI_IMAGE, disk_format='raw',
                              container_format='docker')
        self.assert_flattened_guest(instance, 'oci-guest')
        meta = self.meta()
        self.assertEqual(('oci', 'oci-layout', 2, False),
                         (meta['format'], meta['source'], meta['layers'],
                          meta['injected_init']))
        self.assertEqual(images.RUNTIME, meta['config'])

    def test_spawn_from_docker_save(self):
        self.add_image(DOCKER_IMAGE, images.write_docker_save, 'docker-guest')
        instance = self.spawn(image_id=DOCKER_IMAGE, disk_format='raw',
                              container_format='docker')
        self.assert_flattened_guest(instance, 'docker-guest')
        self.assertEqual('docker-save', self.meta()['source'])

    def test_spawn_from_image_without_init_gets_oci_init(self):
        # The busybox guest minus /sbin/init: the copy of the host's static
        # busybox is its init, and reads the image's inittab.
        self.flags(group='lxc', oci_init=guest_image.BUSYBOX)
        self.add_image(NO_INIT_IMAGE, images.write_oci_without_init,
                       'no-init-guest')
        instance = self.spawn(image_id=NO_INIT_IMAGE, disk_format='raw',
                              container_format='oci')
        self.assert_flattened_guest(instance, 'no-init-guest')
        self.assertTrue(self.meta()['injected_init'])
        self.driver.power_off(instance, timeout=10)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
