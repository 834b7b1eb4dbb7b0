#!/bin/bash
# The demo on a fresh Debian 12 or 13 host, as root: prepare the host and
# the venv, then boot a server through Nova's REST API on this driver, show
# `ps` and `free -m` from inside it, and delete it. Arguments go to
#   python -m nova_lxd_py.tests.e2e.demo
set -euo pipefail

# shellcheck source=tools/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$REPO/tools/setup-host.sh"
ensure_venv

export OS_NOVA_DISABLE_EVENTLET_PATCHING=1
cd "$REPO"
exec "$VENV/bin/python" -m nova_lxd_py.tests.e2e.demo "$@"
