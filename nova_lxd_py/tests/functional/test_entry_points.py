"""The entry points setup.cfg declares work from the installed metadata."""

import os
import subprocess
import sys
import tempfile
import unittest
from importlib import metadata

BIN_DIR = os.path.dirname(sys.executable)


def _entry_point(group, name):
    found = [ep for ep in metadata.entry_points(group=group)
             if ep.name == name and ep.dist.name == 'nova-lxd-py']
    if len(found) != 1:
        raise AssertionError('nova-lxd-py declares %d entry points %s in %s; '
                             'is it installed?' % (len(found), name, group))
    return found[0]


class EntryPointsTest(unittest.TestCase):

    def test_config_generator_writes_lxc_options(self):
        with tempfile.TemporaryDirectory() as tmp:
            sample = os.path.join(tmp, 'sample.conf')
            subprocess.run(
                [os.path.join(BIN_DIR, 'oslo-config-generator'),
                 '--namespace', 'nova_lxd_py', '--output-file', sample],
                check=True, cwd=tmp, stdin=subprocess.DEVNULL, timeout=120)
            with open(sample) as f:
                text = f.read()
        self.assertIn('[lxc]\n', text)
        for option in ('container_path', 'allow_privileged', 'pids_max'):
            self.assertIn('\n#%s = ' % option, text)

    def test_extra_spec_validators_load(self):
        module = _entry_point('nova.api.extra_spec_validators', 'lxc').load()
        names = {v.name for v in module.register()}
        self.assertEqual(
            {'lxc:privileged', 'lxc:nesting', 'lxc:pids_max'}, names)
