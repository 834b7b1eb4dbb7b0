"""Containers and disks that belong to no instance, on real containers."""

import os

import fixtures
from nova import objects

from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.tests.functional import driver_base
# The module, not its classes: those would be collected here again.
from nova_lxd_py.tests.functional import test_vif
from nova_lxd_py.vif import naming
from nova_lxd_py.virt import container
from nova_lxd_py.virt import driver


class OrphanTest(driver_base.DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.orphans.ORPHAN_GRACE_SECONDS', 0))
        self.log = self.useFixture(fixtures.FakeLogger(
            name='nova_lxd_py.virt.orphans'))

    def test_periodic_pass_logs_then_removes_orphans(self):
        kept = self.spawn()
        orphan = self.spawn(self.make_instance(hostname='orphan'))
        listed = [objects.Instance(uuid=kept.uuid, image_ref='',
                                   deleted=False)]
        self.driver.manage_image_cache(self.context, listed)
        self.assertIn('Container %s has no instance on this host'
                      % orphan.uuid, self.log.output)
        self.assertNotIn(kept.uuid, self.log.output)
        self.assertIn(orphan.uuid, self.container_dirs())

        self.flags(group='lxc', remove_orphans=True)
        self.driver.manage_image_cache(self.context, listed)
        self.assertEqual([kept.uuid], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(orphan.uuid))
        self.assertEqual('RUNNING', container.state(kept.uuid)[0])

    def test_start_up_removes_half_made_containers_only(self):
        kept = self.spawn()
        half = self.spawn(self.make_instance(hostname='half'))
        container.stop(half.uuid)
        os.unlink(os.path.join(container.container_dir(half.uuid),
                               container.CONFIG_FILE))
        self.flags(group='lxc', remove_orphans=True)
        fresh = driver.LXCDriver(self.driver.virtapi)
        fresh.init_host(driver_base.NODE)
        self.assertEqual([kept.uuid], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(half.uuid))
        self.assertEqual('RUNNING', container.state(kept.uuid)[0])


class OrphanPortsTest(test_vif.VifTestCase):
    """An orphan's ports: its veth pairs go with it."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.virt.orphans.ORPHAN_GRACE_SECONDS', 0))

    def test_removed_orphan_leaves_no_network_device(self):
        vif = self.net.port(2)
        instance, _ = self.spawn_on(vif)
        self.assertEqual([naming.host_name(vif)],
                         test_vif.bridge_members(self.net.bridge))
        self.flags(group='lxc', remove_orphans=True)
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assert_no_links(vif)
        self.assertEqual([], test_vif.bridge_members(self.net.bridge))
