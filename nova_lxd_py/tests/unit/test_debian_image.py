"""The Debian guest image builder: the host's archive and release, and one
build for many concurrent callers (the build itself is mocked here; the
functional test_debian_guest runs it for real)."""

import os
import threading
import time

import ddt
import fixtures
from oslotest import base

from nova_lxd_py.tests import debian_image

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: trixie-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
"""


@ddt.ddt
class SourcesTest(base.BaseTestCase):

    def test_deb822_sources_skip_sources_and_comments(self):
        self.assertEqual(
            [('http://mirror.example/debian', ['trixie', 'trixie-updates']),
             ('http://mirror.example/debian-security', ['trixie-security'])],
            list(debian_image._deb822_sources(DEB822)))

    def test_deb822_disabled_stanza_ignored(self):
        text = 'Types: deb\nEnabled: no\nURIs: http://x/\nSuites: trixie\n'
        self.assertEqual([], list(debian_image._deb822_sources(text)))

    def test_one_line_sources_skip_options_and_comments(self):
        self.assertEqual(
            [('http://mirror.example/debian', ['bookworm']),
             ('http://security.example/debian-security',
              ['bookworm-security'])],
            list(debian_image._one_line_sources(ONE_LINE)))

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
        return path

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MockPatchObject(
            debian_image, 'APT_DIR', self.dir))

    @ddt.data(('bookworm', 'http://mirror.example/debian'),
              ('trixie', 'http://mirror.example/debian'),
              ('forky', debian_image.DEFAULT_MIRROR))
    @ddt.unpack
    def test_host_mirror_serves_exact_release(self, release, expected):
        # One-line and deb822 files alike; a suite's -security and
        # -updates do not count as the release.
        self.write('sources.list', ONE_LINE)
        self.write('sources.list.d/debian.sources', DEB822)
        self.write('sources.list.d/other.sources.disabled',
                   'Types: deb\nURIs: http://no/\nSuites: forky\n')
        self.assertEqual(expected, debian_image.host_mirror(release))

    @ddt.data(('VERSION_CODENAME=trixie\n', '', 'trixie'),
              ('ID=debian\n', '12.11', 'bookworm'),
              ('ID=debian\n', '13.2', 'trixie'),
              ('', 'forky/sid', 'forky'))
    @ddt.unpack
    def test_host_release(self, os_release, debian_version, expected):
        self.useFixture(fixtures.MockPatchObject(
            debian_image, 'OS_RELEASE', self.write('os-release', os_release)))
        self.useFixture(fixtures.MockPatchObject(
            debian_image, 'DEBIAN_VERSION',
            self.write('debian_version', debian_version)))
        self.assertEqual(expected, debian_image.host_release())

    def test_host_release_unknown_version_refused(self):
        self.useFixture(fixtures.MockPatchObject(
            debian_image, 'OS_RELEASE', self.write('os-release', '')))
        self.useFixture(fixtures.MockPatchObject(
            debian_image, 'DEBIAN_VERSION', self.write('debian_version',
                                                       '7.11')))
        self.assertRaises(RuntimeError, debian_image.host_release)


class BuildTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.cache = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MockPatchObject(
            debian_image, 'CACHE_DIR', self.cache))
        self.useFixture(fixtures.MockPatchObject(
            debian_image, 'skip_reason', return_value=None))
        self.builds = []

        def debootstrap(rootfs, release, packages, mirror):
            self.builds.append(release)
            time.sleep(0.2)   # long enough for the others to queue
            os.makedirs(rootfs)

        self.useFixture(fixtures.MockPatchObject(
            debian_image, '_debootstrap', side_effect=debootstrap))
        self.useFixture(fixtures.MockPatchObject(debian_image, '_configure'))
        self.useFixture(fixtures.MockPatchObject(
            debian_image, '_pack',
            side_effect=lambda rootfs, out: open(out, 'w').close()))

    def test_concurrent_callers_share_one_build(self):
        paths = []
        threads = [threading.Thread(target=lambda: paths.append(
            debian_image.build(release='trixie', mirror='http://m/')))
            for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(['trixie'], self.builds)
        self.assertEqual(1, len(set(paths)))
        self.assertTrue(os.path.exists(paths[0]))
        # Only the image and its lock file remain: no temp dir.
        self.assertEqual(
            sorted([os.path.basename(paths[0]),
                    os.path.basename(paths[0]) + '.lock']),
            sorted(os.listdir(self.cache)))

    def test_killed_builders_work_dir_removed(self):
        path = debian_image.image_path('trixie')
        stale = os.path.join(self.cache, '.build-%s-dead' %
                             os.path.basename(path))
        os.makedirs(os.path.join(stale, 'rootfs', 'etc'))
        other = os.path.join(self.cache, '.build-another-image-x')
        os.makedirs(other)   # another image's: maybe building right now
        debian_image.build(release='trixie', mirror='http://m/')
        self.assertFalse(os.path.exists(stale))
        self.assertTrue(os.path.exists(other))

    def test_failed_build_leaves_no_image_and_retries(self):
        debootstrap = debian_image._debootstrap.side_effect
        debian_image._debootstrap.side_effect = RuntimeError('no archive')
        self.assertRaises(RuntimeError, debian_image.build,
                          release='trixie', mirror='http://m/')
        self.assertEqual([], [n for n in os.listdir(self.cache)
                              if not n.endswith('.lock')])
        debian_image._debootstrap.side_effect = debootstrap
        self.assertTrue(os.path.exists(debian_image.build(
            release='trixie', mirror='http://m/')))

    def test_key_changes_with_packages(self):
        self.assertNotEqual(
            debian_image.image_path('trixie'),
            debian_image.image_path('trixie', debian_image.PACKAGES +
                                    ('openssh-server',)))

    def test_skip_reason_raises_skip(self):
        debian_image.skip_reason.return_value = 'no debootstrap'
        self.assertRaises(self.skipException, debian_image.build)


class SkipReasonTest(base.BaseTestCase):

    def test_no_debootstrap_named_in_reason(self):
        self.useFixture(fixtures.MockPatch('os.geteuid', return_value=0))
        self.useFixture(fixtures.MockPatch(
            'shutil.which', side_effect=lambda name: None
            if name == 'debootstrap' else '/usr/bin/' + name))
        self.assertIn('debootstrap is not installed',
                      debian_image.skip_reason())

    def test_root_with_tools_can_build(self):
        self.useFixture(fixtures.MockPatch('os.geteuid', return_value=0))
        self.useFixture(fixtures.MockPatch(
            'shutil.which', side_effect=lambda name: '/usr/bin/' + name))
        self.assertIsNone(debian_image.skip_reason())
