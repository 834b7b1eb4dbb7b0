#!/bin/bash
#
# devstack plugin for nova-lxd-py: every Nova instance on this host is a
# liblxc system container.
#
#   stack install      host packages; the driver into nova's python
#   stack post-config  nova.conf, subordinate ids, lxcfs
#   stack extra        container flavor and a bootable busybox image
#   unstack            stop the containers
#   clean              remove containers, cached images and our files

# Save trace setting
_XTRACE_NOVA_LXD_PY=$(set +o | grep xtrace)
set +o xtrace

# [lxc] options of nova_lxd_py/conf.py, each set from NOVA_LXD_PY_<OPTION>.
NOVA_LXD_PY_LXC_OPTIONS="container_path image_cache_path root_disk_backend
idmap_user idmap_size allow_privileged allow_nesting pids_max lxcfs_path
seccomp_profile console_log_size_kb image_formats max_unpacked_image_gb
remove_orphans oci_init snapshot_compression start_timeout
soft_reboot_timeout suspend_to_disk checkpoint_timeout ovs_network_namespace"


# Helpers
# -------

# The python that runs nova (and therefore must import the driver).
function _nova_lxd_py_python {
    if [[ -n "$NOVA_LXD_PY_PYTHON" ]]; then
        echo "$NOVA_LXD_PY_PYTHON"
    elif [[ -x "$NOVA_BIN_DIR/python3" ]]; then
        echo "$NOVA_BIN_DIR/python3"
    else
        echo "${PYTHON:-python3}"
    fi
}

function _nova_lxd_py_container_path {
    echo "${NOVA_LXD_PY_CONTAINER_PATH:-$NOVA_INSTANCES_PATH/containers}"
}

function _nova_lxd_py_image_cache_path {
    echo "${NOVA_LXD_PY_IMAGE_CACHE_PATH:-$NOVA_INSTANCES_PATH/_base_lxc}"
}

# Directory of nova.virt, found without importing nova. Run from / so that
# a checkout in the current directory cannot stand in for nova.
function _nova_lxd_py_nova_virt_dir {
    local python
    python=$(_nova_lxd_py_python)
    (cd / && "$python" -c 'import importlib.util, os
spec = importlib.util.find_spec("nova")
print(os.path.join(spec.submodule_search_locations[0], "virt"))')
}

# The user's first range in a subordinate id file of at least $3 ids.
function _nova_lxd_py_has_range {
    local file=$1 user=$2 size=$3
    [[ -r "$file" ]] || return 1
    awk -F: -v user="$user" -v size="$size" '
        $1 == user && $3 + 0 >= size + 0 { found = 1 }
        END { exit !found }' "$file"
}

# First id past every range already handed out in the given files, and at
# least 100000, where Debian's useradd starts.
function _nova_lxd_py_free_start {
    local file
    for file in "$@"; do
        if [[ -r "$file" ]]; then
            cat "$file"
        fi
    done | awk -F: '
        BEGIN { top = 100000 }
        NF == 3 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ && $2 + $3 > top {
            top = $2 + $3
        }
        END { printf "%d\n", top }'
}


# Install
# -------

function install_nova_lxd_py {
    # lxc-dev must be there before pip builds the lxc binding.
    install_package $NOVA_LXD_PY_PACKAGES
    # Editable, like devstack's nova, so a changed checkout needs only a
    # nova-compute restart.
    setup_develop "$NOVA_LXD_PY_DIR"
    nova_lxd_py_link_shim
    nova_lxd_py_install_criu
}

# CRIU for checkpoint/restore, built from Debian's source with our fix
# (tools/criu/build.sh). Guests run without it; nova-compute logs at start
# whether this host can checkpoint them.
function nova_lxd_py_install_criu {
    if ! is_service_enabled n-cpu || [[ "$NOVA_LXD_PY_CRIU" != "True" ]]; then
        return
    fi
    if ! sudo "$NOVA_LXD_PY_DIR/tools/criu/build.sh"; then
        warn $LINENO "CRIU could not be built: guests on this host cannot \
be checkpointed"
    fi
}

# Nova loads drivers only as nova.virt.<compute_driver>. devstack installs
# nova editable from $NOVA_DIR, so the shim that pip put into
# site-packages/nova/virt is not on nova.virt's path: link it into the
# nova.virt package that python really imports.
function nova_lxd_py_link_shim {
    local virt_dir link
    if ! virt_dir=$(_nova_lxd_py_nova_virt_dir); then
        die $LINENO "nova is not importable by $(_nova_lxd_py_python)"
    fi
    link=$virt_dir/lxc_py
    if [[ -e "$link" && ! -L "$link" ]]; then
        # A regular install put the shim into nova's own tree already.
        return 0
    fi
    if [[ -w "$virt_dir" ]]; then
        ln -sfn "$NOVA_LXD_PY_DIR/nova/virt/lxc_py" "$link"
    else
        sudo ln -sfn "$NOVA_LXD_PY_DIR/nova/virt/lxc_py" "$link"
    fi
}


# Configure
# ---------

function configure_nova_lxd_py {
    if [[ "$VIRT_DRIVER" != "lxc_py" ]]; then
        warn $LINENO "VIRT_DRIVER is $VIRT_DRIVER: devstack set that driver \
up, but compute_driver becomes $NOVA_LXD_PY_COMPUTE_DRIVER"
    fi
    # nova-compute reads a copy of $NOVA_CONF (nova-cpu.conf) made at start.
    # Its privsep daemon needs no rootwrap filter: oslo.rootwrap always
    # lets privsep-helper through.
    iniset $NOVA_CONF DEFAULT compute_driver "$NOVA_LXD_PY_COMPUTE_DRIVER"
    # The driver has no config drive and no graphical console.
    iniset $NOVA_CONF DEFAULT force_config_drive False
    iniset $NOVA_CONF vnc enabled False

    local option var
    for option in $NOVA_LXD_PY_LXC_OPTIONS; do
        var=NOVA_LXD_PY_${option^^}
        if [[ -n "${!var+set}" ]]; then
            iniset $NOVA_CONF lxc "$option" "${!var}"
        fi
    done

    nova_lxd_py_ensure_subordinate_ids
    nova_lxd_py_ensure_lxcfs
    nova_lxd_py_make_traversable "$(_nova_lxd_py_container_path)"
    nova_lxd_py_make_traversable "$(_nova_lxd_py_image_cache_path)"
}

# Unprivileged containers map their ids onto the idmap user's first
# subordinate range; give the user one if it has none big enough.
function nova_lxd_py_ensure_subordinate_ids {
    local user=$NOVA_LXD_PY_IDMAP_USER size=$NOVA_LXD_PY_IDMAP_SIZE
    local start file
    start=$(_nova_lxd_py_free_start "$NOVA_LXD_PY_SUBUID_FILE" \
        "$NOVA_LXD_PY_SUBGID_FILE")
    for file in "$NOVA_LXD_PY_SUBUID_FILE" "$NOVA_LXD_PY_SUBGID_FILE"; do
        if _nova_lxd_py_has_range "$file" "$user" "$size"; then
            continue
        fi
        echo "nova-lxd-py: adding $user:$start:$size to $file"
        echo "$user:$start:$size" | sudo tee -a "$file" >/dev/null
    done
}

function nova_lxd_py_ensure_lxcfs {
    local path=$NOVA_LXD_PY_LXCFS_PATH
    if [[ -z "$path" || -e "$path/proc/meminfo" ]]; then
        return 0
    fi
    start_service lxcfs
    if [[ ! -e "$path/proc/meminfo" ]]; then
        warn $LINENO "lxcfs is not mounted at $path: guests will see \
the host's memory and CPUs in /proc"
    fi
}

# The guests' root (a subordinate id, not the stack user) reads the
# cached images and the container directories: every directory above them
# needs search permission for others. Only devstack's own directories are
# changed; others are reported.
function nova_lxd_py_make_traversable {
    local dir
    dir=$(dirname "$1")
    while [[ "$dir" != "/" && "$dir" != "." ]]; do
        if [[ -d "$dir" && -z $(find "$dir" -maxdepth 0 -perm -o=x) ]]; then
            if [[ "$dir/" == "$DEST/"* || "$dir/" == "$DATA_DIR/"* ]]; then
                echo "nova-lxd-py: giving others search permission on $dir"
                sudo chmod o+x "$dir"
            else
                warn $LINENO "$dir is closed to others: unprivileged \
containers below it cannot start"
            fi
        fi
        dir=$(dirname "$dir")
    done
}


# Extra
# -----

function nova_lxd_py_create_flavor {
    local name=$NOVA_LXD_PY_FLAVOR_NAME
    if openstack --os-cloud devstack-admin flavor show "$name" \
            >/dev/null 2>&1; then
        return 0
    fi
    openstack --os-cloud devstack-admin flavor create \
        --vcpus "$NOVA_LXD_PY_FLAVOR_VCPUS" \
        --ram "$NOVA_LXD_PY_FLAVOR_RAM" \
        --disk "$NOVA_LXD_PY_FLAVOR_DISK" \
        --property "trait:$NOVA_LXD_PY_HOST_TRAIT=required" \
        "$name"
}

function nova_lxd_py_upload_image {
    local name=$NOVA_LXD_PY_IMAGE_NAME file=$NOVA_LXD_PY_IMAGE_FILE
    if openstack --os-cloud devstack-admin image show "$name" \
            >/dev/null 2>&1; then
        return 0
    fi
    if [[ -z "$file" ]]; then
        file=$DATA_DIR/nova-lxd-py/busybox-rootfs.tar.gz
        mkdir -p "$(dirname "$file")"
        "$(_nova_lxd_py_python)" -m nova_lxd_py.tests.guest_image "$file"
    fi
    # The driver reads the format from the bytes; Glance's formats must
    # agree. img_hv_type and hw_vm_mode keep it off hosts that boot VMs.
    openstack --os-cloud devstack-admin image create \
        --disk-format "$NOVA_LXD_PY_IMAGE_DISK_FORMAT" \
        --container-format "$NOVA_LXD_PY_IMAGE_CONTAINER_FORMAT" --public \
        --property img_hv_type=lxc --property hw_vm_mode=exe \
        --file "$file" "$name"
}


# Unstack and clean
# -----------------

function stop_nova_lxd_py {
    local path name
    path=$(_nova_lxd_py_container_path)
    if ! sudo test -d "$path"; then
        return 0
    fi
    # Thaw first: a frozen (paused or suspended) container cannot stop.
    for name in $(sudo lxc-ls -P "$path" -1); do
        sudo lxc-unfreeze -P "$path" -n "$name" || true
        sudo lxc-stop -k -P "$path" -n "$name" || true
    done
}

function cleanup_nova_lxd_py {
    local link
    stop_nova_lxd_py
    sudo rm -rf "$(_nova_lxd_py_container_path)" \
        "$(_nova_lxd_py_image_cache_path)" "$DATA_DIR/nova-lxd-py"
    if link=$(_nova_lxd_py_nova_virt_dir 2>/dev/null)/lxc_py && \
            [[ -L "$link" ]]; then
        rm -f "$link"
    fi
    # Subordinate id ranges stay: files owned by them may outlive devstack.
}


# Dispatch
# --------

if is_service_enabled nova-lxd-py; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        if is_service_enabled n-cpu n-api; then
            echo_summary "Installing nova-lxd-py"
            install_nova_lxd_py
        fi
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        if is_service_enabled n-cpu; then
            echo_summary "Configuring nova-compute for system containers"
            configure_nova_lxd_py
        fi
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        if is_service_enabled n-api; then
            echo_summary "Creating the container flavor and image"
            nova_lxd_py_create_flavor
            nova_lxd_py_upload_image
        fi
    fi

    if [[ "$1" == "unstack" ]]; then
        stop_nova_lxd_py
    fi

    if [[ "$1" == "clean" ]]; then
        cleanup_nova_lxd_py
    fi
fi

# Restore xtrace
$_XTRACE_NOVA_LXD_PY
