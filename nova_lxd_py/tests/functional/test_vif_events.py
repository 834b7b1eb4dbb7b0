"""spawn and Neutron's network-vif-plugged events, on real containers
and ports (test_vif's networks)."""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import threading  # noqa: E402
import types  # noqa: E402

from nova.compute import manager  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova import objects  # noqa: E402

from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
# The module, not its classes: those would be collected here again.
from nova_lxd_py.tests.functional import test_vif  # noqa: E402


class NeutronEventsTest(test_vif.VifTestCase):
    """spawn waits for network-vif-plugged through Nova's own virtapi,
    over the compute manager's real event table."""

    def setUp(self):
        super().setUp()
        self.instance_events = manager.InstanceEvents()
        self.driver.virtapi = manager.ComputeVirtAPI(types.SimpleNamespace(
            instance_events=self.instance_events, reportclient=None))
        self.flags(vif_plugging_timeout=2, vif_plugging_is_fatal=True)

    def neutron_wires(self, instance, vif, seen):
        """Send the port's event once its host end is on the bridge, as
        Neutron's agent would; record the guest's state at that moment."""
        member = '/sys/class/net/%s/brif/%s' % (
            self.net.bridge, naming.host_name(vif))
        test_vif.wait_until(lambda: os.path.exists(member))
        event = objects.InstanceExternalEvent(
            instance_uuid=instance.uuid, name='network-vif-plugged',
            tag=vif['id'], status='completed')
        waiter = test_vif.wait_until(
            lambda: self.instance_events.pop_instance_event(instance, event))
        seen.append(container.state(instance.uuid)[0])
        waiter.set(event)

    def test_spawn_starts_the_guest_once_neutron_wired_its_port(self):
        self.flags(vif_plugging_timeout=30)
        a = self.net.port(1)
        instance = self.make_instance()
        seen = []
        neutron = threading.Thread(target=self.neutron_wires,
                                   args=(instance, a, seen))
        neutron.start()
        self.spawn_on(a, instance=instance)
        neutron.join()
        # Not started before the event (maybe not even defined yet).
        self.assertIn(seen[0], ('UNDEFINED', 'STOPPED'))
        self.assert_guest_nic(instance, a)

    def test_spawn_without_event_fatal_leaves_nothing(self):
        a = self.net.port(1)
        instance = self.make_instance()
        self.assertRaises(
            nova_exception.VirtualInterfaceCreateException,
            self.driver.spawn, self.context, instance, self.image_meta(),
            [], None, {}, network_info=network_model.NetworkInfo([a]))
        self.assert_no_links(a)
        self.assertEqual([], test_vif.bridge_members(self.net.bridge))
        self.assertEqual([], self.driver.list_instance_uuids())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_spawn_without_event_not_fatal_starts_the_guest(self):
        self.flags(vif_plugging_is_fatal=False)
        a = self.net.port(1)
        guest, _ = self.spawn_on(a)
        self.assert_guest_nic(guest, a)

    def test_spawn_of_ports_already_up_waits_for_nothing(self):
        a = self.net.port(1)
        a['active'] = True
        guest, _ = self.spawn_on(a)
        self.assert_guest_nic(guest, a)
