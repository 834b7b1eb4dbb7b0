"""Tables for the host-side names and facts derived from a Nova VIF, and
the liblxc network lines made from them."""

import ddt
from nova.network import model
from oslotest import base

from nova_lxd_py.vif import naming
from nova_lxd_py.virt import config

PORT = '3f1c2a5b-9d8e-4f70-a1b2-c3d4e5f60718'


def vif(**fields):
    data = {'id': PORT, 'address': 'fa:16:3e:01:02:03', 'type': 'bridge',
            'network': {'bridge': 'brq5e6f7a8b-9c', 'meta': {'mtu': 1450}}}
    data.update(fields)
    return data


@ddt.ddt
class NamingTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        # the VIF's fields -> host end, container end on the host
        ({}, 'tap3f1c2a5b-9d', 'tin3f1c2a5b-9d'),
        ({'devname': 'tap3f1c2a5b-9d'}, 'tap3f1c2a5b-9d', 'tin3f1c2a5b-9d'),
        ({'devname': None}, 'tap3f1c2a5b-9d', 'tin3f1c2a5b-9d'),
        ({'devname': 'nic3f1c2a5b-9d'}, 'nic3f1c2a5b-9d', 'tin3f1c2a5b-9d'),
        ({'id': 'abc'}, 'tapabc', 'tinabc'),
    )
    def test_names_from_port_id_or_devname(self, fields, host, peer):
        self.assertEqual(host, naming.host_name(vif(**fields)))
        self.assertEqual(peer, naming.peer_name(vif(**fields)))

    def test_names_fit_nova_and_the_kernel(self):
        # Nova's NIC_NAME_LEN (14) is what Neutron's agents look for; the
        # kernel takes 15.
        self.assertEqual(model.NIC_NAME_LEN,
                         len(naming.host_name(vif())))
        self.assertEqual(model.NIC_NAME_LEN,
                         len(naming.peer_name(vif())))

    @ddt.data({'id': None}, {'id': ''}, {'devname': 'tap0123456789abc'},
              {'devname': 'tap/../eth0'}, {'devname': 'eth0:1'},
              {'devname': 'tap 0'}, {'devname': 'tap\nlxc.x = 1'},
              {'devname': '-tap'})
    def test_names_refuse_unusable_fields(self, fields):
        self.assertRaises(naming.InvalidVif,
                          lambda: (naming.host_name(vif(**fields)),
                                   naming.peer_name(vif(**fields))))

    @ddt.unpack
    @ddt.data(
        ('fa:16:3e:01:02:03', 'fa:16:3e:01:02:03'),
        ('FA:16:3E:0A:0B:0C', 'fa:16:3e:0a:0b:0c'),
    )
    def test_mac(self, address, expected):
        self.assertEqual(expected, naming.mac(vif(address=address)))

    @ddt.data(None, '', 'fa:16:3e:01:02', 'fa-16-3e-01-02-03',
              'fa:16:3e:01:02:03\nlxc.x = 1', 42)
    def test_mac_refuses_bad_address(self, address):
        self.assertRaises(naming.InvalidVif, naming.mac,
                          vif(address=address))

    @ddt.unpack
    @ddt.data(
        ({'network': {'meta': {'mtu': 1400}}}, 1400),
        ({'network': {'meta': {'mtu': '9000'}}}, 9000),
        ({'network': {'meta': {}}}, None),
        ({'network': {}}, None),
        ({'network': None}, None),
        ({'network': {'meta': {}}, 'meta': {'mtu': 1300}}, 1300),
    )
    def test_mtu(self, fields, expected):
        self.assertEqual(expected, naming.mtu(vif(**fields)))

    @ddt.data(67, 65536, 'big', -1, '0')
    def test_mtu_refuses_out_of_range(self, value):
        self.assertRaises(naming.InvalidVif, naming.mtu,
                          vif(network={'meta': {'mtu': value}}))

    def test_mtu_error_names_the_port_s_own_value(self):
        error = self.assertRaises(naming.InvalidVif, naming.mtu,
                                  vif(network={'meta': {}},
                                      meta={'mtu': 40}))
        self.assertIn('invalid MTU 40', str(error))

    @ddt.unpack
    @ddt.data(
        ({}, 'brq5e6f7a8b-9c'),
        ({'network': {'bridge': None},
          'details': {'bridge_name': 'br-own'}}, 'br-own'),
    )
    def test_bridge_name(self, fields, expected):
        self.assertEqual(expected, naming.bridge_name(vif(**fields)))

    @ddt.data({'network': {}}, {'network': {'bridge': 'br x'}})
    def test_bridge_name_missing_or_bad(self, fields):
        self.assertRaises(naming.InvalidVif, naming.bridge_name,
                          vif(**fields))


class NetworkLinesTest(base.BaseTestCase):

    def test_no_port_gives_an_empty_namespace(self):
        self.assertEqual([('lxc.net.0.type', 'empty')],
                         config.network_lines(config.nics([])))
        self.assertEqual([('lxc.net.0.type', 'empty')],
                         config.network_lines(config.nics(None)))

    def test_ports_become_phys_devices_in_port_order(self):
        second = vif(id='99999999-0000-4000-8000-000000000000',
                     address='FA:16:3E:AA:BB:CC', network={'meta': {}})
        self.assertEqual([
            ('lxc.net.0.type', 'phys'),
            ('lxc.net.0.link', 'tin3f1c2a5b-9d'),
            ('lxc.net.0.name', 'eth0'),
            ('lxc.net.0.hwaddr', 'fa:16:3e:01:02:03'),
            ('lxc.net.0.flags', 'up'),
            ('lxc.net.0.mtu', 1450),
            ('lxc.net.1.type', 'phys'),
            ('lxc.net.1.link', 'tin99999999-00'),
            ('lxc.net.1.name', 'eth1'),
            ('lxc.net.1.hwaddr', 'fa:16:3e:aa:bb:cc'),
            ('lxc.net.1.flags', 'up'),
        ], config.network_lines(config.nics([vif(), second])))

    def test_bad_values_never_reach_the_config(self):
        self.assertRaises(naming.InvalidVif, config.network_lines,
                          [config.Nic(link='tin0\nlxc.x', hwaddr='fa:16:3e:'
                                      '01:02:03')])
        self.assertRaises(naming.InvalidVif, config.network_lines,
                          [config.Nic(link='tin0', hwaddr='nope')])


@ddt.ddt
class FreeGuestNameTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        # devices in the guest -> the name a hot-plugged one gets
        ([], 'eth0'),
        (['lo'], 'eth0'),
        (['lo', 'eth0'], 'eth1'),
        (['lo', 'eth0', 'eth2'], 'eth1'),     # a gap left by a detach
        (['eth1', 'eth0', 'eth2'], 'eth3'),
        (['eth0x', 'veth0', 'eth01'], 'eth0'),  # 'eth01' is not eth1
        (['eth01', 'eth0'], 'eth1'),
        (['eth10', 'eth0'], 'eth1'),
    )
    def test_free_guest_name_lowest_unused(self, existing, expected):
        self.assertEqual(expected, naming.free_guest_name(existing))
