"""End-to-end tests: the whole of Nova in one process, our driver, real
containers. Root only.

Nova's concurrency mode is chosen once per process, before anything imports
eventlet (oslo.privsep does, if it can), so this package settles it first.
Native threads are the default here, as they are for nova-compute itself
since Nova 34; set OS_NOVA_DISABLE_EVENTLET_PATCHING=0 to run on eventlet.
"""

import os

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.functional  # noqa: E402,F401  (monkey_patch.patch())
# autopep8: on
