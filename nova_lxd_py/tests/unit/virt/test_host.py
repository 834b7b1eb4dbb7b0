"""Host facts read from files: subordinate id ranges."""

import os

import ddt
import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from nova_lxd_py import exception
from nova_lxd_py.virt import host


@ddt.ddt
class SubordinateStartTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def write(self, text, name='subuid'):
        path = os.path.join(self.dir, name)
        with open(path, 'w') as f:
            f.write(text)
        return path

    @ddt.unpack
    @ddt.data(
        # file text, user, size -> first id (None: no usable range)
        ('nova:100000:65536\n', 'nova', 65536, 100000),
        ('nova:100000:65536', 'nova', 65536, 100000),       # no newline
        ('nova:100000:70000\n', 'nova', 65536, 100000),     # larger is fine
        ('other:100000:65536\nnova:300000:65536\n', 'nova', 65536, 300000),
        ('other:100000:65536\n', 'nova', 65536, None),
        ('nova:100000:65535\n', 'nova', 65536, None),       # too small
        ('nova:100000:1000\nnova:500000:65536\n', 'nova', 65536, 500000),
        ('nova:100000:65536\nnova:500000:65536\n', 'nova', 65536, 100000),
        ('novax:100000:65536\n', 'nova', 65536, None),      # user prefix
        ('  nova:100000:65536  \n', 'nova', 65536, 100000),
        # malformed lines are skipped, not fatal
        ('nova:100000\nnova:abc:65536\nnova:1:2:3\nnova:-5:65536\n'
         'nova:200000:65536\n', 'nova', 65536, 200000),
        ('# comment\n\nnova:100000:65536\n', 'nova', 65536, 100000),
        ('', 'nova', 65536, None),
    )
    def test_subordinate_start_file_contents(self, text, user, size, expected):
        self.assertEqual(expected,
                         host.subordinate_start(user, self.write(text), size))

    def test_subordinate_start_missing_file(self):
        self.assertIsNone(host.subordinate_start(
            'root', os.path.join(self.dir, 'absent'), 65536))

    def test_idmap_from_both_files(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.host.SUBUID', self.write('nova:100000:65536\n')))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.host.SUBGID',
            self.write('nova:300000:65536\n', 'subgid')))
        self.flags('nova')
        idmap = host.idmap()
        self.assertEqual((100000, 300000, 65536),
                         (idmap.uid_start, idmap.gid_start, idmap.size))

    @ddt.unpack
    @ddt.data(
        # subuid, subgid -> the kind reported missing
        ('', 'nova:300000:65536\n', 'uid'),
        ('nova:100000:65536\n', 'other:300000:65536\n', 'gid'),
    )
    def test_idmap_without_range(self, subuid, subgid, kind):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.host.SUBUID', self.write(subuid)))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.host.SUBGID', self.write(subgid, 'subgid')))
        self.flags('nova')
        e = self.assertRaises(exception.NoSubordinateIds, host.idmap)
        self.assertIn('subordinate %s range' % kind, str(e))

    def flags(self, user):
        conf = self.useFixture(config_fixture.Config(host.CONF))
        conf.config(group='lxc', idmap_user=user, idmap_size=65536)
