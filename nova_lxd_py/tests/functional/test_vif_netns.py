"""'ovs' ports with ``[lxc] ovs_network_namespace``: ovs-vswitchd (the
test's private switch, userspace datapath) runs in a named network
namespace of its own, where the host ends of the veth pairs must be
(run as root). Addresses are on 198.18.0.0/15 inside the guests only.
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import subprocess  # noqa: E402

from nova.network import model as network_model  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests.functional import test_vif  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402


def netns_links(netns):
    """Names of the devices in the named network namespace."""
    out = subprocess.run(['ip', '-n', netns, '-o', 'link', 'show'],
                         capture_output=True, text=True, check=True).stdout
    return {line.split(':')[1].strip().split('@')[0]
            for line in out.splitlines()}


class OvsNetnsTest(test_vif.VifTestCase):

    def setUp(self):
        super().setUp()
        self.ovs = self.useFixture(lxc_fixtures.OpenVSwitch(in_netns=True))
        self.net = self.useFixture(test_vif.Network(bridge=self.ovs.bridge))
        self.addCleanup(self._clean_netns)
        self.flags(group='lxc', ovs_network_namespace=self.ovs.netns)

    def _clean_netns(self):
        for vif in self.net.ports:
            subprocess.run(['ip', '-n', self.ovs.netns, 'link', 'del',
                            naming.host_name(vif)], capture_output=True,
                           check=False)

    def port(self, host, **details):
        details.setdefault('datapath_type', 'netdev')
        return self.net.port(host, network_model.VIF_TYPE_OVS, details)

    def assert_nothing_left(self, *vifs_):
        self.assertEqual([], self.ovs.ports())
        self.assert_no_links(*vifs_)
        in_netns = netns_links(self.ovs.netns)
        for vif in vifs_:
            self.assertNotIn(naming.host_name(vif), in_netns)
            self.assertNotIn(naming.peer_name(vif), in_netns)

    def test_two_guests_talk_through_a_switch_in_another_netns(self):
        a, b = self.port(1), self.port(2)
        guest_a, nw_a = self.spawn_on(a)
        guest_b, nw_b = self.spawn_on(b)
        ends = sorted([naming.host_name(a), naming.host_name(b)])
        self.assertEqual(ends, self.ovs.ports())
        # The host ends are where ovs-vswitchd is, up, with the MTU.
        in_netns = netns_links(self.ovs.netns)
        self.assertTrue(set(ends) <= in_netns, in_netns)
        self.assert_no_links(a, b)
        self.assertIn('state UP', subprocess.run(
            ['ip', '-n', self.ovs.netns, 'link', 'show', ends[0]],
            capture_output=True, text=True, check=True).stdout)
        self.assertIn('mtu %d' % test_vif.MTU, subprocess.run(
            ['ip', '-n', self.ovs.netns, 'link', 'show', ends[0]],
            capture_output=True, text=True, check=True).stdout)
        self.assertEqual(a['id'], self.ovs.external_id(
            naming.host_name(a), 'iface-id'))
        self.assert_guest_nic(guest_a, a)
        self.configure(guest_a, a)
        self.configure(guest_b, b)
        self.assertIn('2 packets received', self.ping(guest_a, b))
        self.assert_tcp_works(guest_a, guest_b, b)
        # Off, the guest end is back on the host; the host end stays put.
        self.driver.power_off(guest_a)
        self.assertIn(naming.peer_name(a), test_vif.host_links())
        self.assertIn(naming.host_name(a), netns_links(self.ovs.netns))
        self.driver.power_on(self.context, guest_a, nw_a)
        self.wait_booted(guest_a, times=2)
        self.driver.plug_vifs(guest_a, nw_a)   # a re-plug changes nothing
        self.configure(guest_a, a)
        self.assertIn('2 packets received', self.ping(guest_a, b))
        self.driver.destroy(self.context, guest_a, nw_a)
        self.driver.destroy(self.context, guest_b, nw_b)
        self.assert_nothing_left(a, b)

    def test_inbound_limit_on_the_host_end_in_the_switch_netns(self):
        a = self.port(1)
        self.spawn_on(a, instance=self.make_instance(**{
            'quota:vif_inbound_average': '1000',
            'quota:vif_outbound_average': '1000'}))
        qdiscs = subprocess.run(
            ['ip', 'netns', 'exec', self.ovs.netns, 'tc', 'qdisc', 'show',
             'dev', naming.host_name(a)],
            capture_output=True, text=True, check=True).stdout
        self.assertIn('tbf 1: root', qdiscs)
        # Outbound: not on the userspace datapath (a warning says so).
        self.assertNotIn('ingress', qdiscs)
        self.assertNotIn(naming.ifb_name(a), netns_links(self.ovs.netns))
        self.assertNotIn(naming.ifb_name(a), test_vif.host_links())

    def test_hotplug_into_a_running_guest_and_detach(self):
        a, b = self.port(1), self.port(2)
        guest_b, _ = self.spawn_on(b)
        self.configure(guest_b, b)
        guest_a, _ = self.spawn_on()
        self.driver.attach_interface(self.context, guest_a,
                                     self.image_meta(), a)
        self.assertIn(naming.host_name(a), netns_links(self.ovs.netns))
        self.assert_guest_nic(guest_a, a, 'eth0')
        self.configure(guest_a, a)
        self.assertIn('2 packets received', self.ping(guest_a, b))
        self.driver.detach_interface(self.context, guest_a, a)
        self.assertEqual([naming.host_name(b)], self.ovs.ports())
        self.assert_no_links(a)
        self.assertNotIn(naming.host_name(a), netns_links(self.ovs.netns))

    def test_failed_plug_leaves_nothing_in_either_namespace(self):
        a, b = self.port(1), self.port(2)
        self.assert_failed_second_plug_leaves_nothing(a, b)

    def test_hybrid_plug_is_refused_before_anything_is_made(self):
        a = self.port(1)
        b = self.port(2, ovs_hybrid_plug=True, port_filter=True)
        instance = self.make_instance()
        e = self.assertRaises(
            exception.VifPlugFailed, self.driver.spawn, self.context,
            instance, self.image_meta(), [], None, {},
            network_info=network_model.NetworkInfo([a, b]))
        self.assertIn('ovs_network_namespace', str(e))
        self.assert_nothing_left(a, b)
        for name in test_vif.ovs_hybrid_links(b):
            self.assertNotIn(name, test_vif.host_links())
        self.assertEqual(0, self.fetch.call_count)

    def test_missing_namespace_fails_the_plug_and_leaves_nothing(self):
        self.flags(group='lxc', ovs_network_namespace='nlxpy-no-such-ns')
        a = self.port(1)
        instance = self.make_instance()
        e = self.assertRaises(
            exception.VifPlugFailed, self.driver.spawn, self.context,
            instance, self.image_meta(), [], None, {},
            network_info=network_model.NetworkInfo([a]))
        self.assertIn('nlxpy-no-such-ns ([lxc] ovs_network_namespace) '
                      'does not exist', str(e))
        self.assert_nothing_left(a)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual(0, self.fetch.call_count)

    def test_bad_namespace_name_fails_the_plug(self):
        self.flags(group='lxc', ovs_network_namespace='../../proc/1/ns/net')
        a = self.port(1)
        e = self.assertRaises(
            exception.VifPlugFailed, self.driver.spawn, self.context,
            self.make_instance(), self.image_meta(), [], None, {},
            network_info=network_model.NetworkInfo([a]))
        self.assertIn('is not a network namespace name', str(e))
        self.assert_nothing_left(a)
        self.assertEqual(0, self.fetch.call_count)
