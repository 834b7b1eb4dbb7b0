"""Guest path resolution and init detection on real temporary trees."""

import os

import ddt
import fixtures
from oslotest import base

from nova_lxd_py.storage import images
from nova_lxd_py.virt import config


def make_tree(root, spec):
    """spec: {guest path: 'dir' | ('sym', target) | file content (str)}."""
    for path, what in spec.items():
        host = os.path.join(root, path.lstrip('/'))
        os.makedirs(os.path.dirname(host), exist_ok=True)
        if what == 'dir':
            os.makedirs(host, exist_ok=True)
        elif isinstance(what, tuple):
            os.symlink(what[1], host)
        else:
            with open(host, 'w') as f:
                f.write(what)


BUSYBOX = {'/bin/busybox': 'elf', '/sbin/init': ('sym', '/bin/busybox')}


@ddt.ddt
class ResolveInRootTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path

    def resolve(self, spec, path):
        make_tree(self.root, spec)
        found = images.resolve_in_root(self.root, path)
        return None if found is None else os.path.relpath(found, self.root)

    @ddt.unpack
    @ddt.data(
        # tree, guest path -> host path relative to the root (None: loop)
        ({'/a/b': 'x'}, '/a/b', 'a/b'),
        ({}, '/not/there', 'not/there'),
        ({}, '/', '.'),
        (BUSYBOX, '/sbin/init', 'bin/busybox'),
        ({'/bin/busybox': 'x', '/sbin/init': ('sym', '../bin/busybox')},
         '/sbin/init', 'bin/busybox'),
        # An absolute target restarts at the guest's root, not the host's.
        ({'/etc/passwd': 'guest', '/link': ('sym', '/etc/passwd')}, '/link',
         'etc/passwd'),
        ({'/etc': 'dir', '/l': ('sym', '/etc/../../../../etc')}, '/l',
         'etc'),
        # '..' never climbs above the guest's root.
        ({}, '/../../../etc/passwd', 'etc/passwd'),
        ({'/a': 'dir', '/a/up': ('sym', '../../../..')}, '/a/up/x', 'x'),
        # Directory links in the middle of a path.
        ({'/usr/lib/systemd/systemd': 'x', '/lib': ('sym', 'usr/lib'),
          '/sbin/init': ('sym', '/lib/systemd/systemd')}, '/sbin/init',
         'usr/lib/systemd/systemd'),
        ({'/x': ('sym', 'y'), '/y': ('sym', 'z'), '/z': 'end'}, '/x', 'z'),
        ({'/a': 'dir'}, '/a/./b//c/', 'a/b/c'),
        # Loops end in None.
        ({'/loop': ('sym', '/loop')}, '/loop', None),
        ({'/a': ('sym', 'b'), '/b': ('sym', 'a')}, '/a/x', None),
        ({'/d': 'dir', '/d/self': ('sym', '.')},
         '/d' + '/self' * 41, None),
    )
    def test_resolve_in_root_tree(self, spec, path, expected):
        self.assertEqual(expected, self.resolve(spec, path))

    def test_resolve_in_root_link_to_host_path_stays_inside(self):
        # A link to the host path of the root itself lands in the guest's
        # tree under that name, not on the host.
        make_tree(self.root, {'/x': ('sym', self.root)})
        self.assertEqual(os.path.join(self.root, self.root.lstrip('/')),
                         images.resolve_in_root(self.root, '/x'))


@ddt.ddt
class InitKindTest(base.BaseTestCase):

    def kind(self, spec, prefix='tmp'):
        root = self.useFixture(fixtures.TempDir()).join(prefix)
        os.mkdir(root)
        make_tree(root, spec)
        return images.init_kind(root)

    @ddt.unpack
    @ddt.data(
        (BUSYBOX, 'busybox'),
        ({'/bin/busybox': 'x', '/sbin/init': ('sym', '../bin/busybox')},
         'busybox'),
        ({'/lib/systemd/systemd': 'x',
          '/sbin/init': ('sym', '/lib/systemd/systemd')}, 'systemd'),
        ({'/usr/lib/systemd/systemd': 'x', '/lib': ('sym', 'usr/lib'),
          '/sbin/init': ('sym', '/lib/systemd/systemd')}, 'systemd'),
        ({'/sbin/init': 'sysvinit binary'}, 'sysv'),
        ({'/sbin/upstart': 'x', '/sbin/init': ('sym', 'upstart')}, 'sysv'),
        # Not bootable: none, dangling, a directory, a loop.
        ({'/bin/busybox': 'x'}, None),
        ({'/sbin/init': ('sym', '/bin/busybox')}, None),
        ({'/sbin/init': 'dir'}, None),
        ({'/sbin/init': ('sym', '/sbin/init')}, None),
    )
    def test_init_kind_from_sbin_init(self, spec, expected):
        self.assertEqual(expected, self.kind(spec))

    def test_init_kind_ignores_host_path_of_cache(self):
        # Only the guest's own path says what init is: a cache directory
        # whose host path contains "systemd" changes nothing.
        spec = {'/sbin/init': 'sysvinit binary'}
        self.assertEqual('sysv', self.kind(spec, prefix='systemd-cache'))

    def test_init_kind_has_signals(self):
        self.assertIn(self.kind(BUSYBOX), config.INIT_SIGNALS)


class EntryNameTest(base.BaseTestCase):

    def test_entry_name_per_hash_and_id_range(self):
        digest = 'ab12' * 32
        self.assertEqual('img.ab12ab12ab12ab12.u100000g200000',
                         images.ImageCache.entry_name(
                             'img', digest,
                             config.IdMap(100000, 200000, 65536)))
        self.assertEqual('img.ab12ab12ab12ab12.privileged',
                         images.ImageCache.entry_name('img', digest, None))
        self.assertEqual('img.nohash.privileged',
                         images.ImageCache.entry_name('img', None, None))

    def test_expected_hash_prefers_multihash(self):
        self.assertEqual(('sha512', 'ff'), images.expected_hash(
            {'os_hash_algo': 'sha512', 'os_hash_value': 'FF',
             'checksum': 'aa'}))
        self.assertEqual(('md5', 'aa'), images.expected_hash(
            {'os_hash_algo': None, 'checksum': 'aa'}))
        self.assertEqual(('md5', 'aa'), images.expected_hash(
            {'os_hash_algo': 'no-such-algo', 'os_hash_value': 'ff',
             'checksum': 'aa'}))
        self.assertEqual((None, None), images.expected_hash({}))
