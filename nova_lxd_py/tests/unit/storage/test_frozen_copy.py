"""Freezing a guest for a snapshot, against a modelled freezer cgroup.

The one seam is the container module (liblxc and the cgroup files); the
model below stands for a guest whose freeze is held back a given number of
times (as a task waiting on a FUSE file system holds it back).
"""

import fixtures
from oslotest import base

from nova_lxd_py.storage import frozen_copy


class Guest:
    """A freezer cgroup: 'held' freezes time out before one succeeds."""

    def __init__(self, held, stops=False):
        self.held = held
        self.stops = stops
        self.state = 'RUNNING'
        self.freezes = 0

    def set_frozen(self, name, frozen, timeout=10.0):
        if not frozen:
            if self.state == 'FREEZING':
                self.state = 'RUNNING'
            return
        self.freezes += 1
        if self.held:
            self.held -= 1
            self.state = 'FREEZING'
            if self.stops:
                self.state = 'STOPPED'
            raise TimeoutError('cgroup did not reach FROZEN')
        self.state = 'FROZEN'

    def lxc_state(self, name):
        return ('STOPPED' if self.state == 'STOPPED' else 'RUNNING'), 1


class FreezeTest(base.BaseTestCase):

    def use(self, guest):
        mock = self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.storage.frozen_copy.container',
            autospec=True)).mock
        mock.set_frozen.side_effect = guest.set_frozen
        mock.state.side_effect = guest.lxc_state
        self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.storage.frozen_copy.FREEZE_RETRY_SECONDS', 0))
        return guest

    def test_a_freeze_held_back_is_tried_again_thawed_in_between(self):
        guest = self.use(Guest(held=2))
        self.assertTrue(frozen_copy._freeze('g'))
        self.assertEqual('FROZEN', guest.state)
        self.assertEqual(3, guest.freezes)

    def test_a_freeze_held_back_every_time_fails_and_leaves_it_thawed(self):
        guest = self.use(Guest(held=frozen_copy.FREEZE_ATTEMPTS))
        error = self.assertRaises(frozen_copy.SnapshotFailed,
                                  frozen_copy._freeze, 'g')
        self.assertIn('could not freeze the guest', str(error))
        self.assertEqual('RUNNING', guest.state)
        self.assertEqual(frozen_copy.FREEZE_ATTEMPTS, guest.freezes)

    def test_a_guest_that_stopped_meanwhile_is_not_frozen(self):
        guest = self.use(Guest(held=1, stops=True))
        self.assertFalse(frozen_copy._freeze('g'))
        self.assertEqual(1, guest.freezes)
