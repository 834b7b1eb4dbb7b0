"""A guest's power: liblxc's states as Nova's, and asking a guest's init
to halt or reboot (with a deadline, after which the driver does it hard).

Functions of the guest's container only (``container``); no driver state.
"""

import time

from nova.compute import power_state
from oslo_log import log as logging

from nova_lxd_py import conf
from nova_lxd_py.virt import container

CONF = conf.CONF
LOG = logging.getLogger(__name__)

# liblxc state -> Nova power state; FROZEN depends on pause vs suspend.
POWER_STATES = {
    'STARTING': power_state.RUNNING,
    'RUNNING': power_state.RUNNING,
    'THAWED': power_state.RUNNING,
    'STOPPING': power_state.SHUTDOWN,
    'STOPPED': power_state.SHUTDOWN,
    'ABORTING': power_state.CRASHED,
    'FREEZING': power_state.PAUSED,
    'FROZEN': power_state.PAUSED,
}


def power_state_for(lxc_state, suspended, checkpointed=False):
    """``suspended``: frozen by a suspend (not a pause); ``checkpointed``:
    stopped by a suspend to disk."""
    state = POWER_STATES.get(lxc_state, power_state.NOSTATE)
    if state == power_state.PAUSED and suspended:
        return power_state.SUSPENDED
    if lxc_state == 'STOPPED' and checkpointed:
        return power_state.SUSPENDED
    return state


def clean_shutdown(instance, timeout, retry_interval):
    """Ask init to halt, again every retry_interval; True if it did."""
    deadline = time.monotonic() + timeout
    next_request = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_request:
            container.request_shutdown(instance.uuid)
            next_request = time.monotonic() + max(retry_interval, 1)
        time.sleep(0.05)
        if container.state(instance.uuid)[0] == 'STOPPED':
            LOG.info('Guest shut down cleanly', instance=instance)
            return True
    LOG.warning('Guest did not shut down within %d s; stopping it',
                timeout, instance=instance)
    return False


def soft_reboot(instance):
    """Ask init to reboot; True once a new init runs."""
    lxc_state, old_pid = container.state(instance.uuid)
    if lxc_state != 'RUNNING' or not \
            container.request_reboot(instance.uuid):
        return False
    deadline = time.monotonic() + CONF.lxc.soft_reboot_timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        lxc_state, pid = container.state(instance.uuid)
        if lxc_state == 'RUNNING' and pid not in (old_pid, -1):
            return True
    LOG.warning('Guest did not reboot within %d s; rebooting it hard',
                CONF.lxc.soft_reboot_timeout, instance=instance)
    return False
