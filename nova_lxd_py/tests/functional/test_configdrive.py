"""Config drive on real containers (run as root): Nova's instance metadata
as a read-only tree at /config-drive, built at spawn and gone with the
instance.

Nova's metadata builder is real; its two calls out of the compute host are
the seams: Neutron (the instance's security groups) and the database (its
block device mappings), as nova-compute reaches them through the conductor.
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import base64  # noqa: E402
import ctypes  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402
from nova.api.metadata import base as base_metadata  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova import objects  # noqa: E402
from testtools import content as testtools_content  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.tests import debian_image  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.tests.functional import driver_base  # noqa: E402
from nova_lxd_py.tests.functional import test_vif  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402
from nova_lxd_py.virt import configdrive  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402

KEY_NAME = 'test-key'
PUBLIC_KEY = ('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0nzbB0KfAFIBuWcOb7rGRB'
              'Kb0nfYl9k3iMZkX0yGMb nova-lxd-py-test')
USER_DATA = b'#!/bin/sh\necho hello from user data\n'
LATEST = configdrive.GUEST_PATH + '/openstack/latest/'


class ConfigDriveTestCase(driver_base.DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MockPatch(
            'nova.network.security_group_api.get_instance_security_groups',
            autospec=True, return_value=[{'name': 'default'}]))
        self.useFixture(fixtures.MockPatch(
            'nova.objects.BlockDeviceMappingList.get_by_instance_uuid',
            return_value=objects.BlockDeviceMappingList(objects=[])))

    def make_guest(self, config_drive=True, user_data=USER_DATA,
                   **extra_specs):
        """An instance as the compute manager hands it to spawn, with a
        key pair, user data and metadata."""
        instance = self.make_instance(**extra_specs)
        instance.flavor.name = 'm1.test'
        instance.flavor.flavorid = 'test'
        instance.config_drive = 'True' if config_drive else ''
        instance.user_data = (base64.b64encode(user_data).decode()
                              if isinstance(user_data, bytes) else user_data)
        instance.key_name = KEY_NAME
        instance.key_data = PUBLIC_KEY
        instance.keypairs = objects.KeyPairList(objects=[objects.KeyPair(
            name=KEY_NAME, public_key=PUBLIC_KEY, type='ssh')])
        instance.ec2_ids = objects.EC2Ids(instance_id='i-00000001',
                                          ami_id='ami-00000001',
                                          kernel_id=None, ramdisk_id=None)
        instance.metadata = {'role': 'config-drive-test'}
        instance.device_metadata = None
        instance.numa_topology = None
        return instance

    def spawn_guest(self, instance, network_info=(), injected_files=(),
                    admin_password=None, image_id=driver_base.BUSYBOX_IMAGE,
                    wait_boot=True):
        network_info = network_model.NetworkInfo(network_info)
        self.driver.spawn(self.context, instance, self.image_meta(image_id),
                          list(injected_files), admin_password, {},
                          network_info=network_info)
        self.addCleanup(self._destroy_quietly, instance, network_info)
        if wait_boot:
            self.wait_booted(instance)
        return network_info

    def _destroy_quietly(self, instance, network_info):
        try:
            self.driver.destroy(self.context, instance, network_info)
        except Exception:
            pass

    def drive_dir(self, instance):
        return configdrive.host_path(container.container_dir(instance.uuid))

    def guest_json(self, instance, path):
        return json.loads(self.run_in_guest(instance, 'cat', path))

    def guest_fails(self, instance, *argv):
        code, out = container.run_in_guest(instance.uuid, list(argv), 10)
        self.assertNotEqual(0, code, out)
        return out


class ConfigDriveTest(ConfigDriveTestCase):

    def setUp(self):
        super().setUp()
        self.net = self.useFixture(test_vif.Network())

    def test_config_drive_read_only_in_guest_and_gone_after_destroy(self):
        vif = self.net.port(5)
        instance = self.make_guest()
        network_info = self.spawn_guest(
            instance, [vif], injected_files=[('/etc/motd', b'injected\n')],
            admin_password='s3cret')
        meta = self.guest_json(instance, LATEST + 'meta_data.json')
        self.assertEqual(instance.uuid, meta['uuid'])
        self.assertEqual('guest-1', meta['hostname'].split('.')[0])
        self.assertEqual({KEY_NAME: PUBLIC_KEY}, meta['public_keys'])
        self.assertEqual({'role': 'config-drive-test'}, meta['meta'])
        self.assertEqual('s3cret', meta['admin_pass'])
        self.assertEqual(USER_DATA, self.run_in_guest(
            instance, 'cat', LATEST + 'user_data').encode())
        # The injected file is in the drive (as Nova lays it out), not in
        # the guest's root.
        self.assertEqual([{'path': '/etc/motd',
                           'content_path': '/content/0000'}], meta['files'])
        self.assertEqual('injected\n', self.run_in_guest(
            instance, 'cat', configdrive.GUEST_PATH +
            '/openstack/content/0000'))
        self.guest_fails(instance, 'cat', '/etc/motd')
        # The ports as the guest has them: the MAC of its eth0.
        network = self.guest_json(instance, LATEST + 'network_data.json')
        self.assertEqual(vif['address'], self.run_in_guest(
            instance, 'cat', '/sys/class/net/eth0/address').strip())
        self.assertEqual([vif['address']], [
            link['ethernet_mac_address'] for link in network['links']])
        self.assertEqual([self.net.address(vif)],
                         [n['ip_address'] for n in network['networks']])
        # Read-only for the guest's root: a read-only mount of files host
        # root owns (nobody in the guest).
        self.assertIn('ro', self.run_in_guest(
            instance, 'grep', ' /config-drive ', '/proc/mounts').split()[3]
            .split(','))
        self.guest_fails(instance, 'touch', configdrive.GUEST_PATH + '/x')
        self.guest_fails(instance, 'rm', LATEST + 'user_data')
        # Root in the guest's user namespace may remount the mounts of its
        # own mount namespace read-write; the files stay host root's.
        self.run_in_guest(instance, 'mount', '-o', 'remount,bind,rw',
                          configdrive.GUEST_PATH)
        self.guest_fails(instance, 'touch', configdrive.GUEST_PATH + '/x')
        self.guest_fails(instance, 'sh', '-c', 'echo x >> %s' % (
            LATEST + 'user_data'))
        self.driver.destroy(self.context, instance, network_info)
        self.assertFalse(os.path.lexists(self.drive_dir(instance)))
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_config_drive_read_only_in_privileged_guest(self):
        self.flags(group='lxc', allow_privileged=True)
        instance = self.make_guest(**{'lxc:privileged': 'true'})
        self.spawn_guest(instance)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])
        # Root here owns the files: only the read-only mount stops it.
        out = self.guest_fails(instance, 'touch',
                               configdrive.GUEST_PATH + '/x')
        self.assertIn('Read-only file system', out)

    def test_no_config_drive_unless_required(self):
        instance = self.make_guest(config_drive=False)
        self.spawn_guest(instance)
        self.assertFalse(os.path.lexists(self.drive_dir(instance)))
        self.guest_fails(instance, 'ls', configdrive.GUEST_PATH)
        # What tells cloud-init it runs on OpenStack (metadata service).
        environ = self.run_in_guest(instance, 'cat', '/proc/1/environ')
        self.assertIn('product_name=OpenStack Nova', environ.split('\0'))

    def test_force_config_drive(self):
        self.flags(force_config_drive=True)
        instance = self.make_guest(config_drive=False)
        self.spawn_guest(instance)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])
        self.assertEqual(0o755, os.stat(self.drive_dir(instance)).st_mode &
                         0o7777)

    def test_injected_file_path_cannot_leave_the_drive(self):
        instance = self.make_guest()
        self.spawn_guest(instance, injected_files=[
            ('../../../../etc/nova-lxd-py-escaped', b'x')])
        meta = self.guest_json(instance, LATEST + 'meta_data.json')
        self.assertEqual('../../../../etc/nova-lxd-py-escaped',
                         meta['files'][0]['path'])
        self.assertFalse(os.path.lexists('/etc/nova-lxd-py-escaped'))
        top = os.path.dirname(self.drive_dir(instance))
        self.assertEqual([], [n for n in os.listdir(top)
                              if n.startswith('config-drive.')])
        self.guest_fails(instance, 'cat', '/etc/nova-lxd-py-escaped')

    def test_undecodable_user_data_refused_leaving_nothing(self):
        instance = self.make_guest(user_data='not base64 at all!')
        vif = self.net.port(6)
        self.assertRaises(exception.ConfigDriveInvalid, self.spawn_guest,
                          instance, [vif], wait_boot=False)
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertNotIn(naming.host_name(vif), test_vif.host_links())

    def test_removed_orphan_takes_its_config_drive(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.orphans.ORPHAN_GRACE_SECONDS', 0))
        instance = self.make_guest()
        self.spawn_guest(instance)
        self.assertTrue(os.path.isdir(self.drive_dir(instance)))
        self.flags(group='lxc', remove_orphans=True)
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_rescue_guest_sees_the_drive_where_the_instance_does(self):
        instance = self.make_guest()
        self.spawn_guest(instance)
        self.driver.rescue(self.context, instance, None, self.image_meta(),
                           None, None, None)
        self.wait_booted(instance, times=2)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])
        self.guest_fails(instance, 'ls', '/mnt/rescue/config-drive/openstack')
        self.driver.unrescue(self.context, instance)
        self.wait_booted(instance, times=3)
        self.assertEqual(instance.uuid, self.guest_json(
            instance, LATEST + 'meta_data.json')['uuid'])

    def test_unwritable_drive_fails_spawn_leaving_nothing(self):
        # What the privileged side refuses (a path out of the tree) stands
        # for any write that fails: spawn undoes every step.
        self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.virt.configdrive.build', autospec=True,
            return_value={'../escape': b'x'}))
        instance = self.make_guest()
        error = self.assertRaises(exception.ConfigDriveBuildFailed,
                                  self.spawn_guest, instance, wait_boot=False)
        self.assertIn('../escape', str(error))
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))


DEBIAN_IMAGE = 'deb1a000-0000-4000-8000-000000000001'
# The test image's packages, and what a cloud image has besides: a DHCP
# client (cloud-init's OpenStack datasource takes an ephemeral lease to
# reach the metadata service) and route(8), with which cloud-init's
# ifupdown renderer sets the static routes of network_data.json.
GUEST_PACKAGES = tuple(dict.fromkeys(debian_image.PACKAGES + (
    'isc-dhcp-client', 'net-tools')))
CLOUD_CONFIG = b"""\
#cloud-config
write_files:
  - path: /etc/nova-lxd-py-test
    content: written by cloud-init
runcmd:
  - [sh, -c, "uname -s > /run/nova-lxd-py-runcmd"]
"""


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True,
                          timeout=30).stdout


class Peer(fixtures.Fixture):
    """A network namespace with one device on ``bridge`` at ``cidr``: a
    host the guest talks to (a router, a metadata service), never this
    host itself. Everything is deleted on cleanup."""

    def __init__(self, bridge, cidr, mtu=test_vif.MTU):
        super().__init__()
        self.bridge, self.cidr, self.mtu = bridge, cidr, mtu

    def _setUp(self):
        rid = '%08x' % random.getrandbits(32)
        self.netns = 'nlpt' + rid
        self.device = 'vpp' + rid
        host_end = 'vph' + rid
        run('ip', 'netns', 'add', self.netns)
        self.addCleanup(subprocess.run, ['ip', 'netns', 'del', self.netns],
                        capture_output=True, check=False)
        if not os.path.exists('/sys/class/net/' + self.bridge):
            run('ip', 'link', 'add', self.bridge, 'type', 'bridge')
            self.addCleanup(test_vif.delete_link, self.bridge)
        run('ip', 'link', 'set', self.bridge, 'up')
        run('ip', 'link', 'add', host_end, 'mtu', str(self.mtu), 'type',
            'veth', 'peer', 'name', self.device, 'netns', self.netns)
        self.addCleanup(test_vif.delete_link, host_end)
        run('ip', 'link', 'set', host_end, 'master', self.bridge, 'up')
        self.ip('link', 'set', 'lo', 'up')
        self.ip('link', 'set', self.device, 'mtu', str(self.mtu), 'up')
        self.ip('addr', 'add', self.cidr, 'dev', self.device)

    def ip(self, *args):
        return run('ip', '-n', self.netns, *args)

    def run(self, *argv):
        return subprocess.run(['ip', 'netns', 'exec', self.netns] +
                              list(argv), capture_output=True, text=True,
                              timeout=30)


class DebianGuestTestCase(ConfigDriveTestCase):
    """A Debian guest with systemd and cloud-init (tests/debian_image)."""

    CLOUD_INIT_TIMEOUT = 240

    def setUp(self):
        super().setUp()
        self.images[DEBIAN_IMAGE] = debian_image.build(
            packages=GUEST_PACKAGES)
        self.net = self.useFixture(test_vif.Network())
        self.gateway = self.net.prefix + '.1'
        self.peer = self.useFixture(Peer(self.net.bridge,
                                         self.gateway + '/24'))

    def port(self, host):
        """A port with a static IPv4 address and a gateway (the peer)."""
        vif = self.net.port(host)
        subnet = vif['network']['subnets'][0]
        subnet['gateway'] = network_model.IP(address=self.gateway,
                                             type='gateway', version=4)
        return vif

    def wait_cloud_init(self, instance):
        """Seconds from now until cloud-init has finished; its status."""
        started = time.monotonic()
        code, out = -1, ''
        while time.monotonic() - started < self.CLOUD_INIT_TIMEOUT:
            # The guest's systemd may not have made /run yet.
            code, out = container.run_in_guest(
                instance.uuid, ['cloud-init', 'status', '--wait', '--long'],
                self.CLOUD_INIT_TIMEOUT)
            if 'status: done' in out or 'status: error' in out:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        self.addDetail('cloud-init', testtools_content.text_content(out))
        self.addDetail('console', testtools_content.text_content(
            self.console(instance)))
        _, eni = container.run_in_guest(instance.uuid, [
            'cat', '/etc/network/interfaces.d/50-cloud-init'], 10)
        self.addDetail('network config', testtools_content.text_content(eni))
        self.assertIn('status: done', out)
        return elapsed, out

    def guest(self, instance, *argv):
        return self.run_in_guest(instance, *argv)


class DebianConfigDriveTest(DebianGuestTestCase):

    def test_cloud_init_configures_guest_from_config_drive(self):
        vif = self.port(10)
        instance = self.make_guest(user_data=CLOUD_CONFIG)
        started = time.monotonic()
        self.spawn_guest(instance, [vif], image_id=DEBIAN_IMAGE,
                         wait_boot=False)
        spawned = time.monotonic() - started
        waited, status = self.wait_cloud_init(instance)
        print('\nDebian guest: spawn %.1f s, then cloud-init done after '
              '%.1f s' % (spawned, waited))
        self.assertIn('DataSourceConfigDrive [net,ver=2][source=%s]'
                      % configdrive.GUEST_PATH, status)
        self.assertEqual('guest-1', self.guest(
            instance, 'cat', '/etc/hostname').strip())
        self.assertIn(PUBLIC_KEY, self.guest(
            instance, 'cat', '/root/.ssh/authorized_keys'))
        self.assertEqual('written by cloud-init', self.guest(
            instance, 'cat', '/etc/nova-lxd-py-test').strip())
        self.assertEqual('Linux', self.guest(
            instance, 'cat', '/run/nova-lxd-py-runcmd').strip())
        # network_data.json's static address, on the port with its MAC.
        address = self.net.address(vif)
        self.assertIn('inet %s/24' % address, self.guest(
            instance, 'ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'))
        self.assertIn('default via %s' % self.gateway, self.guest(
            instance, 'ip', 'route'))
        result = self.peer.run('ping', '-c', '2', '-W', '2', address)
        self.assertEqual(0, result.returncode, result.stdout)


METADATA_ADDRESS = '169.254.169.254'
CLONE_NEWNET = 0x40000000


def _enter_netns(name):
    """Move the calling thread (only) into network namespace ``name``."""
    fd = os.open('/run/netns/' + name, os.O_RDONLY)
    try:
        if hasattr(os, 'setns'):   # Python 3.12
            os.setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)


class MetadataService(fixtures.Fixture):
    """Nova's metadata API for one instance on 169.254.169.254:80 of the
    peer's namespace (never this host's): each GET is answered from
    Nova's InstanceMetadata as Nova's metadata handler answers it.

    The server's socket is made by a thread that entered the peer's
    network namespace; the namespace is per thread, so the test process
    stays where it is.
    """

    def __init__(self, peer, metadata):
        super().__init__()
        self.peer, self.metadata = peer, metadata
        self.requests = []

    def _setUp(self):
        self.peer.ip('addr', 'add', METADATA_ADDRESS + '/32', 'dev',
                     self.peer.device)
        ready, failure = threading.Event(), []
        metadata, requests = self.metadata, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split('?', 1)[0]
                try:
                    data = metadata.lookup(path)
                    if callable(data):   # the password: POST only
                        raise KeyError(path)
                    body = base_metadata.ec2_md_print(data)
                except (KeyError, nova_exception.NovaException):
                    requests.append((path, 404))
                    self.send_error(404)
                    return
                body = body.encode() if isinstance(body, str) else body
                requests.append((path, 200))
                self.send_response(200)
                self.send_header('Content-Type', metadata.md_mimetype)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        def serve():
            try:
                _enter_netns(self.peer.netns)
                self.server = http.server.ThreadingHTTPServer(
                    (METADATA_ADDRESS, 80), Handler)
            except Exception as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            self.server.serve_forever(poll_interval=0.2)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        self.addCleanup(thread.join, 10)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)


class Dhcp(fixtures.Fixture):
    """busybox's udhcpd in the peer's namespace, handing out the ports'
    fixed addresses with the peer as router, as Neutron's DHCP agent
    does."""

    def __init__(self, peer, vifs, router):
        super().__init__()
        self.peer, self.vifs, self.router = peer, vifs, router

    def _setUp(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        addresses = [vif['network']['subnets'][0]['ips'][0]['address']
                     for vif in self.vifs]
        lines = ['interface ' + self.peer.device,
                 'start ' + min(addresses), 'end ' + max(addresses),
                 'lease_file ' + os.path.join(tmp, 'leases'),
                 'pidfile ' + os.path.join(tmp, 'pid'),
                 'option subnet 255.255.255.0',
                 'option router ' + self.router]
        lines += ['static_lease %s %s' % (vif['address'], address)
                  for vif, address in zip(self.vifs, addresses)]
        config = os.path.join(tmp, 'udhcpd.conf')
        with open(config, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        self.process = subprocess.Popen(
            ['ip', 'netns', 'exec', self.peer.netns, guest_image.BUSYBOX,
             'udhcpd', '-f', config],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.addCleanup(self._stop)

    def _stop(self):
        self.process.terminate()
        try:
            self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


class DebianMetadataServiceTest(DebianGuestTestCase):

    def test_cloud_init_configures_guest_from_metadata_service(self):
        vif = self.port(20)
        vif['network']['subnets'][0]['meta']['dhcp_server'] = self.gateway
        instance = self.make_guest(config_drive=False,
                                   user_data=CLOUD_CONFIG)
        metadata = base_metadata.InstanceMetadata(
            instance, network_info=network_model.NetworkInfo([vif]))
        service = self.useFixture(MetadataService(self.peer, metadata))
        self.useFixture(Dhcp(self.peer, [vif], self.gateway))
        started = time.monotonic()
        self.spawn_guest(instance, [vif], image_id=DEBIAN_IMAGE,
                         wait_boot=False)
        spawned = time.monotonic() - started
        waited, status = self.wait_cloud_init(instance)
        print('\nDebian guest, metadata service: spawn %.1f s, then '
              'cloud-init done after %.1f s' % (spawned, waited))
        self.addDetail('requests', testtools_content.text_content(
            '\n'.join('%s %s' % r for r in service.requests)))
        self.assertFalse(os.path.lexists(self.drive_dir(instance)))
        self.assertIn('DataSourceOpenStack', status)
        # cloud-init asks for the newest version it knows (2018-08-27 for
        # 22.4) of what the service lists.
        self.assertIn(200, [code for path, code in service.requests
                            if path.endswith('/meta_data.json')])
        self.assertEqual('guest-1', self.guest(
            instance, 'cat', '/etc/hostname').strip())
        self.assertIn(PUBLIC_KEY, self.guest(
            instance, 'cat', '/root/.ssh/authorized_keys'))
        self.assertEqual('written by cloud-init', self.guest(
            instance, 'cat', '/etc/nova-lxd-py-test').strip())
        self.assertEqual('Linux', self.guest(
            instance, 'cat', '/run/nova-lxd-py-runcmd').strip())
        address = self.net.address(vif)
        self.assertIn('inet %s/24' % address, self.guest(
            instance, 'ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'))
        result = self.peer.run('ping', '-c', '2', '-W', '2', address)
        self.assertEqual(0, result.returncode, result.stdout)
