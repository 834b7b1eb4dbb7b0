# shellcheck shell=bash
# Sourced by tools/run-tests.sh and tools/demo.sh: the project's virtualenv.
#
#   NOVA_LXD_PY_VENV     where it lives (default: .venv in the repository)
#   NOVA_LXD_PY_PYTHON   interpreter that creates it (default: python3)
#   NOVA_LXD_PY_INSTALL  how this project goes in: "wheel" (default, as in a
#                        deployment) or "editable" (pip install -e)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${NOVA_LXD_PY_VENV:-$REPO/.venv}
INSTALL=${NOVA_LXD_PY_INSTALL:-wheel}

vpip() {
    "$VENV/bin/python" -m pip --disable-pip-version-check "$@"
}

# Create the venv if missing; bring the requirements up to date, which is
# skipped while the requirement files are unchanged since the last run; then
# install this project itself, every time, so the venv runs this tree.
ensure_venv() {
    case $INSTALL in
        wheel) local target=("$REPO") ;;
        editable) local target=(-e "$REPO") ;;
        *) echo "NOVA_LXD_PY_INSTALL is wheel or editable, not '$INSTALL'" >&2
           return 1 ;;
    esac
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        "${NOVA_LXD_PY_PYTHON:-python3}" -m venv "$VENV"
        vpip install -q -U pip
    fi
    local stamp="$VENV/.nova-lxd-py-requirements" sums
    sums=$(cd "$REPO" && sha256sum requirements.txt test-requirements.txt \
        upper-constraints.txt)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sums" ]; then
        echo "==> installing requirements into $VENV (a few minutes the first time)"
        vpip install -q -c "$REPO/upper-constraints.txt" \
            -r "$REPO/requirements.txt" -r "$REPO/test-requirements.txt"
        printf '%s\n' "$sums" > "$stamp"
    fi
    echo "==> installing nova-lxd-py ($INSTALL) into $VENV"
    # setuptools builds in ./build and would ship files since removed from
    # the tree; --force-reinstall: same pbr version, new code.
    rm -rf "$REPO/build"
    vpip install -q --no-deps --force-reinstall "${target[@]}"
}
