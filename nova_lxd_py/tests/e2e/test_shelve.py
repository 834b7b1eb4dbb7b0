"""Shelve and unshelve through Nova's REST API, on the host.

The driver has no shelve methods of its own: the compute manager powers
the container off and calls LXCDriver.snapshot (the root goes to Glance),
then on offload destroys it; unshelve spawns a new container from that
image, or (not offloaded) just powers the old one on, and Nova deletes the
image. These tests follow the root through that cycle; the Glance fixture
keeps uploaded bytes (fixtures.GlanceUploads).
"""

import os

from nova import context as nova_context
from nova import objects
from nova.objects import fields

from nova_lxd_py import conf
from nova_lxd_py.tests.e2e import base
from nova_lxd_py.virt import container
from nova_lxd_py.virt import host

CONF = conf.CONF
ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'
NOTE = 'written before shelve'
RETRIES = 120    # x 0.5 s


class ShelveTest(base.UploadTestBase):

    def _boot_with_note(self):
        """A running server with /root/note; it and its guest hostname."""
        server = self._boot(self.image_id, self.flavor_id, name='shelvee')
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', 'echo %s > /root/note' % NOTE)
        return server, self.run_in_guest(uuid, 'hostname')

    def _shelve(self, server, status):
        self.api.post_server_action(server['id'], {'shelve': {}})
        server = self._wait_for_state_change(server, status,
                                             max_retries=RETRIES)
        self.assertEqual(1, len(self.uploads))
        return server, self.uploads[0]

    def _unshelve(self, server):
        self.api.post_server_action(server['id'], {'unshelve': None})
        return self._wait_for_state_change(server, 'ACTIVE',
                                           max_retries=RETRIES)

    def _rootfs(self, uuid):
        """lxc.rootfs.path of the container (names its cached image)."""
        paths = [p for p in container.rootfs_paths() if uuid in p]
        self.assertEqual(1, len(paths), paths)
        return paths[0]

    def assertShelvedImage(self, image_id, uuid):
        image = self.glance.show(None, image_id)
        self.assertEqual('active', image['status'])
        self.assertEqual(('raw', 'bare'), (image['disk_format'],
                                           image['container_format']))
        props = image['properties']
        self.assertEqual('lxc', props['img_hv_type'])
        self.assertEqual('exe', props['hw_vm_mode'])
        # Set by the driver only: the rest may be inherited from the image.
        self.assertEqual(fields.Architecture.canonicalize(host.machine()),
                         props['architecture'])
        self.assertEqual('snapshot', props['image_type'])
        self.assertEqual(uuid, props['instance_uuid'])
        self.assertEqual(ZSTD_MAGIC, self.glance._imagedata[image_id][:4])

    def assertUnshelved(self, server, hostname):
        """Running, same root and name, and Nova dropped the image."""
        uuid = server['id']
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertEqual(NOTE + '\n', self.run_in_guest(
            uuid, 'cat', '/root/note'))
        self.assertEqual(hostname, self.run_in_guest(uuid, 'hostname'))
        self.assertEqual(self.image_id, server['image']['id'])
        self.assertNotIn(self.uploads[0], self.glance.images)

    def assertCachePassKeepsRoot(self, uuid):
        """The image cache pass keeps the tree a root is built on (overlay:
        the shelved image's), though that image is gone from Glance and no
        instance names it any more."""
        self.flags(remove_unused_original_minimum_age_seconds=0,
                   group='image_cache')
        tree, = [path for image, path in self.driver._images.entries(
        ).values() if image == self.uploads[0]]
        in_use = tree in self._rootfs(uuid)
        self.assertEqual(CONF.lxc.root_disk_backend == 'overlay', in_use)
        ctxt = nova_context.get_admin_context()
        self.driver.manage_image_cache(
            ctxt, [objects.Instance.get_by_uuid(ctxt, uuid)])
        self.assertEqual(in_use, os.path.isdir(tree))

    def test_offloaded_server_leaves_the_host_and_comes_back(self):
        self.flags(shelved_offload_time=0)
        server, hostname = self._boot_with_note()
        uuid = server['id']

        server, image_id = self._shelve(server, 'SHELVED_OFFLOADED')

        self.assertHostClean(uuid)
        self.assertIsNone(server['OS-EXT-SRV-ATTR:host'])
        self.assertShelvedImage(image_id, uuid)

        server = self._unshelve(server)
        self.assertUnshelved(server, hostname)
        self.assertCachePassKeepsRoot(uuid)
        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_shelved_server_stays_stopped_then_starts_on_its_root(self):
        self.flags(shelved_offload_time=-1)
        server, hostname = self._boot_with_note()
        uuid = server['id']
        cdir = os.stat(container.container_dir(uuid)).st_ino
        rootfs = self._rootfs(uuid)

        server, image_id = self._shelve(server, 'SHELVED')

        self.assertEqual(('STOPPED', -1), container.state(uuid))
        self.assertIn(uuid, self.driver.list_instance_uuids())
        self.assertShelvedImage(image_id, uuid)

        server = self._unshelve(server)
        self.assertEqual(cdir, os.stat(container.container_dir(uuid)).st_ino)
        self.assertEqual(rootfs, self._rootfs(uuid))
        self.assertUnshelved(server, hostname)
        self._delete_server(server)
        self.assertHostClean(uuid)

    def test_shelve_of_a_stopped_server(self):
        self.flags(shelved_offload_time=0)
        server, hostname = self._boot_with_note()
        uuid = server['id']
        server = self._stop_server(server)

        server, image_id = self._shelve(server, 'SHELVED_OFFLOADED')

        self.assertHostClean(uuid)
        self.assertShelvedImage(image_id, uuid)
        server = self._unshelve(server)
        self.assertUnshelved(server, hostname)
        self._delete_server(server)
        self.assertHostClean(uuid)
