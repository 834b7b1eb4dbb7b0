"""Interface hot-plug on real containers: ports attached to and detached
from running and stopped guests, with traffic through them (run as root).

Each test has two test-made bridges: the guest starts on the first, the
port it gets later is on the second, where a peer guest answers pings.
Addresses are on 198.18.0.0/15 inside the guests only (see test_vif).
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import random  # noqa: E402
import subprocess  # noqa: E402

import fixtures  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova.network import model as network_model  # noqa: E402
import testtools  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.privsep import net  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests.functional import test_vif  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402
from nova_lxd_py.virt import config  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402


class HotplugTest(test_vif.VifTestCase):

    def setUp(self):
        super().setUp()
        self.net2 = self.useFixture(test_vif.Network())
        while self.net2.prefix == self.net.prefix:
            self.net2.prefix = '198.18.%d' % (
                (int(self.net.prefix.rsplit('.', 1)[1]) + 1) % 256)
        self.guest_vif = self.net.port(1)
        self.new_vif = self.net2.port(1)
        self.peer_vif = self.net2.port(2)

    def start_peer(self):
        """A guest on the second bridge that answers at its port's
        address."""
        peer, _ = self.spawn_on(self.peer_vif)
        self.run_in_guest(peer, 'ip', 'addr', 'add',
                          self.net2.address(self.peer_vif) + '/24', 'dev',
                          'eth0')
        return peer

    def assert_reaches_peer(self, guest, dev='eth1'):
        self.run_in_guest(guest, 'ip', 'addr', 'add',
                          self.net2.address(self.new_vif) + '/24', 'dev',
                          dev)
        self.assertIn('2 packets received', self.run_in_guest(
            guest, 'ping', '-c', '2', '-W', '2',
            self.net2.address(self.peer_vif)))

    def guest_devices(self, guest):
        return set(self.run_in_guest(guest, 'ls', '/sys/class/net').split())

    def config_links(self, guest):
        return [nic.link for nic in config.nics_of(
            container.read_config(guest.uuid))]

    def attach(self, guest, vif=None):
        self.driver.attach_interface(self.context, guest, self.image_meta(),
                                     vif or self.new_vif)

    def test_attach_to_running_guest_survives_power_cycle_and_detaches(self):
        peer = self.start_peer()
        guest, _ = self.spawn_on(self.guest_vif)
        self.attach(guest)
        self.assert_guest_nic(guest, self.new_vif, 'eth1')
        self.assert_reaches_peer(guest)
        self.assertEqual(sorted([naming.host_name(self.new_vif),
                                 naming.host_name(self.peer_vif)]),
                         test_vif.bridge_members(self.net2.bridge))
        self.assertNotIn(naming.peer_name(self.new_vif),
                         test_vif.host_links())
        self.assertEqual([naming.peer_name(self.guest_vif),
                          naming.peer_name(self.new_vif)],
                         self.config_links(guest))
        # Nova's network info has the port from now on.
        network_info = network_model.NetworkInfo([self.guest_vif,
                                                  self.new_vif])
        self.driver.power_off(guest)
        self.driver.power_on(self.context, guest, network_info)
        self.wait_booted(guest, times=2)
        self.assert_guest_nic(guest, self.guest_vif, 'eth0')
        self.assert_guest_nic(guest, self.new_vif, 'eth1')
        self.assert_reaches_peer(guest)

        self.driver.detach_interface(self.context, guest, self.new_vif)
        self.assertEqual({'lo', 'eth0'}, self.guest_devices(guest))
        self.assert_no_links(self.new_vif)
        self.assertEqual([naming.host_name(self.peer_vif)],
                         test_vif.bridge_members(self.net2.bridge))
        self.assertEqual([naming.peer_name(self.guest_vif)],
                         self.config_links(guest))
        self.assertRaises(exception.InterfaceNotAttached,
                          self.driver.detach_interface, self.context, guest,
                          self.new_vif)
        # The guest starts again with its one port.
        network_info = network_model.NetworkInfo([self.guest_vif])
        self.driver.reboot(self.context, guest, network_info, 'HARD')
        self.wait_booted(guest, times=3)
        self.assertEqual({'lo', 'eth0'}, self.guest_devices(guest))
        self.assert_guest_nic(guest, self.guest_vif, 'eth0')
        self.assertEqual('RUNNING', container.state(peer.uuid)[0])

    def test_attach_to_stopped_guest_appears_at_start(self):
        self.start_peer()
        guest, _ = self.spawn_on(self.guest_vif)
        self.driver.power_off(guest)
        self.attach(guest)
        # Waiting on the host for liblxc, as a spawned port's does.
        self.assertIn(naming.peer_name(self.new_vif), test_vif.host_links())
        self.driver.power_on(self.context, guest, network_model.NetworkInfo(
            [self.guest_vif, self.new_vif]))
        self.wait_booted(guest, times=2)
        self.assertEqual({'lo', 'eth0', 'eth1'}, self.guest_devices(guest))
        self.assert_guest_nic(guest, self.new_vif, 'eth1')
        self.assert_reaches_peer(guest)

    def test_soft_reboot_after_attach_keeps_the_port(self):
        # liblxc would restart the guest with its start-time devices: the
        # driver restarts it itself instead.
        self.start_peer()
        guest, _ = self.spawn_on(self.guest_vif)
        self.attach(guest)
        self.driver.reboot(self.context, guest, network_model.NetworkInfo(
            [self.guest_vif, self.new_vif]), 'SOFT')
        self.wait_booted(guest, times=2)
        self.assert_guest_nic(guest, self.new_vif, 'eth1')
        self.assert_reaches_peer(guest)

    def test_attach_to_guest_without_ports_gives_eth0(self):
        guest, _ = self.spawn_on()
        self.attach(guest)
        self.assert_guest_nic(guest, self.new_vif, 'eth0')
        self.driver.detach_interface(self.context, guest, self.new_vif)
        self.assertEqual({'lo'}, self.guest_devices(guest))
        self.assertEqual('empty', config.config_values(
            container.read_config(guest.uuid), 'lxc.net.0.type')[0])

    def test_failed_move_into_guest_leaves_nothing(self):
        guest, _ = self.spawn_on(self.guest_vif)
        before = container.read_config(guest.uuid)
        self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.privsep.net.move_into_netns',
            side_effect=OSError('injected')))
        e = self.assertRaises(nova_exception.InterfaceAttachFailed,
                              self.attach, guest)
        self.assertIn('injected', str(e))
        self.assertIn(self.new_vif['id'], str(e))
        self.assertEqual(before, container.read_config(guest.uuid))
        self.assert_no_links(self.new_vif)
        self.assertEqual({'lo', 'eth0'}, self.guest_devices(guest))

    def test_attach_unsupported_vif_type_refused(self):
        guest, _ = self.spawn_on(self.guest_vif)
        bad = self.net2.port(3, network_model.VIF_TYPE_VHOSTUSER)
        before = container.read_config(guest.uuid)
        self.assertRaises(nova_exception.InterfaceAttachFailed,
                          self.attach, guest, bad)
        self.assertEqual(before, container.read_config(guest.uuid))
        self.assert_no_links(bad)

    def test_attach_to_missing_instance_is_not_found(self):
        self.assertRaises(nova_exception.InstanceNotFound, self.attach,
                          self.make_instance())
        self.assert_no_links(self.new_vif)


class OvsHotplugTest(test_vif.VifTestCase):
    """An 'ovs' port hot-plugged through os-vif (userspace datapath)."""

    def test_attach_ovs_port_to_running_guest_and_detach(self):
        ovs = self.useFixture(lxc_fixtures.OpenVSwitch())
        net = self.useFixture(test_vif.Network(bridge=ovs.bridge))
        a = net.port(1, network_model.VIF_TYPE_OVS,
                     {'datapath_type': 'netdev'})
        b = net.port(2, network_model.VIF_TYPE_OVS,
                     {'datapath_type': 'netdev'})
        guest_a, _ = self.spawn_on(a)
        guest_b, _ = self.spawn_on()
        self.driver.attach_interface(self.context, guest_b,
                                     self.image_meta(), b)
        self.assertEqual(sorted([naming.host_name(a), naming.host_name(b)]),
                         ovs.ports())
        self.assertEqual(b['id'], ovs.external_id(naming.host_name(b),
                                                  'iface-id'))
        for guest, vif in ((guest_a, a), (guest_b, b)):
            self.run_in_guest(guest, 'ip', 'addr', 'add',
                              net.address(vif) + '/24', 'dev', 'eth0')
        self.assertIn('2 packets received', self.run_in_guest(
            guest_b, 'ping', '-c', '2', '-W', '2', net.address(a)))
        self.driver.detach_interface(self.context, guest_b, b)
        self.assertEqual([naming.host_name(a)], ovs.ports())
        self.assert_no_links(b)


class MoveIntoNetnsTest(testtools.TestCase):
    """The privileged move itself, into a bare network namespace (a
    process started by ``unshare --net``): what it refuses to touch."""

    def setUp(self):
        super().setUp()
        self.useFixture(lxc_fixtures.PrivsepInProcess())
        suffix = '%06x' % random.getrandbits(24)
        self.host, self.peer = 'hpa' + suffix, 'hpb' + suffix
        subprocess.run(['ip', 'link', 'add', self.host, 'type', 'veth',
                        'peer', 'name', self.peer], check=True)
        self.addCleanup(test_vif.delete_link, self.host)
        self.ns = subprocess.Popen(['unshare', '--net', 'sleep', '60'])
        self.addCleanup(self.ns.wait)
        self.addCleanup(self.ns.kill)
        test_vif.wait_until(lambda: os.readlink(
            '/proc/%d/ns/net' % self.ns.pid) != os.readlink(
                '/proc/self/ns/net'))

    def in_ns(self, *argv):
        return subprocess.run(
            ['nsenter', '--net=/proc/%d/ns/net' % self.ns.pid] + list(argv),
            capture_output=True, text=True, check=True).stdout

    def test_move_gives_the_lowest_free_eth_with_mac_and_mtu(self):
        self.in_ns('ip', 'link', 'add', 'eth0', 'type', 'veth', 'peer',
                   'name', 'eth9')
        name = net.move_into_netns(self.peer, self.ns.pid,
                                   'fa:16:3e:0a:0b:0c', 1280)
        self.assertEqual('eth1', name)
        self.assertNotIn(self.peer, test_vif.host_links())
        link = self.in_ns('ip', '-o', 'link', 'show', 'eth1')
        self.assertIn('fa:16:3e:0a:0b:0c', link)
        self.assertIn('mtu 1280', link)
        self.assertIn(',UP', link)

    def test_move_into_the_hosts_namespace_refused(self):
        self.assertRaises(ValueError, net.move_into_netns, self.peer,
                          os.getpid(), 'fa:16:3e:0a:0b:0c', 0)
        self.assertRaises(ValueError, net.move_into_netns, self.peer, 1,
                          'fa:16:3e:0a:0b:0c', 0)
        self.assertIn(self.peer, test_vif.host_links())

    def test_move_of_a_device_that_is_no_veth_refused(self):
        self.assertRaises(ValueError, net.move_into_netns, 'lo',
                          self.ns.pid, 'fa:16:3e:0a:0b:0c', 0)
        self.assertRaises(ValueError, net.move_into_netns, 'hpnone',
                          self.ns.pid, 'fa:16:3e:0a:0b:0c', 0)
        self.assertEqual(1, len(self.in_ns('ip', '-o', 'link').splitlines()))
