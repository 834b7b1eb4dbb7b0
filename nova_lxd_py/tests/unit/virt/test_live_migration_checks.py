"""What a live migration refuses before it touches anything, and why."""

from unittest import mock

import fixtures
from nova import exception as nova_exception
from nova.objects import migrate_data as migrate_data_obj
from oslo_config import fixture as config_fixture
from oslotest import base

from nova_lxd_py import conf
from nova_lxd_py.storage import backends
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import container
from nova_lxd_py.virt import live_migration

UUID = '0f0f0f0f-0000-4000-8000-000000000001'


class Instance:
    uuid = UUID


class ChecksTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(conf.CONF))
        self.conf.config(group='lxc', container_path=self.useFixture(
            fixtures.TempDir()).path)
        self.conf.config(my_ip='198.18.0.7', host='dest-host')
        self.checkpoints = checkpoint.Checkpoints()
        self.checkpoints.reason = ''      # a host whose CRIU works
        self.lives = live_migration.LiveMigrations(
            backends.get('overlay'), self.checkpoints, None, None)
        patcher = mock.patch.object(container, 'state', autospec=True,
                                    return_value=('RUNNING', 42))
        self.state = patcher.start()
        self.addCleanup(patcher.stop)

    def test_destination_answers_with_its_address_and_no_sharing(self):
        data = self.lives.check_destination(None, Instance())
        self.assertIsInstance(data, migrate_data_obj.LibvirtLiveMigrateData)
        self.assertEqual('198.18.0.7', data.target_connect_addr)
        self.assertEqual('overlay', data.image_type)
        self.assertFalse(data.is_shared_instance_path)
        self.assertFalse(data.is_shared_block_storage)

    def test_destination_without_criu_refuses_and_says_why(self):
        self.checkpoints.reason = 'no criu on PATH'
        exc = self.assertRaises(nova_exception.MigrationPreCheckError,
                                self.lives.check_destination, None,
                                Instance())
        self.assertIn('dest-host cannot restore guests: no criu on PATH',
                      str(exc))

    def test_source_refuses_a_paused_guest(self):
        self.state.return_value = ('FROZEN', 42)
        data = self.lives.check_destination(None, Instance())
        exc = self.assertRaises(nova_exception.MigrationPreCheckError,
                                self.lives.check_source, None, Instance(),
                                data)
        self.assertIn('the guest is frozen', str(exc))
        self.assertIn('unpause it first', str(exc))

    def test_source_refuses_another_root_disk_backend(self):
        data = self.lives.check_destination(None, Instance())
        data.image_type = 'btrfs'
        exc = self.assertRaises(nova_exception.MigrationPreCheckError,
                                self.lives.check_source, None, Instance(),
                                data)
        self.assertIn('btrfs backend, this host with overlay', str(exc))

    def test_source_without_criu_refuses(self):
        data = self.lives.check_destination(None, Instance())
        self.checkpoints.reason = 'criu check fails'
        exc = self.assertRaises(nova_exception.MigrationPreCheckError,
                                self.lives.check_source, None, Instance(),
                                data)
        self.assertIn('cannot checkpoint guests: criu check fails', str(exc))

    def test_source_passes_the_destinations_answer_on(self):
        data = self.lives.check_destination(None, Instance())
        self.assertIs(data, self.lives.check_source(None, Instance(), data))
