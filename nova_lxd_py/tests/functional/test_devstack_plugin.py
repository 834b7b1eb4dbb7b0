"""devstack/ run phase by phase against stand-ins for devstack.

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
import re
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

# Only oslo.config here: nova, oslo.privsep and the driver import eventlet,
# which must wait until the test packages have settled nova's concurrency
# mode; tests that need them import them themselves.
from nova_lxd_py import conf

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


@pytest.fixture
def devstack(tmp_path):
    return Devstack(tmp_path)


# -- install ---------------------------------------------------------------

def test_install_packages_before_building_the_driver(devstack):
    devstack.run('stack', 'install')
    calls = devstack.calls()
    packages = calls.index(next(c for c in calls
                                if c.startswith('install_package ')))
    develop = calls.index('setup_develop ' + REPO)
    assert packages < develop
    assert set(calls[packages].split()[1:]) >= {
        'lxc', 'lxc-dev', 'lxcfs', 'busybox-static', 'uidmap'}


def test_install_builds_criu_after_the_driver(devstack):
    devstack.run('stack', 'install')
    calls = devstack.calls()
    build = 'sudo %s/tools/criu/build.sh' % REPO
    assert calls.index('setup_develop ' + REPO) < calls.index(build)


def test_install_without_criu_when_turned_off(devstack):
    devstack.run('stack', 'install', NOVA_LXD_PY_CRIU='False')
    assert not [c for c in devstack.calls() if 'criu' in c]


def test_install_goes_on_when_criu_does_not_build(devstack):
    result = devstack.run('stack', 'install', STUB_CRIU_BUILD_RC='1')
    assert 'CRIU could not be built' in result.stdout
    assert os.path.islink(os.path.join(devstack.nova_virt, 'lxc_py'))


def test_install_links_shim_into_nova_virt(devstack):
    devstack.run('stack', 'install')
    link = os.path.join(devstack.nova_virt, 'lxc_py')
    assert os.path.islink(link)
    assert os.readlink(link) == os.path.join(REPO, 'nova', 'virt', 'lxc_py')
    # What compute_driver names must exist behind the link.
    with open(os.path.join(link, '__init__.py')) as f:
        assert 'LXCDriver' in f.read()


def test_install_keeps_a_shim_that_pip_installed(devstack):
    shim = os.path.join(devstack.nova_virt, 'lxc_py')
    os.mkdir(shim)
    devstack.run('stack', 'install')
    assert not os.path.islink(shim)


def test_install_fails_when_nova_does_not_import(devstack):
    shutil.rmtree(os.path.join(devstack.site, 'nova'))
    result = devstack.run('stack', 'install', check=False)
    assert result.returncode != 0
    assert any(c.startswith('die nova is not importable')
               for c in devstack.calls())


def test_install_skipped_on_hosts_without_nova(devstack):
    devstack.run('stack', 'install', ENABLED_SERVICES='key,g-api')
    assert devstack.calls() == []


def test_nova_python_defaults_to_devstacks(devstack):
    venv_bin = devstack.path('venv', 'bin')
    os.makedirs(venv_bin)
    os.symlink(os.path.join(devstack.bin, 'python3'),
               os.path.join(venv_bin, 'python3'))
    devstack.run('stack', 'extra', NOVA_LXD_PY_PYTHON='',
                 NOVA_BIN_DIR=venv_bin)
    assert len(devstack.calls('python3 -m nova_lxd_py')) == 1


# -- post-config -----------------------------------------------------------

def test_post_config_sets_the_compute_driver(devstack):
    devstack.run('stack', 'post-config')
    nova = devstack.ini()
    assert nova.get('DEFAULT', 'compute_driver') == 'lxc_py.LXCDriver'
    assert nova.get('DEFAULT', 'force_config_drive') == 'False'
    assert nova.get('vnc', 'enabled') == 'False'
    # override-defaults made VIRT_DRIVER lxc_py, so nothing to warn about.
    assert devstack.calls('warn VIRT_DRIVER') == []


def test_post_config_overrides_another_virt_driver_and_warns(devstack):
    devstack.run('stack', 'post-config', override_defaults=False)
    nova = devstack.ini()
    assert nova.get('DEFAULT', 'compute_driver') == 'lxc_py.LXCDriver'
    assert len(devstack.calls('warn VIRT_DRIVER is libvirt')) == 1


def test_override_defaults_selects_our_virt_driver(devstack):
    result = subprocess.run(
        ['bash', '-c', 'VIRT_DRIVER=libvirt; source "$1"; echo $VIRT_DRIVER',
         'x', os.path.join(DEVSTACK, 'override-defaults')],
        capture_output=True, text=True, check=True)
    assert result.stdout.strip() == 'lxc_py'


def test_post_config_writes_driver_defaults_for_lxc_options(devstack):
    devstack.run('stack', 'post-config')
    written = dict(devstack.ini().items('lxc'))
    opts = {opt.name: opt for opt in conf.OPTS}
    assert set(written) == {'idmap_user', 'idmap_size', 'lxcfs_path',
                            'allow_privileged', 'allow_nesting'}
    for name, value in written.items():
        if name == 'lxcfs_path':
            continue   # pointed at the test's own directory
        assert opts[name].type(value) == opts[name].default, name


def test_post_config_maps_every_lxc_option(devstack):
    values = {}
    for opt in conf.OPTS:
        if isinstance(opt, conf.cfg.BoolOpt):
            values[opt.name] = 'True'
        elif isinstance(opt, conf.cfg.IntOpt):
            values[opt.name] = str((opt.type.min or 0) + 70000)
        else:
            values[opt.name] = devstack.path('opt-' + opt.name)
    values['root_disk_backend'] = 'overlay'
    env = {'NOVA_LXD_PY_' + name.upper(): value
           for name, value in values.items()}
    devstack.run('stack', 'post-config', **env)
    assert dict(devstack.ini().items('lxc')) == values


def test_post_config_writes_an_option_set_empty(devstack):
    devstack.run('stack', 'post-config', NOVA_LXD_PY_SECCOMP_PROFILE='')
    assert devstack.ini().get('lxc', 'seccomp_profile') == ''


def test_rootwrap_lets_our_privsep_helper_through(tmp_path):
    """Why post-config installs no rootwrap filter.

    nova-compute starts privsep daemons as "sudo nova-rootwrap
    rootwrap.conf privsep-helper ..."; oslo.rootwrap allows privsep-helper
    with any arguments, even with no filter file at all.
    """
    from oslo_rootwrap import wrapper

    from nova_lxd_py import privsep

    helper = ['privsep-helper', '--config-file', '/etc/nova/nova-cpu.conf',
              '--privsep_context', privsep.sys_admin_pctxt.pypath,
              '--privsep_sock_path', '/tmp/tmpk2v0x9/privsep.sock']
    filters = wrapper.load_filters([str(tmp_path)])
    assert any(f.match(helper) for f in filters)


def test_post_config_adds_subordinate_ids_after_existing_ranges(devstack):
    with open(devstack.subuid, 'w') as f:
        f.write('stack:100000:65536\n')
    with open(devstack.subgid, 'w') as f:
        f.write('stack:100000:65536\nother:165536:65536\n')
    devstack.run('stack', 'post-config')
    assert devstack.read(devstack.subuid).splitlines() == [
        'stack:100000:65536', 'root:231072:65536']
    assert devstack.read(devstack.subgid).splitlines()[-1] == \
        'root:231072:65536'
    # Run again: the ranges are there, nothing is added.
    devstack.run('stack', 'post-config')
    assert devstack.read(devstack.subuid).count('root:') == 1
    assert devstack.read(devstack.subgid).count('root:') == 1


def test_post_config_starts_ids_at_100000_on_a_fresh_host(devstack):
    os.unlink(devstack.subgid)
    devstack.run('stack', 'post-config', NOVA_LXD_PY_IDMAP_USER='nova',
                 NOVA_LXD_PY_IDMAP_SIZE='131072')
    assert devstack.read(devstack.subuid) == 'nova:100000:131072\n'
    assert devstack.read(devstack.subgid) == 'nova:100000:131072\n'


def test_post_config_keeps_a_large_enough_range(devstack):
    for path in (devstack.subuid, devstack.subgid):
        with open(path, 'w') as f:
            f.write('root:1000000:1000000\n')
    devstack.run('stack', 'post-config')
    assert devstack.read(devstack.subuid) == 'root:1000000:1000000\n'
    assert not any('tee' in c for c in devstack.calls('sudo'))


def test_post_config_adds_a_range_past_a_too_small_one(devstack):
    for path in (devstack.subuid, devstack.subgid):
        with open(path, 'w') as f:
            f.write('root:100000:1000\n')
    devstack.run('stack', 'post-config')
    assert devstack.read(devstack.subuid).splitlines() == [
        'root:100000:1000', 'root:101000:65536']


def test_post_config_starts_lxcfs_when_it_is_not_mounted(devstack):
    devstack.run('stack', 'post-config')
    assert devstack.calls('start_service') == ['start_service lxcfs']
    assert any('lxcfs is not mounted' in c for c in devstack.calls('warn'))


def test_post_config_leaves_a_running_lxcfs_alone(devstack):
    os.makedirs(os.path.join(devstack.lxcfs, 'proc'))
    open(os.path.join(devstack.lxcfs, 'proc', 'meminfo'), 'w').close()
    devstack.run('stack', 'post-config')
    assert devstack.calls('start_service') == []


def test_post_config_without_lxcfs(devstack):
    devstack.run('stack', 'post-config', NOVA_LXD_PY_LXCFS_PATH='')
    assert devstack.calls('start_service') == []
    assert devstack.ini().get('lxc', 'lxcfs_path') == ''


def test_post_config_opens_devstack_dirs_to_the_guests_root(devstack):
    os.chmod(devstack.dest, 0o700)
    os.chmod(devstack.data, 0o750)
    devstack.run('stack', 'post-config')
    for path in (devstack.dest, devstack.data):
        assert os.stat(path).st_mode & stat.S_IXOTH, path
    # Directories outside devstack's are reported, never changed.
    chmods = [c.split()[-1] for c in devstack.calls('sudo chmod o+x')]
    assert chmods and all(p.startswith(devstack.dest) for p in chmods)


def test_post_config_skipped_without_nova_compute(devstack):
    devstack.run('stack', 'post-config', ENABLED_SERVICES='n-api,key')
    assert not os.path.exists(devstack.nova_conf)


# -- extra -----------------------------------------------------------------

def _openstack(devstack, *words):
    return [c for c in devstack.calls('openstack --os-cloud devstack-admin '
                                      + ' '.join(words))]


def test_extra_creates_a_flavor_that_requires_container_hosts(devstack):
    from nova_lxd_py.virt import driver

    devstack.run('stack', 'extra')
    [create] = _openstack(devstack, 'flavor', 'create')
    assert '--property trait:%s=required' % driver.CONTAINER_HOST_TRAIT \
        in create
    assert re.search(r'--vcpus 1 --ram 256 --disk 1 .* c1\.container$',
                     create)


def test_extra_builds_and_uploads_the_busybox_image(devstack):
    devstack.run('stack', 'extra')
    image = os.path.join(devstack.data, 'nova-lxd-py',
                         'busybox-rootfs.tar.gz')
    assert devstack.calls('python3 -m') == [
        'python3 -m nova_lxd_py.tests.guest_image ' + image]
    [create] = _openstack(devstack, 'image', 'create')
    for words in ('--disk-format raw', '--container-format bare',
                  '--property img_hv_type=lxc', '--property hw_vm_mode=exe',
                  '--file %s busybox-container' % image):
        assert words in create


def test_extra_uploads_a_given_image_file(devstack):
    rootfs = devstack.path('my-rootfs.tar.xz')
    devstack.run('stack', 'extra', NOVA_LXD_PY_IMAGE_FILE=rootfs,
                 NOVA_LXD_PY_IMAGE_NAME='debian-container')
    assert devstack.calls('python3') == []
    [create] = _openstack(devstack, 'image', 'create')
    assert create.endswith('--file %s debian-container' % rootfs)


def test_extra_keeps_an_existing_flavor_and_image(devstack):
    devstack.run('stack', 'extra',
                 STUB_OPENSTACK_EXISTING='c1.container busybox-container')
    assert _openstack(devstack, 'flavor', 'create') == []
    assert _openstack(devstack, 'image', 'create') == []


def test_extra_skipped_without_nova_api(devstack):
    devstack.run('stack', 'extra', ENABLED_SERVICES='n-cpu')
    assert devstack.calls() == []


# -- unstack and clean -----------------------------------------------------

def test_unstack_thaws_and_stops_every_container(devstack):
    containers = os.path.join(devstack.instances, 'containers')
    os.mkdir(containers)
    devstack.run('unstack', STUB_LXC_CONTAINERS='uuid-a uuid-b')
    assert devstack.calls('lxc-') == [
        'lxc-ls -P %s -1' % containers,
        'lxc-unfreeze -P %s -n uuid-a' % containers,
        'lxc-stop -k -P %s -n uuid-a' % containers,
        'lxc-unfreeze -P %s -n uuid-b' % containers,
        'lxc-stop -k -P %s -n uuid-b' % containers,
    ]


def test_unstack_without_containers(devstack):
    devstack.run('unstack')
    assert devstack.calls('lxc-') == []


def test_clean_removes_what_the_plugin_made(devstack):
    devstack.run('stack', 'install')
    devstack.run('stack', 'post-config')
    devstack.run('stack', 'extra')
    made = [os.path.join(devstack.instances, 'containers', 'uuid-a'),
            os.path.join(devstack.instances, '_base_lxc', 'img.u1g1')]
    for path in made:
        os.makedirs(path)
    devstack.run('clean', STUB_LXC_CONTAINERS='uuid-a')
    assert 'lxc-stop -k -P %s -n uuid-a' % os.path.dirname(made[0]) in \
        devstack.calls('lxc-stop')
    for path in made + [
            os.path.dirname(made[0]), os.path.dirname(made[1]),
            os.path.join(devstack.data, 'nova-lxd-py'),
            os.path.join(devstack.nova_virt, 'lxc_py')]:
        assert not os.path.lexists(path), path
    # The subordinate ids stay.
    assert 'root:' in devstack.read(devstack.subuid)


# -- the files themselves --------------------------------------------------

def test_local_conf_sample_enables_the_plugin():
    with open(os.path.join(DEVSTACK, 'local.conf.sample')) as f:
        text = f.read()
    assert text.splitlines().count('[[local|localrc]]') == 1
    assert re.search(r'^enable_plugin nova-lxd-py \S+$', text, re.M)
    # Nothing of the machine it was written on.
    assert not re.search(r'/(root|work|home)/', text)


def _bashate():
    exe = os.path.join(os.path.dirname(sys.executable), 'bashate')
    if os.path.exists(exe):
        return [exe]
    if shutil.which('bashate'):
        return [shutil.which('bashate')]
    try:
        import bashate  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, '-c',
            'import sys; from bashate.bashate import main; sys.exit(main())']


def test_shell_passes_bashate_with_every_rule_an_error():
    command = _bashate()
    if command is None:
        pytest.skip('bashate is not installed (pip install bashate)')
    files = [os.path.join(DEVSTACK, f) for f in SHELL_FILES] + [STUBS]
    result = subprocess.run(command + ['-v', '-e', 'E*'] + files,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_parses():
    for f in SHELL_FILES:
        subprocess.run(['bash', '-n', os.path.join(DEVSTACK, f)],
                       check=True)
