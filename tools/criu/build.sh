#!/bin/bash
# Build and install a CRIU that works on this project's hosts (Debian 12 or
# 13, kernel >= 6.16), for lxc-checkpoint / live migration.
#
# Debian 12's criu 3.17 fails `criu check` on these kernels and Debian 13's
# criu 4.1.1 cannot dump any inet socket there (SO_PASSCRED/SO_PASSSEC, see
# patches/). So: take the criu source package of Debian's trixie suite through
# apt (signed index, private apt configuration, the host's /etc/apt untouched),
# apply patches/*.patch, build the criu binary only (no docs, tests, crit or
# plugins) and install it as $CRIU_PREFIX/sbin/criu, which liblxc finds first
# on PATH. A stamp beside it records which source and patches it was built
# from; a later run with the same patches exits at once.
#
# Usage:
#   tools/criu/build.sh           build and install unless already done
#   tools/criu/build.sh --force   build and install again
#   tools/criu/build.sh --check   verify the installed criu: `criu check`, a
#                                 dump/restore of a process holding an
#                                 ESTABLISHED TCP connection (in a private
#                                 network namespace), and report the lazy
#                                 pages and dirty-memory-tracking features
# Environment:
#   CRIU_PREFIX     install prefix (default /usr/local)
#   CRIU_BUILD_DIR  scratch dir for apt lists, source and build
#                   (default /var/tmp/nova-lxd-py-criu); kept for the next run
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=${CRIU_PREFIX:-/usr/local}
BIN=$PREFIX/sbin/criu
STAMP=$PREFIX/share/nova-lxd-py/criu.stamp
WORK=${CRIU_BUILD_DIR:-/var/tmp/nova-lxd-py-criu}
SUITE=trixie
MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Bump when the way the binary is built changes (the patches count anyway).
RECIPE=1

# Enough to build `make criu` on Debian 12 and 13. libbsd (setproctitle),
# libnftables (nftables network lock) and gnutls (TLS page server) are
# optional for criu but listed so hosts build alike (criu also links
# libselinux and libbpf when their -dev packages happen to be installed).
BUILD_DEPS=(gcc make libc6-dev pkg-config
            protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev
            libnl-3-dev libnet1-dev libcap-dev uuid-dev
            libbsd-dev libnftables-dev libgnutls28-dev
            patch xz-utils)
# What criu runs at dump/restore time (network lock, netns state) and what
# --check uses (nsenter, ss, python3).
RUN_DEPS=(iptables iproute2 util-linux python3)

log() { echo "criu-build: $*"; }
die() { echo "criu-build: $*" >&2; exit 1; }

apt_updated=
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What the stamp must say for the installed binary to count as ours.
build_id() {
    {
        echo "recipe=$RECIPE suite=$SUITE"
        cat "$HERE"/patches/*.patch
    } | sha256sum | cut -d' ' -f1
}

stamp_value() {
    sed -n "s/^$1=//p" "$STAMP" 2>/dev/null | head -n1
}

# Our binary is installed, built from the current patches, unchanged since,
# and passes `criu check`.
installed_ok() {
    [ -x "$BIN" ] && [ -f "$STAMP" ] || return 1
    [ "$(stamp_value build-id)" = "$(build_id)" ] || return 1
    [ "$(stamp_value binary-sha256)" = \
      "$(sha256sum "$BIN" | cut -d' ' -f1)" ] || return 1
    "$BIN" check >/dev/null 2>&1
}

warn_path() {
    local found
    found=$(command -v criu || true)
    if [ "$found" != "$BIN" ]; then
        log "WARNING: \`criu\` on PATH is ${found:-missing}, not $BIN;" \
            "liblxc runs the first criu on PATH"
    fi
}

# --- fetch --------------------------------------------------------------

APT_OPTS=()
setup_apt() {
    local dir=$WORK/apt
    mkdir -p "$dir/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial"
    printf '%s\n' "Types: deb-src" "URIs: $MIRROR" "Suites: $SUITE" \
        "Components: main" "Signed-By: $KEYRING" > "$dir/sources.list.d/criu.sources"
    APT_OPTS=(-o Dir::Etc::SourceList=/dev/null
              -o "Dir::Etc::SourceParts=$dir/sources.list.d"
              -o "Dir::State::Lists=$dir/lists"
              -o "Dir::Cache=$dir/cache")
    # Debian 12 verifies trixie's index with the trixie keys that point
    # releases of bookworm's debian-archive-keyring added; an old one lacks
    # them. (Debian 13's own keyring has them.)
    if [ ! -e "/usr/share/keyrings/debian-archive-$SUITE-stable.gpg" ]; then
        log "debian-archive-keyring has no $SUITE key: upgrading it"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt_updated=1
        apt-get install -y -qq --only-upgrade debian-archive-keyring >/dev/null
        [ -e "/usr/share/keyrings/debian-archive-$SUITE-stable.gpg" ] ||
            die "debian-archive-keyring $(dpkg-query -W -f='${Version}' \
                debian-archive-keyring) still has no $SUITE key"
    fi
}

# Sets SRC_TARBALL and SRC_VERSION: the upstream tarball of the source
# package criu in $SUITE, its SHA256 checked against apt's signed index.
SRC_TARBALL='' SRC_VERSION='' SRC_SHA256=''
fetch_source() {
    local uris line name sum
    setup_apt
    log "apt-get update of $SUITE's source index (private lists in $WORK/apt)"
    apt-get "${APT_OPTS[@]}" -qq --error-on=any update
    uris=$(apt-get "${APT_OPTS[@]}" -qq source --print-uris criu)
    # 'URI' criu_4.1.1.orig.tar.xz SIZE SHA256:HEX
    line=$(printf '%s\n' "$uris" | grep -E "^'[^']*' criu_[^ ]*\.orig\.tar\.[a-z0-9]+ " |
           head -n1) || die "no orig tarball for criu in $SUITE: $uris"
    name=$(echo "$line" | cut -d' ' -f2)
    sum=$(echo "$line" | grep -o 'SHA256:[0-9a-f]*' | cut -d: -f2)
    [ -n "$sum" ] || die "no SHA256 for $name in the index"
    SRC_VERSION=${name#criu_}
    SRC_VERSION=${SRC_VERSION%.orig.tar.*}
    SRC_TARBALL=$WORK/src/$name
    SRC_SHA256=$sum
    mkdir -p "$WORK/src"
    if [ -f "$SRC_TARBALL" ] &&
       [ "$(sha256sum "$SRC_TARBALL" | cut -d' ' -f1)" = "$sum" ]; then
        log "have $name"
        return
    fi
    # apt-get source checks every file against the signed index. Only the
    # upstream tarball is used (Debian's packaging is not): a mirror that
    # lacks the .dsc or .debian.tar still serves what is needed.
    chown _apt "$WORK/src" 2>/dev/null || true
    if ! (cd "$WORK/src" &&
          apt-get "${APT_OPTS[@]}" -qq source --download-only criu) \
            > "$WORK/src/apt-get-source.log" 2>&1; then
        [ -f "$SRC_TARBALL" ] || {
            cat "$WORK/src/apt-get-source.log" >&2
            die "could not download $name"
        }
        log "apt-get source did not fetch every file" \
            "($(grep -c '^E: Failed to fetch [a-z]*:' "$WORK/src/apt-get-source.log") missing);" \
            "only $name is needed"
    fi
    [ "$(sha256sum "$SRC_TARBALL" | cut -d' ' -f1)" = "$sum" ] ||
        die "$name does not match the SHA256 of the signed index"
    log "fetched $name (sha256 $sum, verified)"
}

# --- build --------------------------------------------------------------

build_and_install() {
    local tree start secs patch
    ensure_packages "${BUILD_DEPS[@]}" "${RUN_DEPS[@]}"
    fetch_source
    tree=$WORK/build/criu-$SRC_VERSION
    rm -rf "$WORK/build"
    mkdir -p "$WORK/build"
    tar -xf "$SRC_TARBALL" -C "$WORK/build"
    [ -d "$tree" ] || die "$SRC_TARBALL has no criu-$SRC_VERSION/"
    for patch in "$HERE"/patches/*.patch; do
        log "applying ${patch#"$HERE"/}"
        patch -d "$tree" -p1 --batch --forward --quiet < "$patch" ||
            die "${patch##*/} does not apply to criu $SRC_VERSION"
    done
    log "building criu $SRC_VERSION (make -j$(nproc) criu; log in $WORK/build/make.log)"
    start=$(date +%s)
    # PLUGINDIR: load plugins only from our prefix, never another criu's.
    if ! make -C "$tree" -j"$(nproc)" PLUGINDIR="$PREFIX/lib/criu" criu \
            > "$WORK/build/make.log" 2>&1; then
        tail -n 30 "$WORK/build/make.log" >&2
        die "make failed (full log: $WORK/build/make.log)"
    fi
    secs=$(( $(date +%s) - start ))
    log "built in ${secs}s"
    "$tree/criu/criu" check >/dev/null 2>&1 ||
        die "the new criu fails \`criu check\`: $("$tree/criu/criu" check 2>&1 | tail -n 3)"
    install -D -m 0755 "$tree/criu/criu" "$BIN.new"
    mv -f "$BIN.new" "$BIN"
    mkdir -p "$(dirname "$STAMP")"
    {
        echo "build-id=$(build_id)"
        echo "version=$SRC_VERSION"
        echo "source=$SUITE criu_$SRC_VERSION.orig sha256=$SRC_SHA256"
        echo "patches=$(cd "$HERE/patches" && echo ./*.patch)"
        echo "built-on=debian $(cat /etc/debian_version) $(uname -r)"
        echo "build-seconds=$secs"
        echo "binary-sha256=$(sha256sum "$BIN" | cut -d' ' -f1)"
    } > "$STAMP.new"
    mv -f "$STAMP.new" "$STAMP"
    log "installed $BIN ($("$BIN" --version | head -n1)); stamp $STAMP"
}

# --- check --------------------------------------------------------------

CHECK_NS='' CHECK_DIR='' CHECK_PIDS=() CHECK_FAILED=1
check_cleanup() {
    local pid
    for pid in "${CHECK_PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -n "$CHECK_NS" ]; then
        ip netns del "$CHECK_NS" 2>/dev/null || true
    fi
    if [ -n "$CHECK_DIR" ] && [ "$CHECK_FAILED" = 0 ]; then
        rm -rf "$CHECK_DIR"
    elif [ -n "$CHECK_DIR" ]; then
        log "kept logs and images in $CHECK_DIR"
    fi
}

in_ns() { nsenter --net="/run/netns/$CHECK_NS" "$@"; }

# Wait up to $2 seconds for a line matching ERE $3 in file $1.
wait_for_line() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        grep -Eq "$3" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# A dumped task is killed, but its pid stays taken (and a restore with it
# fails) until its zombie is reaped (by this shell, or init after a
# restore).
wait_gone() {
    local i
    for ((i = 0; i < 100; i++)); do
        [ -e "/proc/$1" ] || return 0
        sleep 0.1
    done
    return 1
}

# The established connections to port $1, as "LOCAL<-PEER" words.
connections() {
    in_ns ss -Htn state established "( sport = :$1 )" |
        awk '{ printf "%s%s<-%s", sep, $(NF-1), $NF; sep = " " }'
}

last_ok() { sed -n 's/^ok //p' "$1" | tail -n1; }

# start_peer ROLE PORT: one end of the TCP pair in the check's netns; prints
# its pid once it is ready.
start_peer() {
    nsenter --net="/run/netns/$CHECK_NS" \
        python3 "$HERE/tcp-pair.py" "$1" "$2" "$CHECK_DIR/$1.log" \
        </dev/null >/dev/null 2>&1 &
    disown  # bash reaps it all the same, without a "Killed" note
    wait_for_line "$CHECK_DIR/$1.log" 5 '^ready ' || die "$1 did not start"
    sed -n 's/^ready //p' "$CHECK_DIR/$1.log"
}

tcp_check() {
    local port=7777 spid cpid before after conn_before conn_after img
    CHECK_NS=nova-lxd-py-criu-check-$$
    mkdir -p "$WORK"
    CHECK_DIR=$(mktemp -d "$WORK/check.XXXXXX")
    img=$CHECK_DIR/img
    mkdir -p "$img"
    trap check_cleanup EXIT
    trap 'exit 130' INT TERM  # so that the EXIT trap runs
    ip netns add "$CHECK_NS"
    ip -n "$CHECK_NS" link set lo up

    spid=$(start_peer server "$port") || exit 1
    CHECK_PIDS+=("$spid")
    cpid=$(start_peer client "$port") || exit 1
    CHECK_PIDS+=("$cpid")
    wait_for_line "$CHECK_DIR/client.log" 5 '^ok 20$' ||
        die "no traffic before the dump: $(tail -n2 "$CHECK_DIR/client.log")"
    conn_before=$(connections "$port")
    log "tcp: client pid $cpid, connection $conn_before"

    in_ns "$BIN" dump -t "$cpid" -D "$img" --tcp-established -v4 -o dump.log ||
        die "criu dump failed: $(grep -E 'Error|Warn' "$img/dump.log" | tail -n5)"
    before=$(last_ok "$CHECK_DIR/client.log")
    wait_gone "$cpid" || die "client pid $cpid still taken 10 s after the dump"
    log "tcp: dumped after $before round trips; client gone; pause 1 s"
    sleep 1
    in_ns "$BIN" restore -D "$img" --tcp-established -d -v4 -o restore.log \
        --pidfile "$CHECK_DIR/restored.pid" ||
        die "criu restore failed: $(grep -E 'Error|Warn' "$img/restore.log" | tail -n5)"
    log "tcp: restored pid $(cat "$CHECK_DIR/restored.pid")"
    wait_for_line "$CHECK_DIR/client.log" 10 "^ok $((before + 50))\$" ||
        die "no traffic after the restore: $(tail -n2 "$CHECK_DIR/client.log")"
    after=$(last_ok "$CHECK_DIR/client.log")
    conn_after=$(connections "$port")
    grep -q '^error' "$CHECK_DIR/client.log" "$CHECK_DIR/server.log" &&
        die "an end reported an error: $(grep -h '^error' "$CHECK_DIR"/*.log)"
    [ "$(grep -c '^accepted ' "$CHECK_DIR/server.log")" = 1 ] ||
        die "the server accepted more than one connection"
    [ "$conn_after" = "$conn_before" ] ||
        die "connection changed: '$conn_before' -> '$conn_after'"
    log "tcp: round trips $before -> $after after restore, same connection" \
        "($conn_after), server accepted once"
    log "tcp: PASS (dump/restore --tcp-established)"
}

feature() {
    local out
    if out=$("$BIN" check --feature "$1" 2>&1); then
        log "feature $1: yes"
    else
        log "feature $1: NO (${out//$'\n'/ })"
    fi
}

check() {
    local out
    [ -x "$BIN" ] || die "$BIN missing: run tools/criu/build.sh first"
    ensure_packages "${RUN_DEPS[@]}"
    log "$BIN: $("$BIN" --version | head -n1), debian $(cat /etc/debian_version), kernel $(uname -r)"
    if [ "$(stamp_value build-id)" = "$(build_id)" ]; then
        log "stamp: built from the current patches ($(stamp_value patches))"
    else
        log "WARNING: stamp missing or stale: rebuild with tools/criu/build.sh"
    fi
    warn_path
    out=$("$BIN" check 2>&1) || die "criu check failed: $out"
    log "criu check: ${out//$'\n'/ }"
    # Lazy pages (restore --lazy-pages) need userfaultfd: uffd, and
    # uffd-noncoop for trees that fork. Memory snapshots (pre-dump) need
    # dirty tracking, off on these kernels (CONFIG_MEM_SOFT_DIRTY unset).
    feature uffd
    feature uffd-noncoop
    feature mem_dirty_track
    CHECK_FAILED=1
    tcp_check
    CHECK_FAILED=0
    log "check: PASS"
}

main() {
    [ "$(id -u)" -eq 0 ] || die "run as root"
    case ${1:-} in
    --check) check ;;
    --force) build_and_install; warn_path ;;
    "")
        if installed_ok; then
            log "$BIN is up to date ($(stamp_value version), $(stamp_value patches))"
        else
            build_and_install
        fi
        warn_path ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
    *) die "usage: $0 [--force|--check]" ;;
    esac
}

main "$@"
