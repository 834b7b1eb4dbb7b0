#!/bin/bash
# A single-host OpenStack cloud whose compute driver is nova-lxd-py.
#
# Keystone, Glance (file store), Placement, Nova (API, metadata API,
# conductor, scheduler, serial console proxy, compute with
# lxc_py.LXCDriver) and Neutron (ML2 with the Open vSwitch mechanism driver
# on OVS's userspace datapath, a DHCP agent serving metadata, and the
# metadata agent), with MariaDB and RabbitMQ,
# all real processes on 127.0.0.1, started by hand (no systemd). Every file
# lives under one base dir; nothing outside it changes but Debian packages,
# network namespaces (the switch's, and qdhcp-* of the networks) and the
# `nova-lxd-py` entry of
# /etc/openstack/clouds.yaml.
#
# Usage (as root, on Debian 12 or 13):
#   tools/cloud/cloud.sh install       apt packages + a venv from PyPI (up runs it)
#   tools/cloud/cloud.sh up            start the cloud, boot and show server 'demo'
#   tools/cloud/cloud.sh up --computes N   ... with N compute hosts (N >= 2: each
#                                      in network and mount namespaces of its own,
#                                      on a lab network; see hosts.sh, README.md)
#   tools/cloud/cloud.sh smoke         server lifecycle test through the real APIs
#   tools/cloud/cloud.sh status        which services run
#   tools/cloud/cloud.sh compute kill|start HOST   a compute host's nova-compute
#                                      dies (containers stopped) / starts again
#   tools/cloud/cloud.sh down [--wipe] stop everything (also: stop); --wipe also
#                                      deletes the state (databases, images,
#                                      logs) and the clouds.yaml entry, not the venv
# Environment:
#   NOVA_LXD_PY_CLOUD_DIR   base dir (default /var/tmp/nova-lxd-py-cloud)
#   NOVA_LXD_PY_CLOUD_PYTHON  Python for the venv (default /usr/bin/python3)
#   NOVA_LXD_PY_CLOUD_DEBUG   true: debug logging in every service
#   NOVA_LXD_PY_CLOUD_DEMO    0: up boots no demo server
set -eEuo pipefail
# Whatever fails without its own message still says where.
trap 'echo "FAILED [${CURRENT_PHASE:-?}] line $LINENO: $BASH_COMMAND (logs: $LOGS)" >&2' ERR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BASE=${NOVA_LXD_PY_CLOUD_DIR:-/var/tmp/nova-lxd-py-cloud}
# Debian's own Python by default: a venv on root's pyenv would be closed to
# the other users of the host, whom clouds.yaml names the cloud for.
if [ -x /usr/bin/python3 ]; then DEFAULT_PYTHON=/usr/bin/python3; else DEFAULT_PYTHON=python3; fi
PYTHON=${NOVA_LXD_PY_CLOUD_PYTHON:-$DEFAULT_PYTHON}
DEBUG=${NOVA_LXD_PY_CLOUD_DEBUG:-false}
VENV=$BASE/venv
ETC=$BASE/etc
LOGS=$BASE/logs
RUN=$BASE/run
DATA=$BASE/data
OVS_RUN=$BASE/ovs
CLOUD=nova-lxd-py
HOST_NAME=nova-lxd-py-host
NETNS=nova-lxd-py-ovs
SYSTEM_CLOUDS_YAML=/etc/openstack/clouds.yaml
KEYSTONE_URL=http://127.0.0.1:5000/v3
MYSQL_PORT=3306
RABBIT_PORT=5672
RABBIT_DIST_PORT=25672
FLAVOR=container.tiny
# A multi-host cloud's resize target (also Tempest's flavor_ref_alt there).
FLAVOR_BIGGER=container.small
IMAGE=busybox-guest
# The servers' network (VXLAN, DHCP): its range overlaps nothing on the
# host (RFC 2544's 198.18.0.0/15; the functional tests' guests use
# 198.18.N.0/24 inside their own bridges).
NETWORK=nova-lxd-py-net
SUBNET_RANGE=198.19.10.0/24
CONTAINER_TRAIT=CUSTOM_SYSTEM_CONTAINER_HOST
CONTAINER_PATH=$DATA/nova/instances/containers

# What install puts in the venv; a change re-runs the pip step.
PIP_PACKAGES="keystone glance openstack-placement nova neutron
    python-openstackclient osc-placement gunicorn PyMySQL setuptools>=70.1"
# setuptools>=70.1 builds wheels by itself: the driver is reinstalled on
# every up without build isolation (seconds instead of tens of seconds).
APT_PACKAGES="rabbitmq-server mariadb-server openvswitch-switch socat
    dnsmasq-base haproxy iptables ethtool iputils-ping
    curl iproute2 procps lxc lxc-dev lxcfs uidmap busybox-static gcc
    pkg-config python3-dev python3-venv openssh-server openssh-client rsync
    e2fsprogs util-linux"

# Stopped in this order; the relays only once the OVS agent is gone (it hangs
# in its graceful stop without RabbitMQ), RabbitMQ and MariaDB last.
SERVICES="nova-compute nova-serialproxy nova-scheduler nova-conductor
    nova-metadata nova-api neutron-metadata-agent neutron-dhcp-agent
    neutron-ovs-agent neutron-rpc-server neutron-api glance placement keystone"
RELAYS="rabbit-relay-netns rabbit-relay-host"
# How many compute hosts: `up --computes N` records it for the other
# commands (1: the single host of the root namespaces).
COMPUTES=$(cat "$RUN/computes" 2>/dev/null || echo 1)
# shellcheck source=tools/cloud/hosts.sh
. "$HERE/hosts.sh"
multi() { [ "$COMPUTES" -gt 1 ]; }

# ------------------------------------------------------------------ helpers

now() { local t=$EPOCHREALTIME; echo "${t/./}"; }   # microseconds

# phase NAME FUNCTION: run it, print and record how long it took.
phase() {
    local name=$1 t0 dt
    shift
    CURRENT_PHASE=$name
    t0=$(now)
    echo "== $name"
    "$@"
    dt=$(( $(now) - t0 ))
    printf '%-28s %4d.%01ds\n' "$name" $((dt / 1000000)) $((dt % 1000000 / 100000)) \
        | tee -a "$TIMINGS"
}

# fail SERVICE LOG MESSAGE: say what failed, where to read why, and stop.
fail() {
    local service=$1 log=$2
    shift 2
    echo "FAILED [${CURRENT_PHASE:-?}] $service: $*" >&2
    if [ -n "$log" ]; then
        echo "  read $log; its last lines:" >&2
        tail -n 25 "$log" 2>/dev/null | sed 's/^/  | /' >&2 || true
    fi
    exit 1
}

# run SERVICE LOG COMMAND...: run quietly into LOG, fail loudly.
run() {
    local service=$1 log=$2
    shift 2
    echo "+ $*" >>"$log"
    "$@" >>"$log" 2>&1 || fail "$service" "$log" "'$*' exited $?"
}

alive() {  # alive NAME: its pid file names a live process
    local pid
    [ -f "$RUN/$1.pid" ] && pid=$(cat "$RUN/$1.pid") && [ -n "$pid" ] &&
        kill -0 "$pid" 2>/dev/null
}

# start NAME COMMAND...: a daemon in its own session, pid in RUN/NAME.pid.
start() {
    local name=$1
    shift
    alive "$name" && return 0
    setsid "$@" >>"$LOGS/$name.out" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

# wait_for SERVICE LOG SECONDS COMMAND...: poll until COMMAND succeeds;
# give up early when the service's process has died.
wait_for() {
    local service=$1 log=$2 seconds=$3 deadline
    shift 3
    deadline=$(( $(now) + seconds * 1000000 ))
    until "$@" >/dev/null 2>&1; do
        if [ -f "$RUN/$service.pid" ] && ! alive "$service"; then
            fail "$service" "$log" "the process exited during start-up"
        fi
        [ "$(now)" -lt "$deadline" ] ||
            fail "$service" "$log" "not ready after ${seconds}s"
        sleep 0.3
    done
}

http_ok() { curl -s -o /dev/null --max-time 5 "$1"; }

port_free() {  # port_free PORT SERVICE: nobody else listens there
    if ss -Htln "sport = :$1" | grep -q .; then
        fail "$2" "" "port $1 is taken by another process (ss -tlnp 'sport = :$1')"
    fi
}

mysql_cli() { mariadb --defaults-file="$ETC/mysql/my.cnf" -uroot "$@"; }

# db_has SQL: the query returns a row. Readiness and existence checks read
# the databases: an `openstack` command costs seconds.
db_has() { [ -n "$(mysql_cli -N -e "$1")" ]; }

secret() {  # secret NAME: a random password kept in ETC/secrets
    local file=$ETC/secrets/$1
    if [ ! -s "$file" ]; then
        mkdir -p "$ETC/secrets"
        chmod 700 "$ETC/secrets"
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$file")
    fi
    cat "$file"
}

render() {  # render TEMPLATE DEST
    sed -e "s|@BASE@|$BASE|g" -e "s|@ETC@|$ETC|g" -e "s|@LOGS@|$LOGS|g" \
        -e "s|@RUN@|$RUN|g" -e "s|@DATA@|$DATA|g" -e "s|@VENV@|$VENV|g" \
        -e "s|@OVS_RUN@|$OVS_RUN|g" -e "s|@HOST@|$HOST_NAME|g" \
        -e "s|@NETNS@|$NETNS|g" -e "s|@HOST_STATE@|$HOST_STATE|g" \
        -e "s|@LAB_IP@|${LAB_IP:-}|g" -e "s|@HOST_CONF@|${HOST_CONF:-}|g" \
        -e "s|@LOCAL_IP@|${LOCAL_IP:-127.0.0.1}|g" \
        -e "s|@AGENT_LOG@|${AGENT_LOG:-neutron-ovs-agent}|g" \
        -e "s|@DEBUG@|$DEBUG|g" -e "s|@KEYSTONE@|$KEYSTONE_URL|g" \
        -e "s|@MYSQL_PORT@|$MYSQL_PORT|g" -e "s|@RABBIT_PORT@|$RABBIT_PORT|g" \
        -e "s|@DB@|mysql+pymysql://cloud:$(secret db)@127.0.0.1:$MYSQL_PORT|g" \
        -e "s|@RABBIT@|rabbit://guest:guest@127.0.0.1:$RABBIT_PORT/|g" \
        -e "s|@SERVICE_PASSWORD@|$(secret service)|g" \
        -e "s|@METADATA_SECRET@|$(secret metadata)|g" \
        "$HERE/etc/$1" >"$2.tmp"
    chmod 600 "$2.tmp"
    mv "$2.tmp" "$2"
}

osc() {
    OS_CLIENT_CONFIG_FILE=$ETC/clouds.yaml "$VENV/bin/openstack" --os-cloud "$CLOUD" "$@"
}

# done_once NAME: true when step NAME already ran with this venv; the
# stamps live with the databases, so a wipe forgets them.
done_once() { [ "$(cat "$DATA/.done-$1" 2>/dev/null)" = "$(venv_stamp)" ]; }
mark_done() { venv_stamp >"$DATA/.done-$1"; }

need_root() {
    [ "$(id -u)" = 0 ] || { echo "cloud.sh must run as root" >&2; exit 1; }
}

print_timings() {
    echo "---- timings (also in $TIMINGS)"
    cat "$TIMINGS"
}

# ------------------------------------------------------------------ install

apt_install() {
    local missing="" pkg policy_guard=""
    for pkg in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' ||
            missing="$missing $pkg"
    done
    [ -z "$missing" ] && { echo "   apt: all installed"; return 0; }
    echo "   apt:$missing"
    # The services are started by cloud.sh, never by the packages' init
    # scripts: forbid those starts during the install.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_guard=1
    fi
    run apt "$LOGS/install-apt.log" apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive run apt "$LOGS/install-apt.log" \
        apt-get install -y -q --no-install-recommends $missing
    [ -n "$policy_guard" ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

host_setup() {
    # tools/setup-host.sh prepares liblxc, lxcfs and the subordinate ids.
    if [ -x "$REPO/tools/setup-host.sh" ]; then
        run setup-host "$LOGS/install-host.log" "$REPO/tools/setup-host.sh"
    fi
}

venv_stamp() {
    { echo "$PIP_PACKAGES"; cat "$REPO/upper-constraints.txt" \
          "$REPO/requirements.txt"; } | sha1sum | cut -d' ' -f1
}

pip_install() {
    local log=$LOGS/install-pip.log stamp
    local python
    stamp=$(venv_stamp)
    python=$(command -v "$PYTHON") || fail pip "" "no Python at $PYTHON"
    # A venv made by another interpreter is made anew.
    if [ "$(cat "$VENV/.cloud-python" 2>/dev/null)" != "$python" ]; then
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        run pip "$log" "$python" -m venv "$VENV"
        echo "$python" >"$VENV/.cloud-python"
    fi
    if [ "$(cat "$VENV/.cloud-stamp" 2>/dev/null)" != "$stamp" ]; then
        run pip "$log" "$VENV/bin/pip" install -q --upgrade pip
        # shellcheck disable=SC2086
        run pip "$log" "$VENV/bin/pip" install -q \
            -c "$REPO/upper-constraints.txt" $PIP_PACKAGES "$REPO"
        echo "$stamp" >"$VENV/.cloud-stamp"
    fi
    # Always this checkout's driver, even in a venv another checkout made.
    # setuptools builds in ./build, which may hold files since removed.
    rm -rf "$REPO/build"
    run pip "$log" "$VENV/bin/pip" install -q --no-deps --force-reinstall \
        --no-build-isolation "$REPO"
    "$VENV/bin/python" -c 'import nova.virt.lxc_py, lxc' >>"$log" 2>&1 ||
        fail pip "$log" "the driver does not import as nova.virt.lxc_py"
}

cmd_install() {
    need_root
    mkdir -p "$LOGS"
    TIMINGS=$LOGS/timings-install.txt
    : >"$TIMINGS"
    phase apt apt_install
    phase host-setup host_setup
    phase venv pip_install
    echo "venv: $VENV ($(du -sh "$VENV" | cut -f1))"
}

# ------------------------------------------------------------------ up

make_dirs() {
    mkdir -p "$ETC"/{keystone,placement,glance,nova,neutron,mysql,rabbitmq} \
        "$LOGS" "$RUN" "$OVS_RUN" "$DATA"/glance/{images,staging,tasks} \
        "$DATA"/nova/{locks,instances} "$DATA"/neutron/locks "$DATA/rabbitmq"
    # Unprivileged guests' root (a subordinate uid) must reach the image
    # cache and its container's directory.
    chmod 755 "$BASE" "$DATA" "$DATA/nova" "$DATA/nova/instances"
}

write_configs() {
    render my.cnf "$ETC/mysql/my.cnf"
    chmod 644 "$ETC/mysql/my.cnf"
    render rabbitmq.conf "$ETC/rabbitmq/rabbitmq.conf"
    # RabbitMQ 4 (Debian 13) deprecates the transient queues oslo.messaging
    # declares for RPC replies; 3.x (Debian 12) rejects the key as unknown.
    if dpkg --compare-versions "$(dpkg-query -W -f='${Version}' rabbitmq-server)" ge 4; then
        echo 'deprecated_features.permit.transient_nonexcl_queues = true' \
            >>"$ETC/rabbitmq/rabbitmq.conf"
    fi
    echo '[].' >"$ETC/rabbitmq/enabled_plugins"
    : >"$ETC/rabbitmq/rabbitmq-env.conf"
    render keystone.conf "$ETC/keystone/keystone.conf"
    render placement.conf "$ETC/placement/placement.conf"
    render glance-api.conf "$ETC/glance/glance-api.conf"
    cp "$VENV/etc/glance/glance-api-paste.ini" "$ETC/glance/"
    render nova.conf "$ETC/nova/nova.conf"
    if multi; then
        # With several hosts, the hints that place servers side by side or
        # apart (Tempest's multi-node tests use them).
        printf '\n[filter_scheduler]\nenabled_filters = %s\n' "$MULTI_FILTERS" \
            >>"$ETC/nova/nova.conf"
    fi
    cp "$VENV/etc/nova/api-paste.ini" "$ETC/nova/"
    printf '[DEFAULT]\nlog_file = %s/nova-api.log\n' "$LOGS" >"$ETC/nova/nova-api-log.conf"
    printf '[DEFAULT]\nlog_file = %s/nova-metadata.log\n' "$LOGS" \
        >"$ETC/nova/nova-metadata-log.conf"
    if multi; then
        # The network node's agents (DHCP, metadata, OVS with a lab address
        # for the tunnels) are a host of their own beside the computes.
        HOST_NAME=$NETWORK_HOST render neutron.conf "$ETC/neutron/neutron.conf"
        LOCAL_IP=$NETWORK_LAB_IP render openvswitch_agent.ini \
            "$ETC/neutron/openvswitch_agent.ini"
        write_host_configs
    else
        render neutron.conf "$ETC/neutron/neutron.conf"
        render openvswitch_agent.ini "$ETC/neutron/openvswitch_agent.ini"
    fi
    render ml2_conf.ini "$ETC/neutron/ml2_conf.ini"
    render dhcp_agent.ini "$ETC/neutron/dhcp_agent.ini"
    render metadata_agent.ini "$ETC/neutron/metadata_agent.ini"
    cp "$VENV/etc/neutron/api-paste.ini" "$ETC/neutron/"
    printf '[DEFAULT]\nlog_file = %s/neutron-api.log\n' "$LOGS" >"$ETC/neutron/neutron-api-log.conf"
    "$VENV/bin/python" "$HERE/clouds_yaml.py" add "$ETC/clouds.yaml" "$CLOUD" \
        "$KEYSTONE_URL" "$(secret admin)"
    chmod 600 "$ETC/clouds.yaml"
}

# A RabbitMQ node of our own: state, logs and Erlang cookie under BASE; the
# host's /etc/rabbitmq/rabbitmq-env.conf is not read.
RABBIT_ENV=(env HOME="$DATA/rabbitmq" RABBITMQ_CONF_ENV_FILE="$ETC/rabbitmq/rabbitmq-env.conf"
    RABBITMQ_NODENAME=nova-lxd-py@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT="$RABBIT_PORT" RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
    RABBITMQ_MNESIA_BASE="$DATA/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$LOGS/rabbitmq"
    RABBITMQ_PID_FILE="$RUN/rabbitmq-node.pid"
    RABBITMQ_CONFIG_FILE="$ETC/rabbitmq/rabbitmq.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$ETC/rabbitmq/enabled_plugins"
    ERL_EPMD_ADDRESS=127.0.0.1 ERL_CRASH_DUMP="$LOGS/rabbitmq/erl_crash.dump")
RABBIT_BIN=/usr/lib/rabbitmq/bin   # the scripts behind /usr/sbin's su wrappers

# Without its state dir (wiped) no node of ours runs, and the Erlang VM
# would only crash making its cookie there.
rabbit_running() {
    [ -d "$DATA/rabbitmq" ] &&
        "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmq-diagnostics" -q check_running
}

start_rabbitmq() {
    rabbit_running >/dev/null 2>&1 && return 0
    port_free "$RABBIT_PORT" rabbitmq
    start rabbitmq "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmq-server"
    wait_for rabbitmq "$LOGS/rabbitmq.out" 120 rabbit_running
}

start_mariadb() {
    local log=$LOGS/mariadb.log
    if ! mariadb-admin --defaults-file="$ETC/mysql/my.cnf" ping >/dev/null 2>&1; then
        port_free "$MYSQL_PORT" mariadb
        # mariadbd runs as user mysql: give it its data, socket and log.
        mkdir -p "$DATA/mysql" "$RUN/mysql"
        touch "$log"
        chown mysql:mysql "$DATA/mysql" "$RUN/mysql" "$log"
        if [ ! -d "$DATA/mysql/mysql" ]; then
            run mariadb "$log" mariadb-install-db --defaults-file="$ETC/mysql/my.cnf" \
                --skip-test-db --auth-root-authentication-method=socket
        fi
        start mariadb mariadbd --defaults-file="$ETC/mysql/my.cnf"
        wait_for mariadb "$log" 60 mariadb-admin --defaults-file="$ETC/mysql/my.cnf" ping
    fi
    local db sql
    sql="CREATE USER IF NOT EXISTS 'cloud'@'127.0.0.1' IDENTIFIED BY '$(secret db)';"
    for db in keystone glance placement nova_api nova_cell0 nova_cell1 neutron; do
        sql="$sql CREATE DATABASE IF NOT EXISTS $db;"
        sql="$sql GRANT ALL PRIVILEGES ON $db.* TO 'cloud'@'127.0.0.1';"
    done
    mysql_cli -e "$sql" >>"$log" 2>&1 || fail mariadb "$log" "could not create the databases"
}

keystone_bootstrap() {
    done_once keystone && return 0
    local log=$LOGS/keystone-manage.log
    local km=("$VENV/bin/keystone-manage" --config-file "$ETC/keystone/keystone.conf")
    run keystone "$log" "${km[@]}" db_sync
    [ -d "$ETC/keystone/fernet-keys" ] ||
        run keystone "$log" "${km[@]}" fernet_setup --keystone-user root --keystone-group root
    [ -d "$ETC/keystone/credential-keys" ] ||
        run keystone "$log" "${km[@]}" credential_setup --keystone-user root --keystone-group root
    run keystone "$log" "${km[@]}" bootstrap --bootstrap-password "$(secret admin)" \
        --bootstrap-admin-url "$KEYSTONE_URL" --bootstrap-internal-url "$KEYSTONE_URL" \
        --bootstrap-public-url "$KEYSTONE_URL" --bootstrap-region-id RegionOne
    mark_done keystone
}

# Schemas of every service but keystone; runs beside keystone's start-up.
sync_databases() {
    done_once databases && return 0
    local nm=("$VENV/bin/nova-manage" --config-file "$ETC/nova/nova.conf")
    "$VENV/bin/placement-manage" --config-file "$ETC/placement/placement.conf" db sync
    "$VENV/bin/glance-manage" --config-file "$ETC/glance/glance-api.conf" db_sync
    "$VENV/bin/neutron-db-manage" --config-file "$ETC/neutron/neutron.conf" \
        --config-file "$ETC/neutron/ml2_conf.ini" upgrade heads
    "${nm[@]}" api_db sync
    "${nm[@]}" cell_v2 map_cell0 --database_connection \
        "mysql+pymysql://cloud:$(secret db)@127.0.0.1:$MYSQL_PORT/nova_cell0?charset=utf8mb4"
    "${nm[@]}" cell_v2 list_cells | grep -q ' cell1 ' ||
        "${nm[@]}" cell_v2 create_cell --name cell1
    "${nm[@]}" db sync
    mark_done databases
}

wait_databases() {
    wait "$SYNC_PID" || fail db-sync "$LOGS/db-sync.log" "a database migration failed"
}

start_api() {  # start_api NAME PORT APP [VAR=VALUE...]
    local name=$1 port=$2 app=$3
    shift 3
    alive "$name" && return 0
    port_free "$port" "$name"
    start "$name" env "$@" "$VENV/bin/gunicorn" --no-control-socket \
        --chdir "$HERE" --bind "127.0.0.1:$port" --workers 1 --threads 4 \
        --timeout 300 --graceful-timeout 5 --error-logfile "$LOGS/$name-gunicorn.log" \
        "cloud_wsgi:app(\"$app\")"
}

wait_api() {  # wait_api NAME PORT LOG
    wait_for "$1" "$3" 180 http_ok "http://127.0.0.1:$2/"
}

start_keystone() {
    start_api keystone 5000 keystone OS_KEYSTONE_CONFIG_DIR="$ETC/keystone"
    wait_api keystone 5000 "$LOGS/keystone.log"
}

seed_keystone() {
    done_once keystone-seed && return 0
    run keystone "$LOGS/keystone-seed.log" "$VENV/bin/python" \
        "$HERE/keystone_seed.py" "$ETC/clouds.yaml" "$(secret service)"
    mark_done keystone-seed
}

ovs() { "$@" --db="unix:$OVS_RUN/db.sock"; }

start_openvswitch() {
    export OVS_RUNDIR=$OVS_RUN OVS_LOGDIR=$LOGS OVS_DBDIR=$OVS_RUN
    ip netns list | grep -qw "$NETNS" || {
        ip netns add "$NETNS"
        ip -n "$NETNS" link set lo up
    }
    [ -f "$OVS_RUN/conf.db" ] ||
        run openvswitch "$LOGS/ovs-setup.log" ovsdb-tool create "$OVS_RUN/conf.db" \
            /usr/share/openvswitch/vswitch.ovsschema
    if ! alive ovsdb-server; then
        run ovsdb-server "$LOGS/ovs-setup.log" ovsdb-server "$OVS_RUN/conf.db" \
            --remote="punix:$OVS_RUN/db.sock" \
            --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
            --pidfile="$RUN/ovsdb-server.pid" --detach --log-file="$LOGS/ovsdb-server.log"
        run ovsdb-server "$LOGS/ovs-setup.log" ovs-vsctl --db="unix:$OVS_RUN/db.sock" --no-wait init
    fi
    # No openvswitch kernel module here: ovs-vswitchd forwards in userspace
    # (datapath_type netdev) inside its own netns, so the host's IP stack
    # never sees guest traffic.
    alive ovs-vswitchd ||
        run ovs-vswitchd "$LOGS/ovs-setup.log" ip netns exec "$NETNS" ovs-vswitchd \
            "unix:$OVS_RUN/db.sock" --pidfile="$RUN/ovs-vswitchd.pid" --detach \
            --log-file="$LOGS/ovs-vswitchd.log"
    # The OVS agent lives in that netns too; it reaches RabbitMQ on the
    # host's loopback through a relay over a unix socket.
    start rabbit-relay-host socat "UNIX-LISTEN:$RUN/rabbit-relay.sock,fork,unlink-early" \
        "TCP:127.0.0.1:$RABBIT_PORT"
    wait_for rabbit-relay-host "$LOGS/rabbit-relay-host.out" 10 test -S "$RUN/rabbit-relay.sock"
    start rabbit-relay-netns ip netns exec "$NETNS" socat \
        "TCP-LISTEN:$RABBIT_PORT,bind=127.0.0.1,reuseaddr,fork" \
        "UNIX-CONNECT:$RUN/rabbit-relay.sock"
}

# A digest of the installed driver: nova-compute restarts when it changed.
driver_digest() {
    local dir
    dir=$("$VENV/bin/python" -c 'import os, nova_lxd_py; print(os.path.dirname(nova_lxd_py.__file__))')
    find "$dir" -name '*.py' -type f -print0 | sort -z | xargs -0 cat | sha1sum | cut -d' ' -f1
}

restart_compute_if_changed() {
    local digest
    digest=$(driver_digest)
    if alive nova-compute && [ "$(cat "$RUN/nova-compute.driver" 2>/dev/null)" != "$digest" ]; then
        echo "   the driver changed: restarting nova-compute"
        stop_pids nova-compute
        stop_privsep_helpers "$ETC/nova/"
    fi
    echo "$digest" >"$RUN/nova-compute.driver"
}

start_services() {
    local nc=(--config-file "$ETC/neutron/neutron.conf" --config-file "$ETC/neutron/ml2_conf.ini")
    local s
    start_api placement 8778 placement OS_PLACEMENT_CONFIG_DIR="$ETC/placement"
    start_api glance 9292 glance OS_GLANCE_CONFIG_DIR="$ETC/glance"
    start_api neutron-api 9696 neutron OS_NEUTRON_CONFIG_DIR="$ETC/neutron" \
        OS_NEUTRON_CONFIG_FILES='neutron.conf;ml2_conf.ini;neutron-api-log.conf'
    start_api nova-api 8774 nova OS_NOVA_CONFIG_DIR="$ETC/nova" \
        OS_NOVA_CONFIG_FILES='api-paste.ini;nova.conf;nova-api-log.conf'
    start_api nova-metadata 8775 nova-metadata OS_NOVA_CONFIG_DIR="$ETC/nova" \
        OS_NOVA_CONFIG_FILES='api-paste.ini;nova.conf;nova-metadata-log.conf'
    start neutron-rpc-server env PATH="$VENV/bin:$PATH" "$VENV/bin/neutron-rpc-server" \
        "${nc[@]}" --log-file "$LOGS/neutron-rpc-server.log"
    start neutron-ovs-agent ip netns exec "$NETNS" env PATH="$VENV/bin:$PATH" \
        OVS_RUNDIR="$OVS_RUN" "$VENV/bin/neutron-openvswitch-agent" \
        --config-file "$ETC/neutron/neutron.conf" \
        --config-file "$ETC/neutron/openvswitch_agent.ini"
    # nsenter, not `ip netns exec`: the latter's private mount namespace
    # would keep the qdhcp-* namespaces the agent makes from the host.
    start neutron-dhcp-agent nsenter --net="/run/netns/$NETNS" env PATH="$VENV/bin:$PATH" \
        "$VENV/bin/neutron-dhcp-agent" --config-file "$ETC/neutron/neutron.conf" \
        --config-file "$ETC/neutron/dhcp_agent.ini"
    # In the host's netns: Nova's metadata API is on its loopback; the
    # haproxy in each qdhcp-* namespace reaches the agent's unix socket.
    start neutron-metadata-agent env PATH="$VENV/bin:$PATH" \
        "$VENV/bin/neutron-metadata-agent" --config-file "$ETC/neutron/neutron.conf" \
        --config-file "$ETC/neutron/metadata_agent.ini"
    alive nova-serialproxy || port_free 6083 nova-serialproxy
    start nova-serialproxy "$VENV/bin/nova-serialproxy" \
        --config-file "$ETC/nova/nova.conf" --log-file "$LOGS/nova-serialproxy.log"
    local services="conductor scheduler compute" i
    if multi; then
        # No compute in the host's namespaces: one per compute host.
        services="conductor scheduler"
        restart_host_computes_if_changed
        for i in $(seq 1 "$COMPUTES"); do start_host_services "$i"; done
    else
        restart_compute_if_changed
    fi
    for s in $services; do
        start "nova-$s" env PATH="$VENV/bin:$PATH" "$VENV/bin/nova-$s" \
            --config-file "$ETC/nova/nova.conf" --log-file "$LOGS/nova-$s.log"
    done
    wait_api placement 8778 "$LOGS/placement.log"
    wait_api glance 9292 "$LOGS/glance.log"
    wait_api neutron-api 9696 "$LOGS/neutron-api.log"
    wait_api nova-api 8774 "$LOGS/nova-api.log"
    wait_api nova-metadata 8775 "$LOGS/nova-metadata.log"
    wait_api nova-serialproxy 6083 "$LOGS/nova-serialproxy.log"
}

compute_registered() {  # compute_registered [HOST]
    db_has "SELECT 1 FROM nova_cell1.compute_nodes
        WHERE host='${1:-$HOST_NAME}' AND deleted=0"
}

trait_reported() {  # trait_reported [COUNT]: by COUNT providers (1)
    db_has "SELECT 1 FROM placement.resource_provider_traits rpt
        JOIN placement.traits t ON t.id = rpt.trait_id
        WHERE t.name = '$CONTAINER_TRAIT' HAVING COUNT(*) >= ${1:-1}"
}

agent_alive() {  # agent_alive TYPE [HOST]
    db_has "SELECT 1 FROM neutron.agents WHERE host='${2:-$HOST_NAME}'
        AND agent_type='$1'
        AND heartbeat_timestamp > UTC_TIMESTAMP() - INTERVAL 75 SECOND"
}

host_mapped() {  # host_mapped [HOST]
    db_has "SELECT 1 FROM nova_api.host_mappings WHERE host='${1:-$HOST_NAME}'"
}

map_host() {  # map_host [HOST]
    # --strict exits 1 when there was nothing new to map.
    "$VENV/bin/nova-manage" --config-file "$ETC/nova/nova.conf" cell_v2 \
        discover_hosts --strict >>"$LOGS/nova-manage.log" 2>&1 || true
    host_mapped "$@"
}

discover_compute() {
    if multi; then discover_hosts_multi; return; fi
    wait_for nova-compute "$LOGS/nova-compute.log" 180 compute_registered
    host_mapped || wait_for nova-manage "$LOGS/nova-manage.log" 60 map_host
    wait_for nova-compute "$LOGS/nova-compute.log" 120 trait_reported
    wait_for neutron-ovs-agent "$LOGS/neutron-ovs-agent.log" 120 \
        agent_alive 'Open vSwitch agent'
    wait_for neutron-dhcp-agent "$LOGS/neutron-dhcp-agent.log" 120 \
        agent_alive 'DHCP agent'
    wait_for neutron-metadata-agent "$LOGS/neutron-metadata-agent.log" 120 \
        agent_alive 'Metadata agent'
}

# The servers' network: a VXLAN network of the admin project (not shared:
# Tempest's own projects must not see it) with DHCP, served from a
# qdhcp-<network id> namespace on this host.
network_and_subnet() {
    local log=$LOGS/setup-osc.log
    db_has "SELECT 1 FROM neutron.networks WHERE name='$NETWORK'" ||
        run network "$log" osc network create "$NETWORK"
    db_has "SELECT 1 FROM neutron.subnets WHERE name='$NETWORK-subnet'" ||
        run network "$log" osc subnet create --network "$NETWORK" \
            --subnet-range "$SUBNET_RANGE" --dhcp "$NETWORK-subnet"
}

flavor_and_image() {
    local log=$LOGS/setup-osc.log tarball=$DATA/busybox-guest.tar.gz
    db_has "SELECT 1 FROM nova_api.flavors WHERE name='$FLAVOR'" ||
        run flavor "$log" osc flavor create --vcpus 1 --ram 256 --disk 1 --public \
            --property "trait:$CONTAINER_TRAIT=required" "$FLAVOR"
    if multi && ! db_has "SELECT 1 FROM nova_api.flavors WHERE name='$FLAVOR_BIGGER'"; then
        run flavor "$log" osc flavor create --vcpus 1 --ram 320 --disk 2 --public \
            --property "trait:$CONTAINER_TRAIT=required" "$FLAVOR_BIGGER"
    fi
    if ! db_has "SELECT 1 FROM glance.images WHERE name='$IMAGE'
                 AND status='active' AND deleted=0"; then
        run image "$log" "$VENV/bin/python" -m nova_lxd_py.tests.guest_image "$tarball"
        run image "$log" osc image create --disk-format raw --container-format bare \
            --public --property img_hv_type=lxc --property hw_vm_mode=exe \
            --file "$tarball" "$IMAGE"
    fi
}

publish_clouds_yaml() {
    "$VENV/bin/python" "$HERE/clouds_yaml.py" add "$SYSTEM_CLOUDS_YAML" "$CLOUD" \
        "$KEYSTONE_URL" "$(secret admin)"
}

# in_server_host SERVER_ID COMMAND...: COMMAND where the server's
# container is (its host's namespaces on a multi-host cloud).
in_server_host() {
    local id=$1 host
    shift
    if multi; then
        host=$(mysql_cli -N -e "SELECT host FROM nova_cell1.instances
            WHERE uuid='$id' AND deleted=0")
        hx "$(host_index "$host")" "$@"
    else
        "$@"
    fi
}

guest_ps() {  # guest_ps SERVER_ID
    local path=$CONTAINER_PATH
    multi && path=$HOST_STATE/nova/instances/containers
    in_server_host "$1" lxc-attach -n "$1" -P "$path" -- /bin/ps
}

network_id() {
    mysql_cli -N -e "SELECT id FROM neutron.networks WHERE name='$NETWORK'"
}

# ping_guest ADDRESS: ping the guest from its network's DHCP namespace.
ping_guest() {
    ip netns exec "qdhcp-$(network_id)" ping -c 1 -W 1 "$1"
}

demo() {
    local id address
    if db_has "SELECT 1 FROM nova_cell1.instances WHERE display_name='demo'
               AND deleted=0"; then
        osc server delete --wait demo
    fi
    id=$(osc server create --flavor "$FLAVOR" --image "$IMAGE" --network "$NETWORK" \
        --wait -f value -c id demo 2>"$LOGS/demo-create.log") ||
        fail nova-compute "$LOGS/nova-compute.log" \
            "'openstack server create demo' failed: $(tail -n 3 "$LOGS/demo-create.log")"
    echo "\$ openstack --os-cloud $CLOUD server create --flavor $FLAVOR --image $IMAGE --network $NETWORK --wait demo"
    echo "\$ openstack --os-cloud $CLOUD server show demo"
    osc server show "$id" -c id -c name -c status -c OS-EXT-STS:power_state \
        -c OS-EXT-SRV-ATTR:host -c addresses -c image -c created ||
        fail nova-api "$LOGS/nova-api.log" "'openstack server show' failed"
    if multi; then
        local i
        i=$(host_index "$(mysql_cli -N -e "SELECT host FROM nova_cell1.instances
            WHERE uuid='$id' AND deleted=0")")
        echo "\$ nsenter --mount=$NS_DIR/host$i --net=/run/netns/$(host_netns "$i") -- lxc-attach -n $id -P $HOST_STATE/nova/instances/containers -- /bin/ps"
    else
        echo "\$ lxc-attach -n $id -P $CONTAINER_PATH -- /bin/ps"
    fi
    guest_ps "$id" || fail nova-compute "$LOGS/nova-compute.log" \
        "no command runs in the guest (lxc-attach exited $?)"
    address=$(osc port list --server "$id" -f value -c 'Fixed IP Addresses' |
        grep -oE "ip_address': '[0-9.]+" | cut -d"'" -f3 | head -n 1)
    echo "\$ ip netns exec qdhcp-$(network_id) ping -c 1 $address"
    wait_for demo-guest "$LOGS/neutron-dhcp-agent.log" 60 ping_guest "$address"
    ping_guest "$address"
    echo "\$ openstack --os-cloud $CLOUD console log show demo"
    osc console log show "$id" ||
        fail nova-compute "$LOGS/nova-compute.log" "'openstack console log show' failed"
}

cmd_up() {
    need_root
    local computes=1
    while [ $# -gt 0 ]; do
        case $1 in
            --computes) computes=${2:-}; shift 2 ;;
            --computes=*) computes=${1#*=}; shift ;;
            *) echo "up: unknown argument $1" >&2; exit 2 ;;
        esac
    done
    case $computes in
        [1-9]|[1-9][0-9]) ;;
        *) echo "up: --computes takes a number from 1 to 99" >&2; exit 2 ;;
    esac
    # The databases remember the hosts: another count needs a wipe.
    if [ -f "$DATA/.computes" ] && [ "$(cat "$DATA/.computes")" != "$computes" ]; then
        echo "up: this cloud was made with $(cat "$DATA/.computes") compute host(s);" \
            "run 'cloud.sh down --wipe' first" >&2
        exit 1
    fi
    COMPUTES=$computes
    make_dirs
    echo "$COMPUTES" >"$RUN/computes"
    echo "$COMPUTES" >"$DATA/.computes"
    TIMINGS=$LOGS/timings.txt
    : >"$TIMINGS"
    local t0
    t0=$(now)
    phase apt apt_install
    phase host-setup host_setup
    phase venv pip_install
    phase configs write_configs
    phase rabbitmq start_rabbitmq
    phase mariadb start_mariadb
    # The other schemas migrate while keystone bootstraps and starts.
    ( set -x; sync_databases ) >"$LOGS/db-sync.log" 2>&1 &
    SYNC_PID=$!
    phase keystone keystone_bootstrap
    phase keystone-api start_keystone
    phase keystone-seed seed_keystone
    phase openvswitch start_openvswitch
    multi && phase compute-hosts make_hosts
    phase db-sync wait_databases
    phase services start_services
    phase compute-discovered discover_compute
    phase flavor-image flavor_and_image
    phase network network_and_subnet
    phase clouds.yaml publish_clouds_yaml
    local dt=$(( ($(now) - t0) / 1000000 ))
    printf '%-28s %4ds\n' cloud-ready "$dt" | tee -a "$TIMINGS"
    [ "${NOVA_LXD_PY_CLOUD_DEMO:-1}" = 0 ] || phase demo-server demo
    print_timings
    echo "Cloud up; logs in $LOGS. Try:"
    echo "  export PATH=$VENV/bin:\$PATH"
    echo "  openstack --os-cloud $CLOUD server list"
}

# ------------------------------------------------------------------ down

stop_pids() {  # stop_pids NAME...: SIGTERM, then SIGKILL after 15 s
    local name pid pids=""
    for name in "$@"; do
        [ -f "$RUN/$name.pid" ] || continue
        pid=$(cat "$RUN/$name.pid")
        if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
            echo "   stopping $name ($pid)"
            pids="$pids $pid"
        fi
        rm -f "$RUN/$name.pid"
    done
    for _ in $(seq 1 150); do
        local left=""
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
        pids=$left
        [ -z "$pids" ] && return 0
        sleep 0.1
    done
    for pid in $pids; do
        echo "   SIGKILL $pid (still running after 15 s)"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# Privsep daemons of our services, found by our config dir in their
# command line (they are children of the services and leave with them).
stop_privsep_helpers() {  # stop_privsep_helpers [CONFIG_DIR]
    local pid
    for pid in $(ps -eo pid=,args= | awk -v etc="${1:-$ETC/}" \
            'index($0, "privsep-helper") && index($0, etc) {print $1}'); do
        kill -KILL "$pid" 2>/dev/null && echo "   stopped privsep-helper ($pid)"
    done
    return 0
}

stop_containers() {
    local name
    [ -d "$CONTAINER_PATH" ] || return 0
    for name in $(lxc-ls -P "$CONTAINER_PATH" --active -1 2>/dev/null); do
        echo "   stopping container $name"
        # A frozen init cannot die: thaw it first.
        lxc-unfreeze -n "$name" -P "$CONTAINER_PATH" >/dev/null 2>&1 || true
        lxc-stop -k -n "$name" -P "$CONTAINER_PATH" || true
    done
}

stop_openvswitch() {
    local name pid
    for name in ovs-vswitchd ovsdb-server; do
        pid=$(cat "$RUN/$name.pid" 2>/dev/null) || continue
        kill -TERM "$pid" 2>/dev/null && echo "   stopping $name ($pid)"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$RUN/$name.pid"
    done
    if ip netns list | grep -qw "$NETNS"; then
        ip netns del "$NETNS" && echo "   deleted netns $NETNS"
    fi
}

# The dnsmasq and haproxy processes and the qdhcp-* namespaces the DHCP
# agent made (it leaves them when it stops): one directory per network in
# its state dir, one pid file per metadata proxy.
stop_dhcp() {
    local dir pid file
    for file in "$DATA"/neutron/external/pids/*.pid.haproxy; do
        [ -f "$file" ] || continue
        pid=$(cat "$file" 2>/dev/null) || pid=
        if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
            echo "   stopped haproxy ($pid)"
        fi
        rm -f "$file"
    done
    for dir in "$DATA"/neutron/dhcp/*/; do
        [ -d "$dir" ] || continue
        pid=$(cat "$dir/pid" 2>/dev/null) || pid=
        if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
            echo "   stopped dnsmasq ($pid)"
        fi
        if ip netns list | grep -qw "qdhcp-$(basename "$dir")"; then
            ip netns del "qdhcp-$(basename "$dir")" &&
                echo "   deleted netns qdhcp-$(basename "$dir")"
        fi
    done
    return 0
}

# unmount_under DIR: every mount below DIR, deepest first (the root disks
# of servers that were never deleted, such as the demo's).
unmount_under() {
    local mnt
    awk -v dir="$1/" 'index($5, dir) == 1 {print $5}' /proc/self/mountinfo |
        sort -r | while read -r mnt; do
            umount "$mnt" && echo "   unmounted $mnt"
        done
    return 0
}

stop_mariadb() {
    alive mariadb || { rm -f "$RUN/mariadb.pid"; return 0; }
    echo "   stopping mariadb"
    mariadb-admin --defaults-file="$ETC/mysql/my.cnf" shutdown 2>/dev/null || true
    stop_pids mariadb
}

stop_rabbitmq() {
    if rabbit_running >/dev/null 2>&1; then
        echo "   stopping rabbitmq"
        "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmqctl" -q stop "$RUN/rabbitmq-node.pid" \
            >/dev/null 2>&1 || true
    fi
    stop_pids rabbitmq
    # epmd outlives the node; end it only when no other Erlang node uses it.
    if command -v epmd >/dev/null && ! epmd -names 2>/dev/null | grep -q '^name '; then
        epmd -kill >/dev/null 2>&1 || true
    fi
}

cmd_down() {
    need_root
    local wipe=0
    [ "${1:-}" = --wipe ] && wipe=1
    # shellcheck disable=SC2046,SC2086
    stop_pids $SERVICES $(host_services_found)
    # shellcheck disable=SC2046,SC2086
    stop_pids $RELAYS $(host_relays_found)
    stop_privsep_helpers
    stop_containers
    # Every compute host left, whatever the count up was given.
    stop_hosts
    stop_dhcp
    stop_openvswitch
    stop_mariadb
    stop_rabbitmq
    if [ "$wipe" = 1 ]; then
        if [ -x "$VENV/bin/python" ] && [ -f "$SYSTEM_CLOUDS_YAML" ]; then
            "$VENV/bin/python" "$HERE/clouds_yaml.py" remove "$SYSTEM_CLOUDS_YAML" "$CLOUD"
        fi
        rmdir "$(dirname "$SYSTEM_CLOUDS_YAML")" 2>/dev/null || true
        unmount_under "$DATA"
        wipe_hosts
        rm -rf "$DATA" "$ETC" "$RUN" "$LOGS" "$OVS_RUN"
        echo "   wiped $BASE (the venv is kept)"
    fi
    rm -f "$RUN/computes"
    echo "down."
}

# ------------------------------------------------------------------ status

# Proportional memory (PSS, MiB) of every process we started and of their
# descendants (workers, privsep daemons, relays), containers excluded.
memory_mib() {
    local roots="" name pid kib=0
    for name in rabbitmq mariadb $SERVICES $RELAYS ovsdb-server ovs-vswitchd \
            $(multi && host_pid_names); do
        alive "$name" && roots="$roots $(cat "$RUN/$name.pid")"
    done
    for pid in $(ps -eo pid=,ppid= | awk -v roots="$roots" '
            BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
            { parent[$1] = $2 }
            END { for (p in parent) { q = p; while (q > 1) {
                      if (q in keep) { print p; break }; q = parent[q] } } }'); do
        kib=$(( kib + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0) ))
    done
    echo $(( kib / 1024 ))
}

cmd_status() {
    local name state
    # shellcheck disable=SC2086
    for name in rabbitmq mariadb $SERVICES $RELAYS ovsdb-server ovs-vswitchd; do
        if alive "$name"; then state="running (pid $(cat "$RUN/$name.pid"))"
        elif [ -f "$RUN/$name.pid" ]; then state="DEAD (pid file left)"
        else state="stopped"; fi
        printf '  %-22s %s\n' "$name" "$state"
    done
    multi && status_hosts
    echo "  memory (PSS of all of them): $(memory_mib) MiB"
    if alive nova-api && alive neutron-api; then
        osc compute service list -c Binary -c Host -c State -c Status 2>/dev/null || true
        osc network agent list -c 'Agent Type' -c Host -c Alive -c State 2>/dev/null || true
        osc server list 2>/dev/null || true
    fi
}

# ------------------------------------------------------------------ smoke

cmd_smoke() {
    need_root
    mkdir -p "$LOGS"
    if multi; then
        # The single-host steps on the first compute host, through its
        # namespaces; then the multi-host ones (multihost.py).
        local i hosts="" prefix
        for i in $(seq 1 "$COMPUTES"); do
            prefix="nsenter --mount=$NS_DIR/host$i --net=/run/netns/$(host_netns "$i") --"
            hosts="$hosts${hosts:+, }\"$(host_name "$i")\": \"$prefix\""
        done
        OS_CLIENT_CONFIG_FILE=$ETC/clouds.yaml PATH=$VENV/bin:$PATH \
            "$VENV/bin/python" "$HERE/smoke.py" --cloud "$CLOUD" --flavor "$FLAVOR" \
            --image "$IMAGE" --network "$NETWORK" --ovs-netns "$(host_netns 1)" \
            --container-path "$HOST_STATE/nova/instances/containers" \
            --host "$(host_name 1)" --zone "nova:$(host_name 1)" \
            --host-exec "nsenter --mount=$NS_DIR/host1 --net=/run/netns/$(host_netns 1) --" \
            --no-serial-console --multihost "{$hosts}" --flavor-bigger "$FLAVOR_BIGGER" \
            --cloud-sh "$HERE/cloud.sh" \
            --logs "$LOGS" --timings "$LOGS/timings-smoke.txt"
        return
    fi
    OS_CLIENT_CONFIG_FILE=$ETC/clouds.yaml PATH=$VENV/bin:$PATH \
        "$VENV/bin/python" "$HERE/smoke.py" --cloud "$CLOUD" --flavor "$FLAVOR" \
        --image "$IMAGE" --network "$NETWORK" --ovs-netns "$NETNS" \
        --container-path "$CONTAINER_PATH" --host "$HOST_NAME" \
        --logs "$LOGS" --timings "$LOGS/timings-smoke.txt"
}

# compute kill|start HOST: end a compute host's nova-compute as a crash
# would (SIGKILL, its containers stopped in its namespaces: what a host
# that died loses), or start it again (smoke's evacuation steps).
cmd_compute() {
    need_root
    local action=${1:-} i
    multi && i=$(host_index "${2:-}") ||
        { echo "usage: cloud.sh compute kill|start HOST (a multi-host cloud's)" >&2; exit 2; }
    case $action in
        kill)
            if alive "nova-compute.host$i"; then
                kill -KILL "$(cat "$RUN/nova-compute.host$i.pid")"
                rm -f "$RUN/nova-compute.host$i.pid"
            fi
            # nova-compute's privsep daemons, not the OVS agent's.
            stop_privsep_helpers "$(host_etc "$i")/nova-compute.conf"
            stop_host_containers "$i" ;;
        start) start_host_services "$i" ;;
        *) echo "usage: cloud.sh compute kill|start HOST" >&2; exit 2 ;;
    esac
}

case "${1:-}" in
    install) cmd_install ;;
    up) shift; cmd_up "$@" ;;
    down|stop) shift; cmd_down "$@" ;;
    status) cmd_status ;;
    smoke) cmd_smoke ;;
    compute) shift; cmd_compute "$@" ;;
    *) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
