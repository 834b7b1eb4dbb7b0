"""Unit tests: no root, no containers.

Nova's concurrency mode is chosen once per process, before anything imports
eventlet (oslo.privsep does, if it can), so this package settles it first:
native threads, nova-compute's own default since Nova 34.
"""

import os

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401  (monkey_patch.patch(), objects)
# autopep8: on
