"""Server snapshots through Nova's REST API (createImage), on the host.

The compute manager calls LXCDriver.snapshot, which streams the guest's
root into the Glance fixture; a second server then boots from that image.
The Glance fixture keeps uploaded bytes (fixtures.GlanceUploads).
"""

from nova_lxd_py.tests.e2e import base
from nova_lxd_py.virt import container

ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'
BEFORE = 'written before the snapshot'
WRITER = ('i=0; while :; do echo "$i" >> /root/log; i=$((i+1)); done '
          '</dev/null >/dev/null 2>&1 &')
SNAPSHOT_RETRIES = 120    # x 0.5 s


class SnapshotTest(base.UploadTestBase):

    def _create_snapshot(self, server, name='snap'):
        """createImage; the image id once the server's task is done."""
        body = self.api.post_server_action(
            server['id'], {'createImage': {'name': name}})
        self._wait_for_server_parameter(
            server, {'OS-EXT-STS:task_state': None},
            max_retries=SNAPSHOT_RETRIES)
        return body['image_id']

    def assertBootableSnapshot(self, image_id):
        image = self.glance.show(None, image_id)
        self.assertEqual('active', image['status'])
        self.assertEqual('raw', image['disk_format'])
        self.assertEqual('bare', image['container_format'])
        self.assertEqual('lxc', image['properties']['img_hv_type'])
        self.assertEqual('exe', image['properties']['hw_vm_mode'])
        self.assertEqual('snapshot', image['properties']['image_type'])
        self.assertEqual(ZSTD_MAGIC, self.glance._imagedata[image_id][:4])

    def test_snapshot_of_a_running_server_boots_and_it_keeps_running(self):
        server = self._boot(self.image_id, self.flavor_id, name='original')
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', 'echo %s > /root/before' % BEFORE)
        self.run_in_guest(uuid, 'sh', '-c', WRITER)
        init = self.init_pid(uuid)

        image_id = self._create_snapshot(server)

        self.assertEqual([image_id], self.uploads)
        self.assertEqual(('RUNNING', init), container.state(uuid))
        self.assertEqual('ACTIVE', self.api.get_server(uuid)['status'])
        self.assertBootableSnapshot(image_id)

        copy = self._boot(image_id, self.flavor_id, name='from-snapshot')
        self.assertEqual(BEFORE + '\n', self.run_in_guest(
            copy['id'], 'cat', '/root/before'))
        self.assertEqual(base.IMAGE_MARKER, self.run_in_guest(
            copy['id'], 'cat', '/etc/image-marker'))
        lines = self.run_in_guest(copy['id'], 'cat', '/root/log').split()
        self.assertEqual([str(i) for i in range(len(lines))], lines)

        for s in (copy, server):
            self._delete_server(s)
            self.assertHostClean(s['id'])

    def test_snapshot_of_a_stopped_server_leaves_it_stopped(self):
        server = self._boot(self.image_id, self.flavor_id, name='original')
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', 'echo %s > /root/before' % BEFORE)
        server = self._stop_server(server)

        image_id = self._create_snapshot(server)

        self.assertEqual('SHUTOFF', self.api.get_server(uuid)['status'])
        self.assertEqual(('STOPPED', -1), container.state(uuid))
        self.assertBootableSnapshot(image_id)
        copy = self._boot(image_id, self.flavor_id, name='from-snapshot')
        self.assertEqual(BEFORE + '\n', self.run_in_guest(
            copy['id'], 'cat', '/root/before'))

    def test_shelve_and_unshelve_keep_the_root(self):
        # Nova's generic shelve: snapshot, container removed, spawn again.
        self.flags(shelved_offload_time=0)
        server = self._boot(self.image_id, self.flavor_id, name='original')
        uuid = server['id']
        self.run_in_guest(uuid, 'sh', '-c', 'echo %s > /root/before' % BEFORE)

        self.api.post_server_action(uuid, {'shelve': {}})
        server = self._wait_for_state_change(
            server, 'SHELVED_OFFLOADED', max_retries=SNAPSHOT_RETRIES)
        self.assertEqual(1, len(self.uploads))
        self.assertEqual('UNDEFINED', self.lxc_state(uuid))

        self.api.post_server_action(uuid, {'unshelve': None})
        server = self._wait_for_state_change(
            server, 'ACTIVE', max_retries=SNAPSHOT_RETRIES)
        self.assertEqual('RUNNING', self.lxc_state(uuid))
        self.assertEqual(BEFORE + '\n', self.run_in_guest(
            uuid, 'cat', '/root/before'))
        self._delete_server(server)
        self.assertHostClean(uuid)
