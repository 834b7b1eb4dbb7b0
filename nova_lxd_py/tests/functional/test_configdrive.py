"""Config drive on real containers (run as root): Nova's instance metadata
as a read-only tree at /config-drive, built at spawn and gone with the
instance.

Nova's metadata builder is real; its two calls out of the compute host are
the seams: Neutron (the instance's security groups) and the database (its
block device mappings), as nova-compute reaches them through the conductor.
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import base64  # noqa: E402
import json  # noqa: E402

import fixtures  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova import objects  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests.functional import driver_base  # noqa: E402
from nova_lxd_py.tests.functional import test_vif  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402
from nova_lxd_py.virt import configdrive  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402

KEY_NAME = 'test-key'
PUBLIC_KEY = ('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0nzbB0KfAFIBuWcOb7rGRB'
              'Kb0nfYl9k3iMZkX0yGMb nova-lxd-py-test')
USER_DATA = b'#!/bin/sh\necho hello from user data\n'
LATEST = configdrive.GUEST_PATH + '/openstack/latest/'


class ConfigDriveTestCase(driver_base.DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MockPatch(
            'nova.network.security_group_api.get_instance_security_groups',
            autospec=True, return_value=[{'name': 'default'}]))
        self.useFixture(fixtures.MockPatch(
            'nova.objects.BlockDeviceMappingList.get_by_instance_uuid',
            return_value=objects.BlockDeviceMappingList(objects=[])))

    def make_guest(self, config_drive=True, user_data=USER_DATA,
                   **extra_specs):
        """An instance as the compute manager hands it to spawn, with a
        key pair, user data and metadata."""
        instance = self.make_instance(**extra_specs)
        instance.flavor.name = 'm1.test'
        instance.flavor.flavorid = 'test'
        instance.config_drive = 'True' if config_drive else ''
        instance.user_data = (base64.b64encode(user_data).decode()
                              if isinstance(user_data, bytes) else user_data)
        instance.key_name = KEY_NAME
        instance.key_data = PUBLIC_KEY
        instance.keypairs = objects.KeyPairList(objects=[objects.KeyPair(
            name=KEY_NAME, public_key=PUBLIC_KEY, type='ssh')])
        instance.ec2_ids = objects.EC2Ids(instance_id='i-00000001',
                                          ami_id='ami-00000001',
                                          kernel_id=None, ramdisk_id=None)
        instance.metadata = {'role': 'config-drive-test'}
        instance.device_metadata = None
        instance.numa_topology = None
        return instance

    def spawn_guest(self, instance, network_info=(), injected_files=(),
                    admin_password=None, image_id=driver_base.BUSYBOX_IMAGE,
                    wait_boot=True):
        network_info = network_model.NetworkInfo(network_info)
        self.driver.spawn(self.context, instance, self.image_meta(image_id),
                          list(injected_files), admin_password, {},
                          network_info=network_info)
        self.addCleanup(self._destroy_quietly, instance, network_info)
        if wait_boot:
            self.wait_booted(instance)
        return network_info

    def _destroy_quietly(self, instance, network_info):
        try:
            self.driver.destroy(self.context, instance, network_info)
        except Exception:
            pass

    def drive_dir(self, instance):
        return configdrive.host_path(container.container_dir(instance.uuid))

    def guest_json(self, instance, path):
        return json.loads(self.run_in_guest(instance, 'cat', path))

    def guest_fails(self, instance, *argv):
        code, out = container.run_in_guest(instance.uuid, list(argv), 10)
        self.assertNotEqual(0, code, out)
        return out


class ConfigDriveTest(ConfigDriveTestCase):

    def setUp(self):
        super().setUp()
        self.net = self.useFixture(test_vif.Network())

    def test_config_drive_read_only_in_guest_and_gone_after_destroy(self):
        vif = self.net.port(5)
        instance = self.make_guest()
        network_info = self.spawn_guest(
            instance, [vif], injected_files=[('/etc/motd', b'injected\n')],
            admin_password='s3cret')
        meta = self.guest_json(instance, LATEST + 'meta_data.json')
        self.assertEqual(instance.uuid, meta['uuid'])
        self.assertEqual('guest-1', meta['hostname'].split('.')[0])
        self.assertEqual({KEY_NAME: PUBLIC_KEY}, meta['public_keys'])
        self.assertEqual({'role': 'config-drive-test'}, meta['meta'])
        self.assertEqual('s3cret', meta['admin_pass'])
        self.assertEqual(USER_DATA, self.run_in_guest(
            instance, 'cat', LATEST + 'user_data').encode())
        # The injected file is in the drive (as Nova lays it out), not in
        # the guest's root.
        self.assertEqual([{'path': '/etc/motd',
                           'content_path': '/content/0000'}], meta['files'])
        self.assertEqual('injected\n', self.run_in_guest(
            instance, 'cat', configdrive.GUEST_PATH +
            '/openstack/content/0000'))
        self.guest_fails(instance, 'cat', '/etc/motd')
        # The ports as the guest has them: the MAC of its eth0.
        network = self.guest_json(instance, LATEST + 'network_data.json')
        self.assertEqual(vif['address'], self.run_in_guest(
            instance, 'cat', '/sys/class/net/eth0/address').strip())
        self.assertEqual([vif['address']], [
            link['ethernet_mac_address'] for link in network['links']])
        self.assertEqual([self.net.address(vif)],
                         [n['ip_address'] for n in network['networks']])
        # Read-only for the guest's root: a read-only mount of files host
        # root owns (nobody in the guest).
        self.assertIn('ro', self.run_in_guest(
            instance, 'grep', ' /config-drive ', '/proc/mounts').split()[3]
            .split(','))
        self.guest_fails(instance, 'touch', configdrive.GUEST_PATH + '/x')
        self.guest_fails(instance, 'rm', LATEST + 'user_data')
        # Root in the guest's user namespace may remount the mounts of its
        # own mount namespace read-write; the files stay host root's.
        self.run_in_guest(instance, 'mount', '-o', 'remount,bind,rw',
                          configdrive.GUEST_PATH)
        self.guest_fails(instance, 'touch', configdrive.GUEST_PATH + '/x')
        self.guest_fails(instance, 'sh', '-c', 'echo x >> %s' % (
            LATEST + 'user_data'))
        self.driver.destroy(self.context, instance, network_info)
        self.assertFalse(os.path.lexists(self.drive_dir(instance)))
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_config_drive_read_only_in_privileged_guest(self):
        self.flags(group='lxc', allow_privileged=True)
        instance = self.make_guest(**{'lxc:privileged': 'true'})
        self.spawn_guest(instance)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])
        # Root here owns the files: only the read-only mount stops it.
        out = self.guest_fails(instance, 'touch',
                               configdrive.GUEST_PATH + '/x')
        self.assertIn('Read-only file system', out)

    def test_no_config_drive_unless_required(self):
        instance = self.make_guest(config_drive=False)
        self.spawn_guest(instance)
        self.assertFalse(os.path.lexists(self.drive_dir(instance)))
        self.guest_fails(instance, 'ls', configdrive.GUEST_PATH)
        # What tells cloud-init it runs on OpenStack (metadata service).
        environ = self.run_in_guest(instance, 'cat', '/proc/1/environ')
        self.assertIn('product_name=OpenStack Nova', environ.split('\0'))

    def test_force_config_drive(self):
        self.flags(force_config_drive=True)
        instance = self.make_guest(config_drive=False)
        self.spawn_guest(instance)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])
        self.assertEqual(0o755, os.stat(self.drive_dir(instance)).st_mode &
                         0o7777)

    def test_injected_file_path_cannot_leave_the_drive(self):
        instance = self.make_guest()
        self.spawn_guest(instance, injected_files=[
            ('../../../../etc/nova-lxd-py-escaped', b'x')])
        meta = self.guest_json(instance, LATEST + 'meta_data.json')
        self.assertEqual('../../../../etc/nova-lxd-py-escaped',
                         meta['files'][0]['path'])
        self.assertFalse(os.path.lexists('/etc/nova-lxd-py-escaped'))
        top = os.path.dirname(self.drive_dir(instance))
        self.assertEqual([], [n for n in os.listdir(top)
                              if n.startswith('config-drive.')])
        self.guest_fails(instance, 'cat', '/etc/nova-lxd-py-escaped')

    def test_undecodable_user_data_refused_leaving_nothing(self):
        instance = self.make_guest(user_data='not base64 at all!')
        vif = self.net.port(6)
        self.assertRaises(exception.ConfigDriveInvalid, self.spawn_guest,
                          instance, [vif], wait_boot=False)
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertNotIn(naming.host_name(vif), test_vif.host_links())

    def test_removed_orphan_takes_its_config_drive(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.orphans.ORPHAN_GRACE_SECONDS', 0))
        instance = self.make_guest()
        self.spawn_guest(instance)
        self.assertTrue(os.path.isdir(self.drive_dir(instance)))
        self.flags(group='lxc', remove_orphans=True)
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_rescue_guest_sees_the_drive_where_the_instance_does(self):
        instance = self.make_guest()
        self.spawn_guest(instance)
        self.driver.rescue(self.context, instance, None, self.image_meta(),
                           None, None, None)
        self.wait_booted(instance, times=2)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])
        self.guest_fails(instance, 'ls', '/mnt/rescue/config-drive/openstack')
        self.driver.unrescue(self.context, instance)
        self.wait_booted(instance, times=3)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])

    def test_unwritable_drive_fails_spawn_leaving_nothing(self):
        # What the privileged side refuses (a path out of the tree) stands
        # for any write that fails: spawn undoes every step.
        self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.virt.configdrive.build', autospec=True,
            return_value={'../escape': b'x'}))
        instance = self.make_guest()
        error = self.assertRaises(exception.ConfigDriveBuildFailed,
                                  self.spawn_guest, instance, wait_boot=False)
        self.assertIn('../escape', str(error))
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
