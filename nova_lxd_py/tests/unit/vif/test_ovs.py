"""'ovs' VIFs -> the os-vif objects our ovs wiring hands to os-vif, and
the checks that refuse a port before anything is made for it."""

import ddt
import fixtures
from nova.network import model
from os_vif import objects as osv_objects
from oslotest import base

from nova_lxd_py import conf
from nova_lxd_py import exception
from nova_lxd_py.vif import driver
from nova_lxd_py.vif import naming
from nova_lxd_py.vif import ovs

PORT = '3f1c2a5b-9d8e-4f70-a1b2-c3d4e5f60718'


def ovs_vif(details=None, bridge='br-int', **fields):
    network = model.Network(id='net', bridge=bridge, label='n', subnets=[],
                            mtu=1450)
    data = dict(id=PORT, address='fa:16:3e:01:02:03', network=network,
                type=model.VIF_TYPE_OVS, devname='tap3f1c2a5b-9d',
                details=details or {'datapath_type': 'netdev'})
    data.update(fields)
    return model.VIF(**data)


@ddt.ddt
class ToOsvifTest(base.BaseTestCase):

    def test_direct_port_is_an_ovs_port_os_vif_creates(self):
        obj = ovs.to_osvif(ovs_vif())
        self.assertIsInstance(obj, osv_objects.vif.VIFOpenVSwitch)
        self.assertEqual('tap3f1c2a5b-9d', obj.vif_name)
        self.assertEqual('br-int', obj.network.bridge)
        profile = obj.port_profile
        self.assertEqual((True, False, 'netdev', PORT),
                         (profile.create_port, profile.create_tap,
                          profile.datapath_type, profile.interface_id))

    def test_hybrid_port_goes_through_a_per_port_linux_bridge(self):
        obj = ovs.to_osvif(ovs_vif({'datapath_type': 'netdev',
                                    'ovs_hybrid_plug': True}))
        self.assertIsInstance(obj, osv_objects.vif.VIFBridge)
        self.assertEqual(('qbr3f1c2a5b-9d', 'tap3f1c2a5b-9d'),
                         (obj.bridge_name, obj.vif_name))
        self.assertFalse(obj.port_profile.create_tap)

    def test_host_end_is_ours_without_a_devname(self):
        # Nova's conversion would say 'nic...': the host end must be the
        # device we make, whatever the port says.
        obj = ovs.to_osvif(ovs_vif(devname=None))
        self.assertEqual(naming.host_name({'id': PORT}), obj.vif_name)

    def test_binding_asking_for_a_tap_gets_our_veth(self):
        obj = ovs.to_osvif(ovs_vif({'datapath_type': 'system',
                                    'ovs_create_tap': True}))
        self.assertFalse(obj.port_profile.create_tap)
        self.assertEqual('system', obj.port_profile.datapath_type)

    @ddt.data(model.VNIC_TYPE_DIRECT, model.VNIC_TYPE_REMOTE_MANAGED,
              model.VNIC_TYPE_VDPA)
    def test_ports_handing_a_vf_to_the_guest_are_refused(self, vnic_type):
        vif = ovs_vif(vnic_type=vnic_type,
                      profile={'pci_slot': '0000:81:00.1'})
        self.assertRaisesRegex(naming.InvalidVif, vnic_type,
                               ovs.to_osvif, vif)


@ddt.ddt
class CheckTest(base.BaseTestCase):

    @ddt.data(
        {'bridge': None},                        # no integration bridge
        {'bridge': 'br-int;rm'},                 # not a device name
        {'bridge': 'a-bridge-name-too-long'},
        {'address': 'not-a-mac'},
        {'vnic_type': model.VNIC_TYPE_DIRECT,
         'profile': {'pci_slot': '0000:81:00.1'}},
    )
    def test_check_refuses_an_unusable_ovs_port(self, fields):
        e = self.assertRaises(exception.VifPlugFailed, driver.check,
                              ovs_vif(**fields))
        self.assertIn(PORT, str(e))

    def test_check_accepts_ovs_ports(self):
        for details in ({}, {'datapath_type': 'system'},
                        {'ovs_hybrid_plug': True, 'port_filter': True}):
            driver.check(ovs_vif(details))


class NetnsTest(base.BaseTestCase):
    """``[lxc] ovs_network_namespace``: where the host end goes."""

    def setUp(self):
        super().setUp()
        self.netns_dir = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MockPatch(
            'pyroute2.netns.NETNS_RUN_DIR', self.netns_dir))

    def set_netns(self, name, exists=True):
        conf.CONF.set_override('ovs_network_namespace', name, group='lxc')
        self.addCleanup(conf.CONF.clear_override, 'ovs_network_namespace',
                        group='lxc')
        if exists:
            open('%s/%s' % (self.netns_dir, name), 'w').close()

    def test_host_end_stays_here_without_the_option(self):
        self.assertEqual('', driver.HOST_SIDES['ovs'].host_netns(ovs_vif()))

    def test_host_end_goes_to_the_named_namespace(self):
        self.set_netns('ovs-ns')
        driver.check(ovs_vif())
        self.assertEqual('ovs-ns',
                         driver.HOST_SIDES['ovs'].host_netns(ovs_vif()))
        # Other port types keep theirs here.
        self.assertEqual('', driver.HOST_SIDES['bridge'].host_netns(
            ovs_vif(type=model.VIF_TYPE_BRIDGE)))

    def test_hybrid_plug_is_refused_with_the_option(self):
        self.set_netns('ovs-ns')
        e = self.assertRaises(exception.VifPlugFailed, driver.check,
                              ovs_vif({'ovs_hybrid_plug': True}))
        self.assertIn('ovs_network_namespace', str(e))

    def test_missing_namespace_is_refused(self):
        self.set_netns('gone', exists=False)
        e = self.assertRaises(exception.VifPlugFailed, driver.check,
                              ovs_vif())
        self.assertIn('gone ([lxc] ovs_network_namespace) does not exist',
                      str(e))

    def test_namespace_name_leaving_the_directory_is_refused(self):
        self.set_netns('../1/ns/net', exists=False)
        e = self.assertRaises(exception.VifPlugFailed, driver.check,
                              ovs_vif())
        self.assertIn('is not a network namespace name', str(e))
