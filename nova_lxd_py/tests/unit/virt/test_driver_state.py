"""liblxc state (and our suspend markers) -> Nova power state."""

import ddt
from nova.compute import power_state
from oslotest import base

from nova_lxd_py.virt import power


@ddt.ddt
class PowerStateForTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        ('RUNNING', False, power_state.RUNNING),
        ('STARTING', False, power_state.RUNNING),
        ('THAWED', False, power_state.RUNNING),
        ('STOPPED', False, power_state.SHUTDOWN),
        ('STOPPING', False, power_state.SHUTDOWN),
        ('ABORTING', False, power_state.CRASHED),
        ('FROZEN', False, power_state.PAUSED),
        ('FREEZING', False, power_state.PAUSED),
        # Suspend is a freeze too; the marker tells the two apart.
        ('FROZEN', True, power_state.SUSPENDED),
        ('FREEZING', True, power_state.SUSPENDED),
        # A stale marker never makes a running or stopped guest suspended.
        ('RUNNING', True, power_state.RUNNING),
        ('STOPPED', True, power_state.SHUTDOWN),
        ('UNKNOWN-STATE', False, power_state.NOSTATE),
        ('', True, power_state.NOSTATE),
    )
    def test_power_state_for_lxc_state(self, lxc_state, suspended, expected):
        self.assertEqual(expected,
                         power.power_state_for(lxc_state, suspended))

    @ddt.unpack
    @ddt.data(
        # Checkpointed to disk: stopped as liblxc sees it, suspended.
        ('STOPPED', power_state.SUSPENDED),
        # Running again (restored, or started afresh before the marker
        # went): what liblxc says.
        ('RUNNING', power_state.RUNNING),
        ('STOPPING', power_state.SHUTDOWN),
        ('ABORTING', power_state.CRASHED),
    )
    def test_checkpointed_guest(self, lxc_state, expected):
        self.assertEqual(expected, power.power_state_for(
            lxc_state, False, checkpointed=True))
