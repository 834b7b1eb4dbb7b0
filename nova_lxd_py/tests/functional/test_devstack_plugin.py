"""devstack/ install and post-config phases, against stand-ins for
devstack (devstack_harness.py)."""

import os
import shutil
import stat
import subprocess

import pytest

# Only oslo.config here: nova, oslo.privsep and the driver import eventlet,
# which must wait until the test packages have settled nova's concurrency
# mode; tests that need them import them themselves.
from nova_lxd_py import conf
from nova_lxd_py.tests.functional.devstack_harness import DEVSTACK
from nova_lxd_py.tests.functional.devstack_harness import Devstack
from nova_lxd_py.tests.functional.devstack_harness import REPO


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
    devstack.run('stack', 'install', STUB_CRIU_BUILD_RC='1')
    assert devstack.calls('warn CRIU could not be built')
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
