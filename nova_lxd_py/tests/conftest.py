"""Settle Nova's concurrency mode before any test module is imported.

Nova refuses native-thread mode once eventlet is loaded, and oslo.privsep
loads eventlet when it can; so the mode is chosen here, first: native
threads, nova-compute's own default since Nova 34
(OS_NOVA_DISABLE_EVENTLET_PATCHING=0 runs the suite on eventlet instead).
"""

import os

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

import nova.tests.functional  # noqa: E402,F401  (runs monkey_patch.patch())
