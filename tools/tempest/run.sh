#!/bin/bash
# Tempest's compute API tests against the single-host cloud of
# tools/cloud/cloud.sh (which must be up).
#
# Usage: tools/tempest/run.sh [smoke|full|moves|config] [extra `tempest run` args]
#   smoke   the smoke-tagged tests of tempest.api.compute.{servers,images}
#           plus a few fast server lifecycle actions (a few minutes)
#   full    all of tempest.api.compute.{servers,images}
#   moves   on a multi-host cloud (cloud.sh up --computes N, N >= 2): every
#           resize, cold migration and evacuate test (positive and negative)
#           and the multi-node tests (min_compute_nodes = 2,
#           resize and cold_migration on, flavor_ref_alt a bigger flavor)
#   config  only install tempest and write tempest.conf (add `moves` after
#           it for the moves settings: run.sh config moves)
# Both runs exclude the regexes of tools/tempest/exclude.txt, each the test
# of a feature the driver does not have yet, with the issue that brings it.
#
# It installs tempest from PyPI into its own venv, makes a tempest workspace
# under the cloud's base dir, writes its tempest.conf from the running cloud
# (tools/tempest/tempest.conf.in), makes an alternate flavor and image when
# missing, and runs `tempest run --concurrency 1`. The results stay in the
# workspace: `stestr last` there, logs/tempest.log, results-MODE.{txt,subunit}.
#
# Environment:
#   NOVA_LXD_PY_CLOUD_DIR        the cloud's base dir (/var/tmp/nova-lxd-py-cloud)
#   NOVA_LXD_PY_TEMPEST_VENV     tempest's venv (BASE/tempest-venv)
#   NOVA_LXD_PY_TEMPEST_DIR      the workspace (BASE/tempest)
#   NOVA_LXD_PY_TEMPEST_PIP      what pip installs (tempest)
#   NOVA_LXD_PY_TEMPEST_PYTHON   Python for the venv (python3)
#   NOVA_LXD_PY_TEMPEST_CONCURRENCY  test workers (1)
#   NOVA_LXD_PY_TEMPEST_DEBUG    true: debug logging in tempest.log
#   OS_CLIENT_CONFIG_FILE        clouds.yaml (BASE/etc/clouds.yaml, else
#                                /etc/openstack/clouds.yaml); cloud nova-lxd-py
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BASE=${NOVA_LXD_PY_CLOUD_DIR:-/var/tmp/nova-lxd-py-cloud}
TVENV=${NOVA_LXD_PY_TEMPEST_VENV:-$BASE/tempest-venv}
WORKSPACE=${NOVA_LXD_PY_TEMPEST_DIR:-$BASE/tempest}
PIP_SPEC=${NOVA_LXD_PY_TEMPEST_PIP:-tempest}
PYTHON=${NOVA_LXD_PY_TEMPEST_PYTHON:-python3}
CONCURRENCY=${NOVA_LXD_PY_TEMPEST_CONCURRENCY:-1}
DEBUG=${NOVA_LXD_PY_TEMPEST_DEBUG:-false}
CLOUD=nova-lxd-py
if [ -z "${OS_CLIENT_CONFIG_FILE:-}" ]; then
    if [ -r "$BASE/etc/clouds.yaml" ]; then
        OS_CLIENT_CONFIG_FILE=$BASE/etc/clouds.yaml
    else
        OS_CLIENT_CONFIG_FILE=/etc/openstack/clouds.yaml
    fi
fi
export OS_CLIENT_CONFIG_FILE
# The cloud's own client (cloud.sh installs it) makes the flavor and image.
OSC_BIN=${NOVA_LXD_PY_TEMPEST_OSC:-$BASE/venv/bin/openstack}
# What cloud.sh creates; the alternates are made here.
FLAVOR=container.tiny
FLAVOR_ALT=container.tiny-alt
# What a move resizes to (cloud.sh makes it on a multi-host cloud).
FLAVOR_BIGGER=container.small
IMAGE=busybox-guest
IMAGE_ALT=busybox-guest-alt
CONTAINER_TRAIT=CUSTOM_SYSTEM_CONTAINER_HOST

COMPUTE='^tempest\.api\.compute\.(servers|images)\.'
# Smoke: the smoke-tagged tests, and one class of server actions that only
# needs what the driver has (hard reboot, stop/start, pause, suspend, rebuild,
# console log, lock), and the storage actions of #5 (snapshot to an image,
# shelve, rescue).
SMOKE_REGEX="$COMPUTE.*\\[.*\\bsmoke\\b"
SMOKE_REGEX="($SMOKE_REGEX|^tempest\\.api\\.compute\\.servers\\.test_server_actions\\.ServerActionsTestJSON\\.test_(reboot_server_hard|stop_start_server|pause_unpause_server|suspend_resume_server|rebuild_server|get_console_output|lock_unlock_server)\\b)"
SMOKE_REGEX="($SMOKE_REGEX|^tempest\\.api\\.compute\\.images\\.test_images_oneserver\\.ImagesOneServerTestJSON\\.test_create_delete_image\\b|^tempest\\.api\\.compute\\.servers\\.test_server_actions\\.ServerActionsTestOtherB\\.test_shelve_(unshelve|paused)_server\\b|^tempest\\.api\\.compute\\.servers\\.test_server_rescue\\.ServerRescueTestJSON\\.test_rescue_unrescue_instance\\b)"
FULL_REGEX=$COMPUTE
# Moves: the migration and multi-node admin tests, the resize actions, and
# any evacuation test (tempest 47 has none in tempest.api; cloud.sh smoke
# evacuates instead).
MOVES_REGEX='^tempest\.api\.compute\.admin\.(test_migrations|test_servers_on_multinodes)\.'
# ... and every other resize, cold migration and evacuate test of
# tempest.api.compute (those of volumes and live migration are other issues'):
# positive, negative, a stopped server's, deleting one waiting in
# VERIFY_RESIZE, both disk configs.
MOVES_REGEX="($MOVES_REGEX|^tempest\.api\.compute\..*\.test_(resize|migrate)_[a-z_]*(server|flavor|state|ram|vcpus)[a-z_]*\b|^tempest\.api\.compute\..*\.test_delete_server_while_in_verify_resize_state\b|^tempest\.api\.compute\..*[Ee]vacuat)"

die() { echo "tempest/run.sh: $*" >&2; exit 1; }
osc() { "$OSC_BIN" --os-cloud "$CLOUD" "$@"; }

install_tempest() {
    local stamp
    stamp=$({ echo "$PIP_SPEC"; cat "$REPO/upper-constraints.txt"; } | sha1sum | cut -d' ' -f1)
    [ -x "$TVENV/bin/python" ] || "$PYTHON" -m venv "$TVENV"
    if [ "$(cat "$TVENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "== pip install $PIP_SPEC into $TVENV"
        "$TVENV/bin/pip" install -q --upgrade pip
        # shellcheck disable=SC2086
        "$TVENV/bin/pip" install -q -c "$REPO/upper-constraints.txt" $PIP_SPEC
        echo "$stamp" >"$TVENV/.stamp"
    fi
    echo "   $("$TVENV/bin/tempest" --version 2>&1)"
}

# cloud_auth: the auth section of our cloud in clouds.yaml, as NAME=VALUE lines.
cloud_auth() {
    "$TVENV/bin/python" - "$OS_CLIENT_CONFIG_FILE" "$CLOUD" <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    cloud = yaml.safe_load(f)["clouds"][sys.argv[2]]
a = cloud["auth"]
domain = a.get("user_domain_name", "Default")
for k, v in (("AUTH_URL", a["auth_url"]), ("ADMIN_USER", a["username"]),
             ("ADMIN_PASSWORD", a["password"]),
             ("ADMIN_PROJECT", a["project_name"]),
             ("ADMIN_DOMAIN", domain), ("ADMIN_USER_DOMAIN", domain),
             ("ADMIN_PROJECT_DOMAIN", a.get("project_domain_name", domain)),
             ("REGION", cloud.get("region_name", "RegionOne"))):
    print("%s=%s" % (k, v))
PY
}

ensure_flavor_alt() {
    osc flavor show -f value -c id "$FLAVOR_ALT" 2>/dev/null && return 0
    # Same size class as the cloud's flavor, another id: list filters and
    # rebuild tests only need two distinct flavors the host can place.
    osc flavor create -f value -c id --vcpus 1 --ram 320 --disk 1 --public \
        --property "trait:$CONTAINER_TRAIT=required" "$FLAVOR_ALT"
}

ensure_flavor_bigger() {
    osc flavor show -f value -c id "$FLAVOR_BIGGER" 2>/dev/null && return 0
    # A resize must grow the root disk: a flavor a size up.
    osc flavor create -f value -c id --vcpus 1 --ram 320 --disk 2 --public \
        --property "trait:$CONTAINER_TRAIT=required" "$FLAVOR_BIGGER"
}

ensure_image_alt() {
    local tmp
    osc image show -f value -c id "$IMAGE_ALT" 2>/dev/null && return 0
    # A second copy of the guest: rebuild tests move a server to image_ref_alt.
    tmp=$(mktemp)
    osc image save --file "$tmp" "$IMAGE" >/dev/null
    osc image create -f value -c id --disk-format raw --container-format bare \
        --public --property img_hv_type=lxc --property hw_vm_mode=exe \
        --file "$tmp" "$IMAGE_ALT"
    rm -f "$tmp"
}

write_config() {  # write_config MODE
    local mode=$1 auth image image_alt flavor flavor_alt neutron=false shared
    local min_computes=1 moves=false computes filters="# (Tempest's default)"
    [ -x "$OSC_BIN" ] || die "no $OSC_BIN: is the cloud installed (tools/cloud/cloud.sh up)?"
    auth=$(cloud_auth) || die "no cloud '$CLOUD' in $OS_CLIENT_CONFIG_FILE: run tools/cloud/cloud.sh up"
    local AUTH_URL ADMIN_USER ADMIN_PASSWORD ADMIN_PROJECT ADMIN_DOMAIN \
        ADMIN_USER_DOMAIN ADMIN_PROJECT_DOMAIN REGION
    eval "$(printf '%s\n' "$auth" | sed "s/=\(.*\)/='\1'/")"
    curl -s -o /dev/null --max-time 5 "$AUTH_URL" ||
        die "Keystone does not answer at $AUTH_URL: run tools/cloud/cloud.sh up"
    image=$(osc image show -f value -c id "$IMAGE") || die "no image $IMAGE"
    flavor=$(osc flavor show -f value -c id "$FLAVOR") || die "no flavor $FLAVOR"
    image_alt=$(ensure_image_alt) || die "could not make image $IMAGE_ALT"
    flavor_alt=$(ensure_flavor_alt) || die "could not make flavor $FLAVOR_ALT"
    if [ "$mode" = moves ]; then
        computes=$(cat "$BASE/run/computes" 2>/dev/null || echo 1)
        [ "$computes" -ge 2 ] ||
            die "moves needs a multi-host cloud: tools/cloud/cloud.sh up --computes 2"
        min_computes=2
        moves=true
        # Nova's defaults and the host hints the multi-host cloud enables.
        filters="scheduler_enabled_filters = ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter,SameHostFilter,DifferentHostFilter"
        flavor_alt=$(ensure_flavor_bigger) || die "could not make flavor $FLAVOR_BIGGER"
    fi
    if osc network list -f value -c ID >/dev/null 2>&1; then
        neutron=true
        # Below microversion 2.37 a server without `networks` gets a port
        # on every network its project sees, shared ones included.
        shared=$(osc network list --share -f value -c Name)
        [ -z "$shared" ] || echo "WARNING: shared networks ($shared) put ports on test servers" >&2
    fi
    if [ ! -d "$WORKSPACE/etc" ]; then
        rm -rf "$WORKSPACE"
        (cd "$BASE" && "$TVENV/bin/tempest" init \
            --workspace-path "$BASE/tempest-workspace.yaml" "$WORKSPACE" >/dev/null)
    fi
    sed -e "s|@WORKSPACE@|$WORKSPACE|g" -e "s|@DEBUG@|$DEBUG|g" \
        -e "s|@AUTH_URL@|$AUTH_URL|g" -e "s|@REGION@|$REGION|g" \
        -e "s|@ADMIN_USER@|$ADMIN_USER|g" -e "s|@ADMIN_PASSWORD@|$ADMIN_PASSWORD|g" \
        -e "s|@ADMIN_PROJECT@|$ADMIN_PROJECT|g" -e "s|@ADMIN_DOMAIN@|$ADMIN_DOMAIN|g" \
        -e "s|@ADMIN_USER_DOMAIN@|$ADMIN_USER_DOMAIN|g" \
        -e "s|@ADMIN_PROJECT_DOMAIN@|$ADMIN_PROJECT_DOMAIN|g" \
        -e "s|@IMAGE_REF@|$image|g" -e "s|@IMAGE_REF_ALT@|$image_alt|g" \
        -e "s|@FLAVOR_REF@|$flavor|g" -e "s|@FLAVOR_REF_ALT@|$flavor_alt|g" \
        -e "s|@BUILD_TIMEOUT@|${NOVA_LXD_PY_TEMPEST_BUILD_TIMEOUT:-180}|g" \
        -e "s|@NEUTRON@|$neutron|g" -e "s|@MIN_COMPUTE_NODES@|$min_computes|g" \
        -e "s|@MOVES@|$moves|g" -e "s|@SCHEDULER_FILTERS@|$filters|g" \
        "$HERE/tempest.conf.in" >"$WORKSPACE/etc/tempest.conf.tmp"
    chmod 600 "$WORKSPACE/etc/tempest.conf.tmp"
    mv "$WORKSPACE/etc/tempest.conf.tmp" "$WORKSPACE/etc/tempest.conf"
    echo "   $WORKSPACE/etc/tempest.conf: image $image/$image_alt," \
        "flavor $flavor/$flavor_alt, neutron $neutron, min_compute_nodes $min_computes"
}

run_tempest() {
    local mode=$1 regex rc t0 log
    shift
    case $mode in
        smoke) regex=$SMOKE_REGEX ;;
        full) regex=$FULL_REGEX ;;
        moves) regex=$MOVES_REGEX ;;
    esac
    log=$WORKSPACE/results-$mode.txt
    echo "== tempest run ($mode) --concurrency $CONCURRENCY; output in $log"
    t0=$SECONDS
    cd "$WORKSPACE"
    set +e
    "$TVENV/bin/tempest" run --regex "$regex" --exclude-list "$HERE/exclude.txt" \
        --concurrency "$CONCURRENCY" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    "$TVENV/bin/stestr" last --subunit >"$WORKSPACE/results-$mode.subunit" 2>/dev/null || true
    echo "== $mode: exit $rc after $((SECONDS - t0))s" | tee -a "$log"
    return "$rc"
}

mode=${1:-smoke}
[ $# -gt 0 ] && shift
conf_mode=$mode
case $mode in
    smoke|full|moves) ;;
    config) if [ "${1:-}" = moves ]; then conf_mode=moves; shift; fi ;;
    *) die "usage: $0 [smoke|full|moves|config] [tempest run args]" ;;
esac
echo "== tempest venv"
install_tempest
echo "== tempest.conf from the cloud"
write_config "$conf_mode"
[ "$mode" = config ] && exit 0
run_tempest "$mode" "$@"
