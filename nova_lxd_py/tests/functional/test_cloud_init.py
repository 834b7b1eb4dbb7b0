"""cloud-init in a Debian guest (debootstrap from Debian's archive, see
nova_lxd_py.tests.debian_image) configured from the config drive and, with
no drive, from a metadata service in a network namespace the test makes:
hostname, SSH key, user-data and the static address of network_data.json.
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import ctypes  # noqa: E402
import http.server  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402
from nova.api.metadata import base as base_metadata  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from testtools import content as testtools_content  # noqa: E402

from nova_lxd_py.tests import debian_image  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.tests.functional import test_configdrive  # noqa: E402
from nova_lxd_py.tests.functional import test_vif  # noqa: E402
from nova_lxd_py.virt import configdrive  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402

PUBLIC_KEY = test_configdrive.PUBLIC_KEY

DEBIAN_IMAGE = 'deb1a000-0000-4000-8000-000000000001'
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


class DebianGuestTestCase(test_configdrive.ConfigDriveTestCase):
    """A Debian guest with systemd and cloud-init (tests/debian_image)."""

    CLOUD_INIT_TIMEOUT = 240

    def setUp(self):
        super().setUp()
        self.images[DEBIAN_IMAGE] = debian_image.build()
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

    def boot(self, instance, vif, source):
        """Spawn on ``vif`` and wait for cloud-init; its status."""
        started = time.monotonic()
        self.spawn_guest(instance, [vif], image_id=DEBIAN_IMAGE,
                         wait_boot=False)
        spawned = time.monotonic() - started
        waited, status = self.wait_cloud_init(instance)
        print('\nDebian guest, %s: spawn %.1f s, then cloud-init done '
              'after %.1f s' % (source, spawned, waited))
        return status

    def assert_reachable_at(self, instance, address):
        """eth0 has ``address`` and the peer reaches it."""
        self.assertIn('inet %s/24' % address, self.guest(
            instance, 'ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'))
        result = self.peer.run('ping', '-c', '2', '-W', '2', address)
        self.assertEqual(0, result.returncode, result.stdout)

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

    def assert_cloud_init_applied(self, instance):
        """Hostname, key and user-data (a file and a command) are in."""
        self.assertEqual('guest-1', self.guest(
            instance, 'cat', '/etc/hostname').strip())
        self.assertIn(PUBLIC_KEY, self.guest(
            instance, 'cat', '/root/.ssh/authorized_keys'))
        self.assertEqual('written by cloud-init', self.guest(
            instance, 'cat', '/etc/nova-lxd-py-test').strip())
        self.assertEqual('Linux', self.guest(
            instance, 'cat', '/run/nova-lxd-py-runcmd').strip())


class DebianConfigDriveTest(DebianGuestTestCase):

    def test_cloud_init_configures_guest_from_config_drive(self):
        vif = self.port(10)
        instance = self.make_guest(user_data=CLOUD_CONFIG)
        status = self.boot(instance, vif, 'config drive')
        self.assertIn('DataSourceConfigDrive [net,ver=2][source=%s]'
                      % configdrive.GUEST_PATH, status)
        self.assert_cloud_init_applied(instance)
        # network_data.json's static address, on the port with its MAC.
        self.assert_reachable_at(instance, self.net.address(vif))
        self.assertIn('default via %s' % self.gateway, self.guest(
            instance, 'ip', 'route'))


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
        status = self.boot(instance, vif, 'metadata service')
        self.addDetail('requests', testtools_content.text_content(
            '\n'.join('%s %s' % r for r in service.requests)))
        self.assertFalse(os.path.lexists(self.drive_dir(instance)))
        self.assertIn('DataSourceOpenStack', status)
        # cloud-init asks for the newest version it knows (2018-08-27 for
        # 22.4) of what the service lists.
        self.assertIn(200, [code for path, code in service.requests
                            if path.endswith('/meta_data.json')])
        self.assert_cloud_init_applied(instance)
        self.assert_reachable_at(instance, self.net.address(vif))
