# The compute hosts of a multi-host cloud (`cloud.sh up --computes N`,
# N >= 2), sourced by cloud.sh; see README.md, "A multi-host cloud".
#
# Compute host I (1..N) is a pair of namespaces on this one kernel:
#   - network namespace nova-lxd-py-hostI, with a veth (lab0) into the lab
#     network, its own ovsdb-server + ovs-vswitchd (userspace datapath), and
#     bridge br-lab holding lab0 and the host's lab address (OVS's
#     userspace tunnels leave through a bridge that owns the local_ip);
#   - a persistent mount namespace ($NS_DIR/hostI) with a sysfs of that
#     network namespace (the cgroup mounts kept) and the host's own disk, a
#     sparse ext4 image loop-mounted at $HOST_STATE: the same path on every
#     host, holding its nova and neutron state, containers, image cache,
#     locks, switch database and ssh host key.
# Everything of the host runs in both (`hx I COMMAND`): nova-compute (and
# its privsep daemons), neutron-openvswitch-agent, OVS, sshd, and socat
# relays that bring the control plane's loopback ports into the namespace.
# The network node (netns nova-lxd-py-ovs: DHCP agent, OVS agent
# nova-lxd-py-network) joins the lab network too.

LAB_NETNS=nova-lxd-py-lab
LAB_BRIDGE=br-lab
LAB_PREFIX=198.19.250        # /24; overlaps nothing on the host
NETWORK_HOST=nova-lxd-py-network
NETWORK_LAB_IP=$LAB_PREFIX.2
HOSTS_DIR=$BASE/hosts        # one sparse disk image per compute host
HOST_DISK_GB=20
NS_DIR=$RUN/ns               # the mount namespaces' files
HOST_STATE=$BASE/host-state  # each host's disk, mounted in its namespace
SSH_DIR=$ETC/ssh             # the migration key pair and known_hosts
# Nova's default scheduler filters and the host hints (nova.conf).
MULTI_FILTERS=ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter,SameHostFilter,DifferentHostFilter
# Control-plane ports a compute host reaches on its own 127.0.0.1.
CONTROL_PORTS="5000 8778 9292 9696"

host_name() { if [ "$1" = 1 ]; then echo "$HOST_NAME"; else echo "$HOST_NAME$1"; fi; }
host_netns() { echo "nova-lxd-py-host$1"; }
host_ip() { echo "$LAB_PREFIX.$((10 + $1))"; }
host_etc() { echo "$ETC/hosts/host$1"; }

# hx I COMMAND...: run COMMAND in compute host I's mount and network
# namespaces (nsenter execs it: a daemon's pid is the command's).
hx() {
    local i=$1
    shift
    nsenter --mount="$NS_DIR/host$i" --net="/run/netns/$(host_netns "$i")" -- "$@"
}

# start_in_host I NAME COMMAND...: `start` a daemon in host I's namespaces.
start_in_host() {
    local i=$1 name=$2
    shift 2
    start "$name" nsenter --mount="$NS_DIR/host$i" --net="/run/netns/$(host_netns "$i")" \
        -- "$@"
}

host_index() {  # host_index NAME: I of compute host NAME
    local i
    for i in $(seq 1 "$COMPUTES"); do
        [ "$(host_name "$i")" = "$1" ] && { echo "$i"; return 0; }
    done
    return 1
}

netns_exists() { [ -e "/run/netns/$1" ]; }
is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------------ up

# $NS_DIR is a private mount of its own, so that mount namespaces can be
# bound to files in it (unshare refuses a shared parent) and the binds do
# not propagate anywhere.
ns_dir() {
    mkdir -p "$NS_DIR"
    if ! is_mounted "$NS_DIR"; then
        mount --bind "$NS_DIR" "$NS_DIR"
        mount --make-private "$NS_DIR"
    fi
}

make_host() {  # make_host I
    local i=$1 netns img log=$LOGS/hosts.log
    netns=$(host_netns "$i")
    img=$HOSTS_DIR/host$i.img
    if ! netns_exists "$netns"; then
        run hosts "$log" ip netns add "$netns"
        run hosts "$log" ip -n "$netns" link set lo up
    fi
    mkdir -p "$HOSTS_DIR" "$HOST_STATE"
    if [ ! -f "$img" ]; then
        run hosts "$log" truncate -s "${HOST_DISK_GB}G" "$img.tmp"
        run hosts "$log" mkfs.ext4 -q -F -L "host$i" "$img.tmp"
        mv "$img.tmp" "$img"
    fi
    if ! is_mounted "$NS_DIR/host$i"; then
        touch "$NS_DIR/host$i"
        # A copy of this mount namespace, private: nothing mounted in it
        # reaches the host, nothing the host mounts later reaches it.
        run hosts "$log" nsenter --net="/run/netns/$netns" \
            unshare --mount="$NS_DIR/host$i" --propagation private true
        # The sysfs of its network namespace (liblxc reads
        # /sys/class/net), with the cgroup hierarchies moved along.
        run hosts "$log" hx "$i" sh -ec '
            new=$(mktemp -d)
            mount -t sysfs sysfs "$new"
            mount --rbind /sys/fs/cgroup "$new/fs/cgroup"
            mount --move "$new" /sys
            rmdir "$new"'
    fi
    hx "$i" findmnt -rn --mountpoint "$HOST_STATE" >/dev/null 2>&1 ||
        run hosts "$log" hx "$i" mount -o loop "$img" "$HOST_STATE"
    run hosts "$log" hx "$i" sh -ec "
        mkdir -p $HOST_STATE/nova/instances $HOST_STATE/nova/locks \
            $HOST_STATE/neutron/locks $HOST_STATE/ovs $HOST_STATE/ssh
        chmod 755 $HOST_STATE $HOST_STATE/nova $HOST_STATE/nova/instances
        echo $(host_name "$i") >$HOST_STATE/hostname"
}

# The lab network: a Linux bridge in netns nova-lxd-py-lab, a veth from it
# into every compute host and into the network node; never on the host's
# interfaces.
make_lab() {
    local i log=$LOGS/hosts.log
    if ! netns_exists "$LAB_NETNS"; then
        run lab "$log" ip netns add "$LAB_NETNS"
        run lab "$log" ip -n "$LAB_NETNS" link set lo up
        run lab "$log" ip -n "$LAB_NETNS" link add "$LAB_BRIDGE" type bridge
        run lab "$log" ip -n "$LAB_NETNS" link set "$LAB_BRIDGE" up
    fi
    lab_port lab-net "$NETNS"
    for i in $(seq 1 "$COMPUTES"); do
        lab_port "lab-host$i" "$(host_netns "$i")"
    done
}

lab_port() {  # lab_port NAME NETNS: veth NAME on the lab bridge, lab0 in NETNS
    local log=$LOGS/hosts.log
    ip -n "$LAB_NETNS" link show "$1" >/dev/null 2>&1 && return 0
    run lab "$log" ip -n "$LAB_NETNS" link add "$1" type veth peer name lab0 netns "$2"
    run lab "$log" ip -n "$LAB_NETNS" link set "$1" master "$LAB_BRIDGE" up
    run lab "$log" ip -n "$2" link set lab0 up
}

# lab_address RUNNER IP: bridge br-lab of that switch holds lab0 and IP.
lab_address() {
    local runner=$1 ip=$2 vsctl=$3 log=$LOGS/hosts.log
    run lab "$log" $runner $vsctl --may-exist add-br "$LAB_BRIDGE" -- set bridge \
        "$LAB_BRIDGE" datapath_type=netdev -- --may-exist add-port "$LAB_BRIDGE" lab0
    wait_for ovs-vswitchd "$log" 20 $runner ip link show "$LAB_BRIDGE"
    $runner ip -4 addr show dev "$LAB_BRIDGE" | grep -q "inet $ip/" ||
        run lab "$log" $runner ip addr add "$ip/24" dev "$LAB_BRIDGE"
    run lab "$log" $runner ip link set "$LAB_BRIDGE" up
    # The kernel's TCP (ssh between hosts) through ovs-vswitchd's tap.
    $runner ethtool -K "$LAB_BRIDGE" tx off >>"$log" 2>&1 || true
}

start_host_ovs() {  # start_host_ovs I
    local i=$1 log=$LOGS/hosts.log db=$HOST_STATE/ovs
    hx "$i" test -f "$db/conf.db" ||
        run ovsdb-server "$log" hx "$i" ovsdb-tool create "$db/conf.db" \
            /usr/share/openvswitch/vswitch.ovsschema
    if ! alive "ovsdb-server.host$i"; then
        run ovsdb-server "$log" hx "$i" env OVS_RUNDIR="$db" ovsdb-server "$db/conf.db" \
            --remote="punix:$db/db.sock" \
            --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
            --pidfile="$RUN/ovsdb-server.host$i.pid" --detach \
            --log-file="$LOGS/ovsdb-server.host$i.log"
        run ovsdb-server "$log" hx "$i" ovs-vsctl --db="unix:$db/db.sock" --no-wait init
    fi
    alive "ovs-vswitchd.host$i" ||
        run ovs-vswitchd "$log" hx "$i" env OVS_RUNDIR="$db" ovs-vswitchd \
            "unix:$db/db.sock" --pidfile="$RUN/ovs-vswitchd.host$i.pid" --detach \
            --log-file="$LOGS/ovs-vswitchd.host$i.log"
    lab_address "hx $i" "$(host_ip "$i")" "ovs-vsctl --db=unix:$db/db.sock"
}

# The control plane's ports on each host's loopback: one relay per port on
# the host side (a unix socket, which no network namespace divides), one
# per port and compute host inside (RabbitMQ's host side is cloud.sh's).
start_relays() {
    local i port netns
    for port in $CONTROL_PORTS; do
        start "api-relay-$port" socat "UNIX-LISTEN:$RUN/relay-$port.sock,fork,unlink-early" \
            "TCP:127.0.0.1:$port"
    done
    for port in $CONTROL_PORTS; do
        wait_for "api-relay-$port" "$LOGS/api-relay-$port.out" 10 test -S "$RUN/relay-$port.sock"
    done
    for i in $(seq 1 "$COMPUTES"); do
        netns=$(host_netns "$i")
        start "rabbit-relay.host$i" nsenter --net="/run/netns/$netns" socat \
            "TCP-LISTEN:$RABBIT_PORT,bind=127.0.0.1,reuseaddr,fork" \
            "UNIX-CONNECT:$RUN/rabbit-relay.sock"
        for port in $CONTROL_PORTS; do
            start "api-relay-$port.host$i" nsenter --net="/run/netns/$netns" socat \
                "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" \
                "UNIX-CONNECT:$RUN/relay-$port.sock"
        done
    done
}

# ssh between the compute hosts, as operators set it up for migrations:
# one key pair authorized on every host, a known_hosts with every host's
# key; an sshd per host in its namespaces on its lab address.
ssh_keys() {
    local i log=$LOGS/hosts.log line
    mkdir -p "$SSH_DIR"
    chmod 700 "$SSH_DIR"
    [ -f "$SSH_DIR/migration_key" ] ||
        run ssh "$log" ssh-keygen -q -t ed25519 -N '' -C nova-lxd-py-migration \
            -f "$SSH_DIR/migration_key"
    cp "$SSH_DIR/migration_key.pub" "$SSH_DIR/authorized_keys"
    : >"$SSH_DIR/known_hosts.tmp"
    for i in $(seq 1 "$COMPUTES"); do
        hx "$i" test -f "$HOST_STATE/ssh/ssh_host_ed25519_key" ||
            run ssh "$log" hx "$i" ssh-keygen -q -t ed25519 -N '' \
                -C "$(host_name "$i")" -f "$HOST_STATE/ssh/ssh_host_ed25519_key"
        line=$(hx "$i" cat "$HOST_STATE/ssh/ssh_host_ed25519_key.pub" | cut -d' ' -f1,2)
        echo "$(host_ip "$i"),$(host_name "$i") $line" >>"$SSH_DIR/known_hosts.tmp"
    done
    chmod 644 "$SSH_DIR/known_hosts.tmp" "$SSH_DIR/authorized_keys"
    mv "$SSH_DIR/known_hosts.tmp" "$SSH_DIR/known_hosts"
}

start_sshd() {  # start_sshd I
    local i=$1 conf
    conf=$(host_etc "$i")/sshd_config
    # sshd insists on its privilege separation directory; the system's
    # sshd would make the same one.
    if [ ! -d /run/sshd ]; then
        mkdir -p /run/sshd
        chmod 755 /run/sshd
        touch "$RUN/made-run-sshd"
    fi
    cat >"$conf" <<EOF
# sshd of compute host $(host_name "$i"), in its namespaces (cloud.sh).
ListenAddress $(host_ip "$i"):22
HostKey $HOST_STATE/ssh/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $SSH_DIR/authorized_keys
# The shared key lives under the base dir, below world-writable /var/tmp.
StrictModes no
UsePAM no
PrintMotd no
Subsystem sftp internal-sftp
EOF
    alive "sshd.host$i" && return 0
    hx "$i" /usr/sbin/sshd -t -f "$conf" >>"$LOGS/hosts.log" 2>&1 ||
        fail sshd "$LOGS/hosts.log" "sshd -t -f $conf refused its config"
    start_in_host "$i" "sshd.host$i" /usr/sbin/sshd -D -f "$conf" -E "$LOGS/sshd.host$i.log"
}

ssh_ready() {  # ssh_ready I J: host I reaches host J's sshd as root by key
    [ "$(hx "$1" ssh -i "$SSH_DIR/migration_key" -o BatchMode=yes \
        -o UserKnownHostsFile="$SSH_DIR/known_hosts" -o StrictHostKeyChecking=yes \
        -o ConnectTimeout=5 "root@$(host_ip "$2")" cat "$HOST_STATE/hostname")" = \
        "$(host_name "$2")" ]
}

write_host_configs() {
    local i dir
    for i in $(seq 1 "$COMPUTES"); do
        dir=$(host_etc "$i")
        mkdir -p "$dir"
        HOST_NAME=$(host_name "$i") LAB_IP=$(host_ip "$i") HOST_CONF=$dir/nova-compute.conf \
            render nova-compute-host.conf "$dir/nova-compute.conf"
        HOST_NAME=$(host_name "$i") render neutron-host.conf "$dir/neutron.conf"
        OVS_RUN=$HOST_STATE/ovs LOCAL_IP=$(host_ip "$i") AGENT_LOG=neutron-ovs-agent.host$i \
            render openvswitch_agent.ini "$dir/openvswitch_agent.ini"
    done
}

make_hosts() {
    local i j
    ns_dir
    for i in $(seq 1 "$COMPUTES"); do make_host "$i"; done
    make_lab
    lab_address "nsenter --net=/run/netns/$NETNS" "$NETWORK_LAB_IP" \
        "ovs-vsctl --db=unix:$OVS_RUN/db.sock"
    for i in $(seq 1 "$COMPUTES"); do start_host_ovs "$i"; done
    start_relays
    ssh_keys
    for i in $(seq 1 "$COMPUTES"); do start_sshd "$i"; done
    for i in $(seq 1 "$COMPUTES"); do
        for j in $(seq 1 "$COMPUTES"); do
            [ "$i" = "$j" ] && continue
            wait_for "sshd.host$j" "$LOGS/sshd.host$j.log" 30 ssh_ready "$i" "$j"
        done
    done
}

start_host_services() {  # start_host_services I
    local i=$1 dir
    dir=$(host_etc "$i")
    start_in_host "$i" "neutron-ovs-agent.host$i" env PATH="$VENV/bin:$PATH" \
        OVS_RUNDIR="$HOST_STATE/ovs" "$VENV/bin/neutron-openvswitch-agent" \
        --config-file "$ETC/neutron/neutron.conf" --config-file "$dir/neutron.conf" \
        --config-file "$dir/openvswitch_agent.ini"
    start_in_host "$i" "nova-compute.host$i" env PATH="$VENV/bin:$PATH" "$VENV/bin/nova-compute" \
        --config-file "$ETC/nova/nova.conf" --config-file "$dir/nova-compute.conf" \
        --log-file "$LOGS/nova-compute.host$i.log"
}

restart_host_computes_if_changed() {
    local digest i
    digest=$(driver_digest)
    for i in $(seq 1 "$COMPUTES"); do
        if alive "nova-compute.host$i" &&
                [ "$(cat "$RUN/nova-compute.driver" 2>/dev/null)" != "$digest" ]; then
            echo "   the driver changed: restarting nova-compute on $(host_name "$i")"
            stop_pids "nova-compute.host$i"
            stop_privsep_helpers "$(host_etc "$i")/nova-compute.conf"
        fi
    done
    echo "$digest" >"$RUN/nova-compute.driver"
}

discover_hosts_multi() {
    local i name
    for i in $(seq 1 "$COMPUTES"); do
        name=$(host_name "$i")
        wait_for "nova-compute.host$i" "$LOGS/nova-compute.host$i.log" 300 \
            compute_registered "$name"
    done
    for i in $(seq 1 "$COMPUTES"); do
        name=$(host_name "$i")
        host_mapped "$name" || wait_for nova-manage "$LOGS/nova-manage.log" 60 map_host "$name"
    done
    wait_for nova-compute.host1 "$LOGS/nova-compute.host1.log" 120 trait_reported "$COMPUTES"
    for i in $(seq 1 "$COMPUTES"); do
        wait_for "neutron-ovs-agent.host$i" "$LOGS/neutron-ovs-agent.host$i.log" 120 \
            agent_alive 'Open vSwitch agent' "$(host_name "$i")"
    done
    wait_for neutron-ovs-agent "$LOGS/neutron-ovs-agent.log" 120 \
        agent_alive 'Open vSwitch agent' "$NETWORK_HOST"
    wait_for neutron-dhcp-agent "$LOGS/neutron-dhcp-agent.log" 120 \
        agent_alive 'DHCP agent' "$NETWORK_HOST"
    wait_for neutron-metadata-agent "$LOGS/neutron-metadata-agent.log" 120 \
        agent_alive 'Metadata agent' "$NETWORK_HOST"
}

# ------------------------------------------------------------------ down

host_indexes_found() {  # every I with a namespace, disk or mount ns left
    local f
    for f in /run/netns/nova-lxd-py-host* "$NS_DIR"/host* "$HOSTS_DIR"/host*.img \
            "$RUN"/*.host*.pid; do
        [ -e "$f" ] || continue
        f=${f##*host}
        f=${f%%[!0-9]*}
        [ -n "$f" ] && echo "$f"
    done | sort -un
}

# pids_in_host I: processes in host I's network or mount namespace.
pids_in_host() {
    local i=$1 netns mnt pid
    netns=$(host_netns "$i")
    netns_exists "$netns" && ip netns pids "$netns" 2>/dev/null
    if is_mounted "$NS_DIR/host$i"; then
        mnt=$(stat -L -c %i "$NS_DIR/host$i" 2>/dev/null) || return 0
        for pid in /proc/[0-9]*; do
            [ "$(readlink "$pid/ns/mnt" 2>/dev/null)" = "mnt:[$mnt]" ] && echo "${pid#/proc/}"
        done
    fi
    return 0
}

stop_host_containers() {  # stop_host_containers I
    local i=$1 path=$HOST_STATE/nova/instances/containers name
    is_mounted "$NS_DIR/host$i" && netns_exists "$(host_netns "$i")" || return 0
    for name in $(hx "$i" lxc-ls -P "$path" --active -1 2>/dev/null); do
        echo "   stopping container $name on $(host_name "$i")"
        hx "$i" lxc-unfreeze -n "$name" -P "$path" >/dev/null 2>&1 || true
        hx "$i" lxc-stop -k -n "$name" -P "$path" || true
    done
}

# The services of every compute host left: down stops them with the
# control plane's, at once (OVS agents hang 15 s in their graceful stop),
# and the relays after them.
host_services_found() {
    local i
    for i in $(host_indexes_found); do echo "nova-compute.host$i neutron-ovs-agent.host$i"; done
}

host_relays_found() {
    local i p
    for i in $(host_indexes_found); do
        echo "sshd.host$i rabbit-relay.host$i"
        for p in $CONTROL_PORTS; do echo "api-relay-$p.host$i"; done
    done
    for p in $CONTROL_PORTS; do echo "api-relay-$p"; done
}

stop_host() {  # stop_host I: every process, mount, namespace of host I
    local i=$1 name pids pid mnt
    # shellcheck disable=SC2046
    stop_pids "nova-compute.host$i" "neutron-ovs-agent.host$i" "sshd.host$i" \
        "rabbit-relay.host$i" $(for p in $CONTROL_PORTS; do echo "api-relay-$p.host$i"; done)
    stop_privsep_helpers "$(host_etc "$i")/"
    stop_host_containers "$i"
    for name in ovs-vswitchd ovsdb-server; do
        pid=$(cat "$RUN/$name.host$i.pid" 2>/dev/null) || continue
        kill -TERM "$pid" 2>/dev/null && echo "   stopping $name.host$i ($pid)"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$RUN/$name.host$i.pid"
    done
    # Whatever is left in its namespaces (monitors, helpers of a failed up).
    pids=$(pids_in_host "$i" | sort -u)
    if [ -n "$pids" ]; then
        echo "   killing what is left on host$i:" $pids
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.5
    fi
    if is_mounted "$NS_DIR/host$i"; then
        # Deepest first: the servers' disks, then the host's own.
        hx "$i" awk -v dir="$HOST_STATE" '$5 == dir || index($5, dir "/") == 1 {print $5}' \
            /proc/self/mountinfo | sort -r | while read -r mnt; do
                hx "$i" umount "$mnt" || hx "$i" umount -l "$mnt" || true
            done
        umount "$NS_DIR/host$i" && echo "   released mount namespace host$i"
    fi
    rm -f "$NS_DIR/host$i"
    if netns_exists "$(host_netns "$i")"; then
        ip netns del "$(host_netns "$i")" && echo "   deleted netns $(host_netns "$i")"
    fi
    # A loop device still bound to the disk (the namespace died with it
    # mounted): detach it.
    losetup -j "$HOSTS_DIR/host$i.img" 2>/dev/null | cut -d: -f1 | while read -r dev; do
        losetup -d "$dev" && echo "   detached $dev"
    done
    return 0
}

stop_hosts() {
    local i
    for i in $(host_indexes_found); do stop_host "$i"; done
    # shellcheck disable=SC2046
    stop_pids $(for p in $CONTROL_PORTS; do echo "api-relay-$p"; done)
    if netns_exists "$LAB_NETNS"; then
        ip netns del "$LAB_NETNS" && echo "   deleted netns $LAB_NETNS"
    fi
    if is_mounted "$NS_DIR"; then umount "$NS_DIR" || true; fi
    if [ -f "$RUN/made-run-sshd" ]; then
        rmdir /run/sshd 2>/dev/null || true
        rm -f "$RUN/made-run-sshd"
    fi
    return 0
}

wipe_hosts() {
    rm -rf "$HOSTS_DIR" "$NS_DIR"
    rmdir "$HOST_STATE" 2>/dev/null || true
}

# ------------------------------------------------------------------ status

host_pid_names() {  # the pid file names of every compute host's daemons
    local i p
    for i in $(seq 1 "$COMPUTES"); do
        echo "nova-compute.host$i neutron-ovs-agent.host$i ovsdb-server.host$i" \
            "ovs-vswitchd.host$i sshd.host$i rabbit-relay.host$i"
        for p in $CONTROL_PORTS; do echo "api-relay-$p.host$i"; done
    done
    for p in $CONTROL_PORTS; do echo "api-relay-$p"; done
}

status_hosts() {
    local i name state
    for i in $(seq 1 "$COMPUTES"); do
        echo "  compute host $(host_name "$i"): netns $(host_netns "$i"), lab $(host_ip "$i"), mount ns $NS_DIR/host$i"
        for name in nova-compute neutron-ovs-agent ovsdb-server ovs-vswitchd sshd rabbit-relay; do
            if alive "$name.host$i"; then state="running (pid $(cat "$RUN/$name.host$i.pid"))"
            elif [ -f "$RUN/$name.host$i.pid" ]; then state="DEAD (pid file left)"
            else state="stopped"; fi
            printf '    %-20s %s\n' "$name" "$state"
        done
        if is_mounted "$NS_DIR/host$i"; then
            printf '    %-20s %s\n' disk "$(hx "$i" df -h --output=used,size "$HOST_STATE" | tail -n 1)"
            printf '    %-20s %s\n' containers "$(hx "$i" lxc-ls -P "$HOST_STATE/nova/instances/containers" -1 2>/dev/null | tr '\n' ' ')"
        fi
    done
}
