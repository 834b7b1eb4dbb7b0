#!/bin/bash
# Prepare this host (Debian 12 or 13, as root) for nova-lxd-py, its tests and
# tools/demo.sh. Safe to run again: each step checks before it acts.
#
#  1. Debian packages: those of bindep.txt, plus python3-venv/python3-dev
#     when the interpreter that will build the venv lacks them
#     (NOVA_LXD_PY_PYTHON, default python3).
#  2. A subordinate id range for root in /etc/subuid and /etc/subgid, for
#     unprivileged containers, if root has none.
#  3. lxcfs running at /var/lib/lxcfs, so guests see their own memory and
#     CPUs in /proc.
#  4. CRIU for checkpoint/restore (tools/criu/build.sh), unless
#     NOVA_LXD_PY_CRIU=0; a failed build is a warning, not an error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

LXCFS_DIR=/var/lib/lxcfs
LXCFS_LOG=/var/log/nova-lxd-py-lxcfs.log
SUBID_START=100000
SUBID_COUNT=65536
PACKAGES=(lxc lxc-dev lxcfs busybox-static uidmap procps iproute2
          pkg-config gcc git
          # the Debian guest image the systemd tests build
          debootstrap
          # image conversion: decompressors, squashfs, disk images
          tar gzip xz-utils zstd bzip2 squashfs-tools qemu-utils util-linux
          mount fdisk e2fsprogs xfsprogs btrfs-progs
          # cold moves: disks go host to host over ssh (the tests run a
          # private sshd on loopback)
          openssh-client openssh-server)

log() { echo "setup-host: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: run as root" >&2
    exit 1
fi

install_packages() {
    local python=${NOVA_LXD_PY_PYTHON:-python3} wanted=("${PACKAGES[@]}")
    if ! command -v "$python" >/dev/null; then
        wanted+=(python3 python3-venv python3-dev)
    else
        "$python" -c 'import ensurepip, venv' 2>/dev/null ||
            wanted+=(python3-venv)
        # The lxc bindings are built from source against Python.h.
        "$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(
            os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
            wanted+=(python3-dev)
    fi
    local missing=() pkg
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "Debian packages already installed"
        return
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Give root a range that overlaps no other user's (Debian gives the first
# ordinary user 100000:65536), from SUBID_START on.
add_root_subids() {
    local file start
    for file in /etc/subuid /etc/subgid; do
        if grep -q '^root:' "$file" 2>/dev/null; then
            continue
        fi
        touch "$file"
        start=$(awk -F: -v s="$SUBID_START" \
            'NF == 3 && $2 + $3 > s { s = $2 + $3 } END { print s }' "$file")
        echo "root:$start:$SUBID_COUNT" >> "$file"
        log "added root:$start:$SUBID_COUNT to $file"
    done
}

lxcfs_works() {
    head -c1 "$LXCFS_DIR/proc/meminfo" >/dev/null 2>&1
}

start_lxcfs() {
    if lxcfs_works; then
        log "lxcfs already serves $LXCFS_DIR"
        return
    fi
    # A FUSE mount left by an lxcfs that died answers ENOTCONN; drop it.
    if grep -qs " $LXCFS_DIR fuse" /proc/mounts; then
        umount -l "$LXCFS_DIR"
    fi
    mkdir -p "$LXCFS_DIR"
    # lxcfs stays in the foreground: detach it from this script.
    setsid nohup lxcfs --enable-cfs "$LXCFS_DIR" \
        </dev/null >"$LXCFS_LOG" 2>&1 &
    local _
    for _ in $(seq 300); do   # 30 s
        lxcfs_works && break
        sleep 0.1
    done
    if ! lxcfs_works; then
        echo "setup-host: lxcfs did not come up at $LXCFS_DIR:" >&2
        tail -n 20 "$LXCFS_LOG" >&2
        exit 1
    fi
    log "started lxcfs at $LXCFS_DIR (log: $LXCFS_LOG)"
}

# CRIU for checkpoint/restore (tools/criu/build.sh: Debian's source with our
# fix, built once). Not needed to run guests: a host without it runs them
# all the same and nova-compute says at start that it cannot checkpoint.
install_criu() {
    if [ "${NOVA_LXD_PY_CRIU:-1}" = 0 ]; then
        log "CRIU not wanted (NOVA_LXD_PY_CRIU=0)"
        return
    fi
    if ! "$HERE/criu/build.sh"; then
        log "WARNING: CRIU could not be built; this host cannot checkpoint" \
            "guests (see the output above)"
    fi
}

install_packages
add_root_subids
start_lxcfs
install_criu
