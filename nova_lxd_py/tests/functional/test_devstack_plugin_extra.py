"""devstack/ extra, unstack and clean phases, and the plugin's shell files
themselves, against stand-ins for devstack (devstack_harness.py)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from nova_lxd_py.tests.functional.devstack_harness import DEVSTACK
from nova_lxd_py.tests.functional.devstack_harness import Devstack
from nova_lxd_py.tests.functional.devstack_harness import SHELL_FILES
from nova_lxd_py.tests.functional.devstack_harness import STUBS


@pytest.fixture
def devstack(tmp_path):
    return Devstack(tmp_path)


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
