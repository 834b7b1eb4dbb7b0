"""What nova-compute finds out about this host's CRIU at start.

Real ``criu`` processes: the one installed on this host (tools/criu/
build.sh, when present), and stand-ins on a private PATH that print what
an old or broken CRIU prints, so each refusal an operator can meet is seen
with the words they would read.
"""

import os
import shutil
import stat
import textwrap

import fixtures
from oslotest import base

from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.virt import checkpoint


class CheckpointProbeTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('criu check needs root')
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        self.bin = self.useFixture(fixtures.TempDir()).path

    def only_path(self, *dirs):
        # What the daemon's PATH holds; the host's tools stay reachable
        # through /usr/bin for the stand-ins' own shell.
        self.useFixture(fixtures.EnvironmentVariable(
            'PATH', os.pathsep.join(dirs + ('/usr/bin', '/bin'))))

    def fake_criu(self, version, check_rc=0, check_out='Looks good.',
                  features=()):
        path = os.path.join(self.bin, 'criu')
        with open(path, 'w') as f:
            f.write(textwrap.dedent('''\
                #!/bin/sh
                case "$1 $2" in
                "--version ") echo "Version: %s"; exit 0 ;;
                "check --feature")
                    for f in %s; do [ "$f" = "$3" ] && exit 0; done
                    exit 1 ;;
                "check ") echo "%s"; exit %d ;;
                esac
                exit 2
                ''' % (version, ' '.join(features) or 'none', check_out,
                       check_rc)))
        os.chmod(path, stat.S_IRWXU)
        self.only_path(self.bin)
        return path

    def probe(self):
        found = checkpoint.Checkpoints()
        log = self.useFixture(fixtures.FakeLogger(name=checkpoint.__name__))
        found.probe()
        return found, log.output

    def test_this_hosts_criu(self):
        if not shutil.which('criu'):
            self.skipTest('no criu on this host (tools/criu/build.sh)')
        found, log = self.probe()
        self.assertTrue(found.available, found.reason)
        self.assertGreaterEqual(checkpoint.version_tuple(found.version),
                                checkpoint.MIN_VERSION)
        self.assertIn('passes criu check', log)
        # What this kernel has: userfaultfd yes, soft-dirty no (the
        # features are read, never assumed: both are only reported).
        self.assertEqual(set(checkpoint.FEATURES), set(found.features))

    def test_no_criu_on_path(self):
        self.only_path(self.bin)
        found, log = self.probe()
        self.assertFalse(found.available)
        self.assertEqual('no criu on PATH', found.reason)
        self.assertIn('cannot be checkpointed', log)
        self.assertIn('tools/criu/build.sh', log)

    def test_criu_too_old_for_phys_ports(self):
        path = self.fake_criu('3.14')
        found, _ = self.probe()
        self.assertFalse(found.available)
        self.assertIn('CRIU 3.14 at %s is older than 3.15' % path,
                      found.reason)

    def test_criu_check_fails(self):
        # Debian 12's 3.17 on kernels with a larger vDSO.
        self.fake_criu('3.17', check_rc=1,
                       check_out='Error (criu/vdso.c:203): vdso: bad size')
        found, _ = self.probe()
        self.assertFalse(found.available)
        self.assertIn('criu check fails with CRIU 3.17', found.reason)
        self.assertIn('vdso: bad size', found.reason)
        self.assertFalse(found.lazy_pages)

    def test_features_reported_as_criu_answers(self):
        self.fake_criu('4.1.1', features=('uffd-noncoop',))
        found, log = self.probe()
        self.assertTrue(found.available, found.reason)
        self.assertTrue(found.lazy_pages)
        self.assertFalse(found.dirty_tracking)
        self.assertIn('post-copy (lazy pages) yes', log)
        self.assertIn('pre-copy (dirty memory tracking) no', log)

    def test_criu_without_a_version(self):
        self.fake_criu('')
        found, _ = self.probe()
        self.assertFalse(found.available)
        self.assertIn('reports no version', found.reason)
