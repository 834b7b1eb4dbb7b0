"""The config drive's content (Nova's metadata builder) and its tree on the
host (the privileged writer)."""

import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import base64  # noqa: E402
import json  # noqa: E402
import stat  # noqa: E402

import ddt  # noqa: E402
import fixtures  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import objects  # noqa: E402
from nova.tests.unit import fake_instance  # noqa: E402
from oslo_config import cfg  # noqa: E402
from oslo_config import fixture as config_fixture  # noqa: E402
from oslotest import base  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.privsep import fs  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.virt import configdrive  # noqa: E402

CONF = cfg.CONF


def make_instance(config_drive=True, user_data=b'#cloud-config\n'):
    ctx = nova_context.get_admin_context()
    flavor = objects.Flavor(vcpus=1, memory_mb=256, root_gb=1,
                            ephemeral_gb=0, swap=0, extra_specs={},
                            name='m1.test', flavorid='test')
    instance = fake_instance.fake_instance_obj(ctx, flavor=flavor,
                                               hostname='guest-1')
    instance.system_metadata = {}
    instance.config_drive = 'True' if config_drive else ''
    instance.user_data = (base64.b64encode(user_data).decode()
                          if isinstance(user_data, bytes) else user_data)
    instance.key_name = 'k'
    instance.key_data = 'ssh-ed25519 AAAA k'
    instance.keypairs = objects.KeyPairList(objects=[objects.KeyPair(
        name='k', public_key='ssh-ed25519 AAAA k', type='ssh')])
    instance.ec2_ids = objects.EC2Ids(instance_id='i-1', ami_id='ami-1',
                                      kernel_id=None, ramdisk_id=None)
    instance.metadata = {}
    instance.device_metadata = None
    instance.numa_topology = None
    return instance


class BuildTest(base.BaseTestCase):
    """Nova's builder for real; Neutron and the database are the seams."""

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(CONF))
        self.useFixture(fixtures.MockPatch(
            'nova.network.security_group_api.get_instance_security_groups',
            autospec=True, return_value=[]))
        self.useFixture(fixtures.MockPatch(
            'nova.objects.BlockDeviceMappingList.get_by_instance_uuid',
            return_value=objects.BlockDeviceMappingList(objects=[])))

    def test_none_unless_required(self):
        self.assertIsNone(configdrive.build(
            make_instance(config_drive=False), [], None, []))

    def test_forced_by_the_host(self):
        self.conf.config(force_config_drive=True)
        self.assertIn('openstack/latest/meta_data.json', configdrive.build(
            make_instance(config_drive=False), [], None, []))

    def test_nova_layout_with_injected_files_and_password(self):
        instance = make_instance()
        files = configdrive.build(instance, [('/etc/motd', b'hi')], 'pw', [])
        meta = json.loads(files['openstack/latest/meta_data.json'])
        self.assertEqual(instance.uuid, meta['uuid'])
        self.assertEqual('pw', meta['admin_pass'])
        self.assertEqual({'k': 'ssh-ed25519 AAAA k'}, meta['public_keys'])
        self.assertEqual(b'#cloud-config\n',
                         files['openstack/latest/user_data'])
        self.assertEqual(b'hi', files['openstack/content/0000'])
        self.assertIn('ec2/latest/meta-data.json', files)
        self.assertTrue(all(isinstance(d, bytes) for d in files.values()))

    def test_undecodable_user_data_is_invalid_input(self):
        error = self.assertRaises(
            exception.ConfigDriveInvalid, configdrive.build,
            make_instance(user_data='not base64!'), [], None, [])
        self.assertIn('config drive',
                      str(error))


@ddt.ddt
class WriteTreeTest(base.BaseTestCase):
    """The privileged writer, in this process, on a private directory."""

    def setUp(self):
        super().setUp()
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        self.top = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(CONF)).config(
            group='lxc', container_path=self.top)
        self.path = os.path.join(self.top, 'c', 'config-drive')
        os.mkdir(os.path.dirname(self.path))

    def listing(self):
        found = {}
        for top, _, names in os.walk(self.top):
            for name in names:
                path = os.path.join(top, name)
                found[os.path.relpath(path, self.top)] = (
                    stat.S_IMODE(os.stat(path).st_mode))
        return found

    def test_tree_readable_by_all_and_replaced_whole(self):
        fs.write_tree(self.path, {'a/b/c.json': b'{}', 'd': b'x'})
        fs.write_tree(self.path, {'openstack/latest/user_data': b'u'})
        self.assertEqual({'c/config-drive/openstack/latest/user_data': 0o644},
                         self.listing())
        for sub in ('', 'openstack', 'openstack/latest'):
            self.assertEqual(0o755, stat.S_IMODE(
                os.stat(os.path.join(self.path, sub)).st_mode))

    @ddt.data('../x', 'a/../../x', '/etc/x', './x', 'a//b', 'a/', '',
              'a/./b', 'a\0b')
    def test_path_leaving_the_tree_refused_leaving_nothing(self, rel):
        self.assertRaises(ValueError, fs.write_tree, self.path,
                          {'ok': b'1', rel: b'2'})
        self.assertEqual({}, self.listing())
        self.assertEqual(['c'], os.listdir(self.top))

    def test_outside_our_directories_refused(self):
        self.assertRaises(ValueError, fs.write_tree, '/tmp/nope', {})


class WriteTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.write_tree = self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.privsep.fs.write_tree', autospec=True)).mock
        self.instance = make_instance()

    def test_no_drive_no_mount(self):
        self.assertEqual([], configdrive.write(self.instance, '/c', None))
        self.write_tree.assert_not_called()

    def test_mounted_read_only_where_cloud_init_looks(self):
        self.assertEqual([('/c/config-drive', '/config-drive')],
                         configdrive.write(self.instance, '/c', {'a': b''}))

    def test_write_failure_names_the_instance_and_path(self):
        self.write_tree.side_effect = OSError(28, 'No space left on device')
        error = self.assertRaises(exception.ConfigDriveBuildFailed,
                                  configdrive.write, self.instance, '/c',
                                  {'a': b''})
        self.assertIn(self.instance.uuid, str(error))
        self.assertIn('/c/config-drive', str(error))
        self.assertIn('No space left', str(error))
