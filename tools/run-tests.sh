#!/bin/bash
# Run the test suite in the project's venv, creating or updating it first.
#
#   tools/run-tests.sh                      every test under nova_lxd_py/tests
#   tools/run-tests.sh -k shim -x           extra arguments go to pytest
#   tools/run-tests.sh nova_lxd_py/tests/unit
#
# Functional and e2e tests start real containers: as root, the host is
# prepared first by tools/setup-host.sh (idempotent, a few seconds when
# done already; NOVA_LXD_PY_SKIP_HOST_SETUP=1 skips it). See tools/lib.sh
# for NOVA_LXD_PY_VENV, NOVA_LXD_PY_PYTHON and NOVA_LXD_PY_INSTALL.
set -euo pipefail

# shellcheck source=tools/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "$(id -u)" -eq 0 ] && [ "${NOVA_LXD_PY_SKIP_HOST_SETUP:-0}" != 1 ]; then
    "$REPO/tools/setup-host.sh"
fi
ensure_venv

# Native threads, as nova-compute itself runs since Nova 34.
export OS_NOVA_DISABLE_EVENTLET_PATCHING=1
# Lets test_shim_load check that it tests the install made here.
export NOVA_LXD_PY_EXPECT_INSTALL=$INSTALL

cd "$REPO"
rc=0
"$VENV/bin/python" -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-tests.sh: pytest collected no tests; that is a failure" >&2
fi
exit "$rc"
