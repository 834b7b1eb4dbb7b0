"""A devstack host for the plugin's tests: devstack/ run phase by phase
against stand-ins for devstack.

devstack itself cannot run here (it clones services from the network), so
each test sources the plugin the way stack.sh does, with devstack's
functions replaced by ``devstack_stubs.sh``: iniset writes a real nova.conf
in a temporary directory, install_package, setup_develop, openstack and
sudo record their arguments. Every path the plugin touches (nova.conf,
/etc/subuid, /etc/subgid, nova's package directory, the instances
path) points into the test's temporary directory.
"""

import configparser
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DEVSTACK = os.path.join(REPO, 'devstack')
STUBS = os.path.join(HERE, 'devstack_stubs.sh')
SHELL_FILES = ['plugin.sh', 'settings', 'override-defaults']

# External commands the plugin runs, as scripts that record their call.
COMMAND_STUBS = {
    'openstack': '''
        # "flavor show NAME" / "image show NAME" find only the names
        # listed in $STUB_OPENSTACK_EXISTING.
        if [[ "$4" == "show" ]]; then
            for name in $STUB_OPENSTACK_EXISTING; do
                [[ "$5" == "$name" ]] && exit 0
            done
            exit 1
        fi
        ''',
    'lxc-ls': 'for name in $STUB_LXC_CONTAINERS; do echo "$name"; done',
    'lxc-stop': '',
    'lxc-unfreeze': '',
    # nova's python: finds the fake nova package in $STUB_SITE; the guest
    # image build only writes a placeholder file.
    'python3': '''
        if [[ "$1 $2" == "-m nova_lxd_py.tests.guest_image" ]]; then
            echo rootfs > "$3"
            exit 0
        fi
        # -S: never the test's own site-packages, whose nova is real.
        PYTHONPATH=$STUB_SITE exec "$STUB_PYTHON" -S "$@"
        ''',
}


class Devstack:
    """A devstack host laid out under ``root``, driven one phase at a time."""

    def __init__(self, root):
        self.root = str(root)
        self.log = self.path('calls.log')
        self.bin = self.path('bin')
        self.site = self.path('site')
        self.dest = self.path('opt', 'stack')
        self.data = os.path.join(self.dest, 'data')
        self.instances = os.path.join(self.data, 'nova', 'instances')
        self.nova_conf_dir = self.path('etc', 'nova')
        self.nova_conf = os.path.join(self.nova_conf_dir, 'nova.conf')
        self.subuid = self.path('etc', 'subuid')
        self.subgid = self.path('etc', 'subgid')
        self.lxcfs = self.path('var', 'lib', 'lxcfs')
        self.nova_virt = os.path.join(self.site, 'nova', 'virt')
        for d in (self.bin, self.nova_virt, self.instances,
                  self.nova_conf_dir):
            os.makedirs(d)
        for d in (os.path.join(self.site, 'nova'), self.nova_virt):
            open(os.path.join(d, '__init__.py'), 'w').close()
        for f in (self.subuid, self.subgid):
            open(f, 'w').close()
        for name, body in COMMAND_STUBS.items():
            self._command_stub(name, body)
        self.env = {
            'PATH': self.bin + os.pathsep + os.environ['PATH'],
            'HOME': self.root,
            'STUB_LOG': self.log,
            'STUB_PYTHON': sys.executable,
            'STUB_SITE': self.site,
            # devstack's globals
            'ENABLED_SERVICES': 'key,g-api,n-api,n-cond,n-sch,n-cpu,'
                                'placement-api',
            'DEST': self.dest,
            'DATA_DIR': self.data,
            'STACK_USER': 'stack',
            'NOVA_CONF_DIR': self.nova_conf_dir,
            'NOVA_CONF': self.nova_conf,
            'NOVA_INSTANCES_PATH': self.instances,
            'NOVA_BIN_DIR': self.path('no-venv', 'bin'),
            'VIRT_DRIVER': 'libvirt',
            # the plugin's paths into the host
            'NOVA_LXD_PY_PYTHON': os.path.join(self.bin, 'python3'),
            'NOVA_LXD_PY_SUBUID_FILE': self.subuid,
            'NOVA_LXD_PY_SUBGID_FILE': self.subgid,
            'NOVA_LXD_PY_LXCFS_PATH': self.lxcfs,
        }

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def _command_stub(self, name, body):
        script = os.path.join(self.bin, name)
        with open(script, 'w') as f:
            f.write('#!/bin/bash\necho "%s $*" >>"$STUB_LOG"\n' % name)
            f.write(textwrap.dedent(body))
        os.chmod(script, 0o755)

    def run(self, *args, check=True, override_defaults=True, **env):
        """Source the plugin as stack.sh does: ``run('stack', 'install')``."""
        script = ('set -o errexit\n'
                  'source "$1"; shift\n'
                  + ('source "$DEVSTACK/override-defaults"\n'
                     if override_defaults else '') +
                  'source "$DEVSTACK/settings"\n'
                  'source "$DEVSTACK/plugin.sh" "$@"\n')
        full_env = dict(self.env, DEVSTACK=DEVSTACK, **env)
        result = subprocess.run(['bash', '-c', script, 'stack.sh', STUBS]
                                + list(args), env=full_env, cwd=self.root,
                                capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def calls(self, prefix=''):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.rstrip('\n') for line in f
                    if line.startswith(prefix)]

    def ini(self, path=None):
        # DEFAULT as a section like any other, not defaults for the rest.
        parser = configparser.RawConfigParser(default_section='-')
        parser.optionxform = str
        parser.read(path or self.nova_conf)
        return parser

    def read(self, path):
        with open(path) as f:
            return f.read()
