"""Servers booted through Nova's REST API from disk and OCI images.

The images are built locally (see nova_lxd_py.tests.images), uploaded to
the Glance fixture with the disk and container formats an operator would
use, and booted by the real compute manager into real containers.
"""

import os
import shutil
import tempfile

from nova_lxd_py.tests.e2e import base
from nova_lxd_py.tests.images import disk
from nova_lxd_py.tests.images import oci


class ImageFormatTest(base.ContainerTestBase):

    def setUp(self):
        super().setUp()
        # Not oslotest's 0700 temp dir: images are read by the host only,
        # but the disk builder's trees are made for the guest's root.
        self.files = tempfile.mkdtemp(prefix='nova-lxd-py-e2e-',
                                      dir='/var/tmp')
        self.addCleanup(shutil.rmtree, self.files, ignore_errors=True)
        self.flavor_id = self._create_container_flavor()

    def upload(self, path, **formats):
        with open(path, 'rb') as f:
            return self._create_container_image(
                f.read(), name=os.path.basename(path), **formats)

    def assertBootsWithMarker(self, image_id, marker):
        server = self._boot(image_id, self.flavor_id)
        uuid = server['id']
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertEqual(marker, self.run_in_guest(uuid, 'cat',
                                                   '/etc/image-marker'))
        self.assertIn('guest init: booted',
                      self.wait_for_console(uuid, 'guest init: booted'))
        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_boot_from_a_gpt_qcow2_disk_image(self):
        images = disk.Builder(self.files, marker='e2e-qcow2')
        image_id = self.upload(images.gpt_qcow2(), disk_format='qcow2')
        self.assertBootsWithMarker(image_id, 'e2e-qcow2')

    def test_boot_from_an_oci_image(self):
        path = oci.write_oci_layout(os.path.join(self.files, 'oci.tar'),
                                    'e2e-oci')
        image_id = self.upload(path, container_format='docker')
        self.assertBootsWithMarker(image_id, 'e2e-oci')

    def test_qcow2_with_a_backing_file_ends_in_error(self):
        images = disk.Builder(self.files)
        image_id = self.upload(images.qcow2_backing(), disk_format='qcow2')
        server = self._boot(image_id, self.flavor_id, expected_state='ERROR')
        self.assertIn('backing file', server['fault']['message'])
        self.assertHostClean(server['id'])
        self.assertEqual([], [e for e in self.cache_entries()
                              if not e.startswith('.')])
        self._delete_server(server)
