"""Waiting for network-vif-plugged, against Nova's own ComputeVirtAPI.

The virtapi is the real one, over the compute manager's real event table
(``InstanceEvents``): Neutron's side is played by popping and setting an
event as the manager does when the event arrives over the API.
"""

import time
import types

import ddt
from nova.compute import manager
from nova import exception as nova_exception
from nova.network import model
from nova import objects
from oslo_config import fixture as config_fixture
from oslo_utils import uuidutils
from oslotest import base

from nova_lxd_py import conf
from nova_lxd_py.vif import events

objects.register_all()

UP, DOWN = True, False


def port(active, vnic_type=model.VNIC_TYPE_NORMAL):
    return model.VIF(id=uuidutils.generate_uuid(), active=active,
                     vnic_type=vnic_type)


@ddt.ddt
class ExpectedTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        # (active, vnic_type) of each port -> indexes of the ports waited for
        ([], []),
        ([(DOWN, 'normal')], [0]),
        ([(UP, 'normal')], []),
        ([(DOWN, 'normal'), (UP, 'normal'), (DOWN, 'normal')], [0, 2]),
        # A SmartNIC wires remote-managed ports and sends no event.
        ([(DOWN, model.VNIC_TYPE_REMOTE_MANAGED)], []),
        ([(DOWN, 'direct')], [0]),
    )
    def test_expected_events_are_the_ports_down(self, ports, waited):
        network_info = model.NetworkInfo(port(*p) for p in ports)
        self.assertEqual(
            [('network-vif-plugged', network_info[i]['id']) for i in waited],
            events.expected(network_info))

    def test_expected_events_of_a_port_with_unknown_state_none(self):
        # A stale cache entry without 'active' is taken as up, as Nova
        # does: waiting for it could only time out.
        self.assertEqual([], events.expected([{'id': 'p1'}]))


class PluggedTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(conf.CONF))
        self.conf.config(vif_plugging_timeout=1, vif_plugging_is_fatal=True)
        self.instance_events = manager.InstanceEvents()
        self.virtapi = manager.ComputeVirtAPI(types.SimpleNamespace(
            instance_events=self.instance_events, reportclient=None))
        self.instance = objects.Instance(
            uuid=uuidutils.generate_uuid(), vm_state='building',
            task_state='spawning')
        self.ports = model.NetworkInfo([port(DOWN), port(DOWN), port(UP)])

    def neutron_sends(self, vif, status='completed'):
        """What the compute manager does when Neutron's event arrives."""
        event = objects.InstanceExternalEvent(
            instance_uuid=self.instance.uuid, name='network-vif-plugged',
            tag=vif['id'], status=status)
        waiter = self.instance_events.pop_instance_event(self.instance,
                                                         event)
        self.assertIsNotNone(waiter, 'nobody waits for %s' % vif['id'])
        waiter.set(event)

    def plug(self, wait=True, send=(), status='completed'):
        """Run ``plugged``; return the seconds it took."""
        start = time.monotonic()
        with events.plugged(self.virtapi, self.instance, self.ports,
                            wait=wait):
            for vif in send:
                self.neutron_sends(vif, status)
        return time.monotonic() - start

    def test_plugged_returns_once_every_port_down_was_reported(self):
        took = self.plug(send=self.ports[:2])
        self.assertLess(took, 0.5)

    def test_plugged_waits_for_no_port_already_up(self):
        # Reporting the port up would fail: nobody waits for it.
        self.assertRaises(AssertionError, self.plug, send=self.ports)

    def test_plugged_missing_event_fatal_raises(self):
        start = time.monotonic()
        self.assertRaises(nova_exception.VirtualInterfaceCreateException,
                          self.plug, send=self.ports[:1])
        self.assertGreaterEqual(time.monotonic() - start, 0.9)

    def test_plugged_missing_event_not_fatal_goes_on(self):
        self.conf.config(vif_plugging_is_fatal=False)
        took = self.plug(send=self.ports[:1])
        self.assertGreaterEqual(took, 0.9)

    def test_plugged_failed_event_fatal_raises(self):
        self.assertRaises(nova_exception.VirtualInterfaceCreateException,
                          self.plug, send=self.ports[:2], status='failed')

    def test_plugged_failed_event_not_fatal_goes_on(self):
        self.conf.config(vif_plugging_is_fatal=False)
        took = self.plug(send=self.ports[:2], status='failed')
        self.assertLess(took, 0.5)

    def test_plugged_timeout_zero_waits_for_nothing(self):
        self.conf.config(vif_plugging_timeout=0)
        self.assertRaises(AssertionError, self.plug, send=self.ports[:1])
        self.assertLess(self.plug(), 0.5)

    def test_plugged_without_wait_waits_for_nothing(self):
        self.assertLess(self.plug(wait=False), 0.5)

    def test_plugged_error_in_body_is_raised_without_waiting(self):
        self.conf.config(vif_plugging_timeout=300)
        start = time.monotonic()
        with self.assertRaisesRegex(ValueError, 'plug failed'):
            with events.plugged(self.virtapi, self.instance, self.ports):
                raise ValueError('plug failed')
        self.assertLess(time.monotonic() - start, 0.5)
