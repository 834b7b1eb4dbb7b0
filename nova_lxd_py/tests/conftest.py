"""Settle Nova's concurrency mode before any test module is imported.

Nova refuses native-thread mode once eventlet is loaded, and oslo.privsep
loads eventlet when it can; so the mode is chosen here, first: native
threads, nova-compute's own default since Nova 34
(OS_NOVA_DISABLE_EVENTLET_PATCHING=0 runs the suite on eventlet instead).
"""

import os

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

import nova.tests.functional  # noqa: E402,F401  (runs monkey_patch.patch())


def pytest_sessionfinish(session, exitstatus):
    """Stop the private Open vSwitch of the network tests (if one was
    started) while pytest's streams are still open: its OVSDB client's
    thread logs until it is stopped."""
    from nova_lxd_py.tests import fixtures
    fixtures.stop_private_ovs()
