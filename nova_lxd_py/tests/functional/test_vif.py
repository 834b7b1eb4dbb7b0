"""Neutron ports on real containers: veth pairs, a real Linux bridge, and
traffic between two guests (run as root).

Every bridge and device a test makes is named from a fresh random id and
removed after the test, pass or fail. Guests only talk to each other, on
198.18.0.0/15 (RFC 2544, benchmarking), which nothing on this host uses;
no address is ever put on a host device.
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import random  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402
from nova.compute import power_state  # noqa: E402
from nova.network import model as network_model  # noqa: E402
import os_vif  # noqa: E402
from os_vif import exception as os_vif_exception  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests.functional import driver_base  # noqa: E402
from nova_lxd_py.vif import driver as vifs  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402

MTU = 1400


def host_links():
    """Names of the devices in the host's (this process's) namespace."""
    out = subprocess.run(['ip', '-o', 'link', 'show'], capture_output=True,
                         text=True, check=True).stdout
    return {line.split(':')[1].strip().split('@')[0]
            for line in out.splitlines()}


def sys_net(name, attribute):
    with open('/sys/class/net/%s/%s' % (name, attribute)) as f:
        return f.read().strip()


def bridge_members(bridge):
    return sorted(os.listdir('/sys/class/net/%s/brif' % bridge))


def ovs_hybrid_links(vif):
    """The Linux bridge and veth pair os-vif makes for a hybrid port."""
    return [(prefix + vif['id'])[:network_model.NIC_NAME_LEN]
            for prefix in ('qbr', 'qvb', 'qvo')]


def wait_until(predicate, seconds=30):
    """predicate()'s first true value, polled; AssertionError on time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError('still false after %d s: %s' % (seconds, predicate))


def delete_link(name):
    subprocess.run(['ip', 'link', 'del', name], capture_output=True,
                   check=False)


class Network(fixtures.Fixture):
    """A Neutron network with a fresh bridge name and its own /24 of
    198.18.0.0/15; on cleanup the bridge and every device of its ports are
    deleted if they exist."""

    def __init__(self, bridge=None):
        """``bridge``: a bridge someone else owns (and removes)."""
        super().__init__()
        self.own_bridge = bridge is None
        self.bridge = bridge or 'brqt%08x' % random.getrandbits(32)

    def _setUp(self):
        self.id = uuidutils.generate_uuid()
        self.prefix = '198.18.%d' % random.randint(0, 255)
        self.ports = []
        self.addCleanup(self._clean)

    def _clean(self):
        for vif in self.ports:
            for name in ovs_hybrid_links(vif) + [naming.host_name(vif),
                                                 naming.peer_name(vif)]:
                delete_link(name)
        if self.own_bridge:
            delete_link(self.bridge)

    def port(self, host, vif_type=network_model.VIF_TYPE_BRIDGE,
             details=None):
        """A VIF of this network; ``host``: the guest's address (.N)."""
        port_id = uuidutils.generate_uuid()
        subnet = network_model.Subnet(
            cidr=self.prefix + '.0/24',
            ips=[network_model.FixedIP(address='%s.%d' % (self.prefix,
                                                          host))])
        network = network_model.Network(
            id=self.id, bridge=self.bridge, label='test', subnets=[subnet],
            mtu=MTU)
        vif = network_model.VIF(
            id=port_id, address='fa:16:3e:%02x:%02x:%02x' % tuple(
                random.getrandbits(8) for _ in range(3)),
            network=network, type=vif_type, details=details or {},
            devname=('tap' + port_id)[:network_model.NIC_NAME_LEN])
        self.ports.append(vif)
        return vif

    def address(self, vif):
        return vif['network']['subnets'][0]['ips'][0]['address']


class VifTestCase(driver_base.DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        self.net = self.useFixture(Network())

    def spawn_on(self, *vifs_, instance=None):
        instance = instance or self.make_instance()
        network_info = network_model.NetworkInfo(vifs_)
        self.driver.spawn(self.context, instance, self.image_meta(), [],
                          None, {}, network_info=network_info)
        self.addCleanup(self._destroy_quietly, instance, network_info)
        self.wait_booted(instance)
        return instance, network_info

    def _destroy_quietly(self, instance, network_info):
        try:
            self.driver.destroy(self.context, instance, network_info)
        except Exception:
            pass

    def configure(self, instance, vif):
        """Give the guest's eth0 the port's address (busybox has no DHCP
        client configured in the test image)."""
        self.run_in_guest(instance, 'ip', 'addr', 'add',
                          self.net.address(vif) + '/24', 'dev', 'eth0')

    def ping(self, instance, vif):
        return self.run_in_guest(instance, 'ping', '-c', '2', '-W', '2',
                                 self.net.address(vif))

    def assert_guest_nic(self, instance, vif, name='eth0'):
        self.assertEqual(vif['address'], self.run_in_guest(
            instance, 'cat', '/sys/class/net/%s/address' % name).strip())
        self.assertEqual(str(MTU), self.run_in_guest(
            instance, 'cat', '/sys/class/net/%s/mtu' % name).strip())

    def assert_tcp_works(self, client, server, server_vif):
        """Half a MiB over HTTP: TCP with full-size segments, which the
        userspace datapath drops if the guest leaves checksums unfilled
        (ICMP gets through either way). No ``wget -T``: busybox 1.35's
        wget crashes with it."""
        self.run_in_guest(server, 'sh', '-c',
                          'mkdir -p /srv && dd if=/dev/zero of=/srv/blob '
                          'bs=1k count=512 2>/dev/null && '
                          'httpd -p 8080 -h /srv')
        self.assertEqual('524288', self.run_in_guest(
            client, 'sh', '-c', 'wget -q -O - http://%s:8080/blob | '
            'wc -c' % self.net.address(server_vif)).strip())

    def assert_no_links(self, *vifs_):
        links = host_links()
        for vif in vifs_:
            self.assertNotIn(naming.host_name(vif), links)
            self.assertNotIn(naming.peer_name(vif), links)

    def assert_failed_second_plug_leaves_nothing(self, a, b):
        """os-vif plugs b, then fails: spawn fails, nothing remains."""
        real_plug = os_vif.plug

        def plug(osvif_vif, instance_info):
            real_plug(osvif_vif, instance_info)
            if osvif_vif.id == b['id']:   # plugged, then found broken
                raise os_vif_exception.PlugException(vif=osvif_vif,
                                                     err='injected')

        self.useFixture(fixtures.MockPatch('os_vif.plug', autospec=True,
                                           side_effect=plug))
        instance = self.make_instance()
        self.assertRaises(
            exception.VifPlugFailed, self.driver.spawn, self.context,
            instance, self.image_meta(), [], None, {},
            network_info=network_model.NetworkInfo([a, b]))
        self.assert_nothing_left(a, b)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))


class VifTest(VifTestCase):

    def test_spawn_two_guests_on_a_bridge_talk(self):
        a, b = self.net.port(1), self.net.port(2)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, nw_b = self.spawn_on(b)
        self.assert_guest_nic(guest_a, a)
        self.assert_guest_nic(guest_b, b)
        # The host ends are on the bridge; the guest ends are in the guests.
        self.assertEqual(sorted([naming.host_name(a), naming.host_name(b)]),
                         bridge_members(self.net.bridge))
        self.assertEqual(str(MTU), sys_net(naming.host_name(a), 'mtu'))
        self.assertNotIn(naming.peer_name(a), host_links())
        self.configure(guest_a, a)
        self.configure(guest_b, b)
        self.assertIn('2 packets received', self.ping(guest_a, b))
        self.driver.destroy(self.context, guest_a, nw_a)
        self.driver.destroy(self.context, guest_b, nw_b)
        self.assert_no_links(a, b)
        # The bridge stays (its agent owns it), with no port left on it.
        self.assertEqual([], bridge_members(self.net.bridge))

    def test_privileged_guest_talks_to_unprivileged_one(self):
        self.flags(group='lxc', allow_privileged=True)
        a, b = self.net.port(1), self.net.port(2)
        guest_a, _ = self.spawn_on(a, instance=self.make_instance(
            **{'lxc:privileged': 'true'}))
        guest_b, _ = self.spawn_on(b)
        self.assert_guest_nic(guest_a, a)
        self.configure(guest_a, a)
        self.configure(guest_b, b)
        self.assertIn('2 packets received', self.ping(guest_b, a))
        self.driver.power_off(guest_a)
        self.assertIn(naming.peer_name(a), host_links())

    def test_spawn_with_two_ports_gives_eth0_and_eth1(self):
        a, b = self.net.port(1), self.net.port(2)
        guest, _ = self.spawn_on(a, b)
        self.assert_guest_nic(guest, a, 'eth0')
        self.assert_guest_nic(guest, b, 'eth1')

    def test_spawn_failing_second_plug_leaves_nothing(self):
        a, b = self.net.port(1), self.net.port(2)
        real_plug = vifs._plug

        def plug(instance, vif):
            if vif['id'] == b['id']:
                raise exception.VifPlugFailed(port=vif['id'],
                                              reason='injected')
            real_plug(instance, vif)

        patched = self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.vif.driver._plug', autospec=True,
            side_effect=plug)).mock
        instance = self.make_instance()
        self.assertRaises(exception.VifPlugFailed, self.driver.spawn,
                          self.context, instance, self.image_meta(), [],
                          None, {},
                          network_info=network_model.NetworkInfo([a, b]))
        self.assertEqual(2, patched.call_count)
        self.assert_no_links(a, b)
        self.assertEqual([], bridge_members(self.net.bridge))
        self.assertEqual([], self.driver.list_instance_uuids())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_spawn_refuses_unsupported_vif_types(self):
        for vif_type in (network_model.VIF_TYPE_VHOSTUSER,
                         network_model.VIF_TYPE_BINDING_FAILED,
                         network_model.VIF_TYPE_UNBOUND,
                         network_model.VIF_TYPE_MACVTAP):
            good, bad = self.net.port(1), self.net.port(2, vif_type)
            instance = self.make_instance()
            e = self.assertRaises(
                exception.VifTypeNotSupported, self.driver.spawn,
                self.context, instance, self.image_meta(), [], None, {},
                network_info=network_model.NetworkInfo([good, bad]))
            self.assertIn(bad['id'], str(e))
            self.assertIn(vif_type, str(e))
            self.assert_no_links(good, bad)
            self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual(0, self.fetch.call_count)

    def test_power_off_gives_the_device_back_and_power_on_reuses_it(self):
        a, b = self.net.port(1), self.net.port(2)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, _ = self.spawn_on(b)
        self.configure(guest_b, b)
        self.driver.power_off(guest_a)
        self.assertEqual(power_state.SHUTDOWN, self.state(guest_a))
        # liblxc moved the guest's eth0 back under its host-side name.
        peer = naming.peer_name(a)
        self.assertIn(peer, host_links())
        self.assertEqual(a['address'], sys_net(peer, 'address'))
        self.assertEqual(str(MTU), sys_net(peer, 'mtu'))
        self.assertEqual(sorted([naming.host_name(a), naming.host_name(b)]),
                         bridge_members(self.net.bridge))
        self.driver.power_on(self.context, guest_a, nw_a)
        self.wait_booted(guest_a, times=2)
        self.assert_guest_nic(guest_a, a)
        self.configure(guest_a, a)
        self.assertIn('2 packets received', self.ping(guest_a, b))

    def test_reboot_keeps_networking(self):
        a, b = self.net.port(1), self.net.port(2)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, _ = self.spawn_on(b)
        self.configure(guest_b, b)
        for boot, reboot_type in enumerate(('HARD', 'SOFT'), start=2):
            self.driver.reboot(self.context, guest_a, nw_a, reboot_type)
            self.wait_booted(guest_a, times=boot)
            self.assert_guest_nic(guest_a, a)
            self.configure(guest_a, a)
            self.assertIn('2 packets received', self.ping(guest_a, b))

    def test_plug_vifs_of_a_running_guest_changes_nothing(self):
        a, b = self.net.port(1), self.net.port(2)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, _ = self.spawn_on(b)
        self.configure(guest_a, a)
        self.configure(guest_b, b)
        self.driver.plug_vifs(guest_a, nw_a)
        self.assertIn('2 packets received', self.ping(guest_a, b))

    def test_plug_vifs_after_host_reboot_makes_the_pair_again(self):
        a = self.net.port(1)
        guest, nw = self.spawn_on(a)
        self.driver.power_off(guest)
        # A host reboot loses every veth pair and the bridge.
        delete_link(naming.host_name(a))
        delete_link(self.net.bridge)
        self.driver.resume_state_on_host_boot(self.context, guest, nw, None)
        self.wait_booted(guest, times=2)
        self.assert_guest_nic(guest, a)
        self.assertEqual([naming.host_name(a)],
                         bridge_members(self.net.bridge))

    def test_routed_tap_port_is_in_no_bridge(self):
        a = self.net.port(1, network_model.VIF_TYPE_TAP)
        guest, nw = self.spawn_on(a)
        self.assert_guest_nic(guest, a)
        tap = naming.host_name(a)
        self.assertFalse(os.path.exists('/sys/class/net/%s/master' % tap))
        self.assertEqual(str(MTU), sys_net(tap, 'mtu'))
        self.assertNotIn(self.net.bridge, host_links())
        self.driver.destroy(self.context, guest, nw)
        self.assert_no_links(a)

    def test_unplug_vifs_removes_the_guest_device(self):
        a = self.net.port(1)
        guest, nw = self.spawn_on(a)
        self.driver.unplug_vifs(guest, nw)
        self.assert_no_links(a)
        code, _ = container.run_in_guest(
            guest.uuid, ['cat', '/sys/class/net/eth0/address'], 10)
        self.assertNotEqual(0, code)


class OvsTest(VifTestCase):
    """'ovs' ports through os-vif on a private Open vSwitch with the
    userspace (netdev) datapath."""

    def setUp(self):
        super().setUp()
        self.ovs = self.useFixture(lxc_fixtures.OpenVSwitch())
        self.net = self.useFixture(Network(bridge=self.ovs.bridge))

    def port(self, host, **details):
        details.setdefault('datapath_type', 'netdev')
        return self.net.port(host, network_model.VIF_TYPE_OVS, details)

    def assert_ovs_ids(self, instance, vif, interface):
        self.assertEqual(
            (vif['id'], vif['address'], instance.uuid),
            tuple(self.ovs.external_id(interface, key)
                  for key in ('iface-id', 'attached-mac', 'vm-uuid')))

    def assert_nothing_left(self, *vifs_):
        self.assertEqual([], self.ovs.ports())
        links = host_links()
        for vif in vifs_:
            for name in ovs_hybrid_links(vif):
                self.assertNotIn(name, links)
        self.assert_no_links(*vifs_)

    def test_two_guests_on_ovs_talk(self):
        a, b = self.port(1), self.port(2)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, nw_b = self.spawn_on(b)
        self.assertEqual(
            sorted([naming.host_name(a), naming.host_name(b)]),
            self.ovs.ports())
        self.assert_ovs_ids(guest_a, a, naming.host_name(a))
        self.assert_ovs_ids(guest_b, b, naming.host_name(b))
        self.assertEqual(str(MTU), sys_net(naming.host_name(a), 'mtu'))
        self.assert_guest_nic(guest_a, a)
        self.configure(guest_a, a)
        self.configure(guest_b, b)
        self.assertIn('2 packets received', self.ping(guest_a, b))
        self.assert_tcp_works(guest_a, guest_b, b)
        self.driver.destroy(self.context, guest_a, nw_a)
        self.driver.destroy(self.context, guest_b, nw_b)
        self.assert_nothing_left(a, b)

    def test_two_guests_on_ovs_hybrid_plug_talk(self):
        a = self.port(1, ovs_hybrid_plug=True, port_filter=True)
        b = self.port(2, ovs_hybrid_plug=True, port_filter=True)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, nw_b = self.spawn_on(b)
        qbr, qvb, qvo = ovs_hybrid_links(a)
        self.assertEqual(sorted([naming.host_name(a), qvb]),
                         bridge_members(qbr))
        self.assertIn(qvo, self.ovs.ports())
        self.assert_ovs_ids(guest_a, a, qvo)
        self.configure(guest_a, a)
        self.configure(guest_b, b)
        self.assertIn('2 packets received', self.ping(guest_b, a))
        self.assert_tcp_works(guest_b, guest_a, a)
        self.driver.destroy(self.context, guest_a, nw_a)
        self.driver.destroy(self.context, guest_b, nw_b)
        self.assert_nothing_left(a, b)

    def test_ovs_port_survives_power_off_reboot_and_replug(self):
        a, b = self.port(1), self.port(2)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, _ = self.spawn_on(b)
        self.configure(guest_b, b)
        self.driver.power_off(guest_a)
        # The host end stays a port of the switch while the guest is off.
        self.assertIn(naming.host_name(a), self.ovs.ports())
        self.driver.power_on(self.context, guest_a, nw_a)
        self.wait_booted(guest_a, times=2)
        self.driver.reboot(self.context, guest_a, nw_a, 'HARD')
        self.wait_booted(guest_a, times=3)
        self.driver.plug_vifs(guest_a, nw_a)
        self.assert_ovs_ids(guest_a, a, naming.host_name(a))
        self.configure(guest_a, a)
        self.assertIn('2 packets received', self.ping(guest_a, b))

    def test_failed_ovs_plug_leaves_nothing(self):
        a, b = self.port(1), self.port(2, ovs_hybrid_plug=True)
        self.assert_failed_second_plug_leaves_nothing(a, b)
