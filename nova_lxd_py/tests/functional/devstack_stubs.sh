#!/bin/bash
#
# Stand-ins for the devstack functions that devstack/plugin.sh and
# devstack/settings call, for devstack_harness.py. Each records its
# call as one line in $STUB_LOG; iniset really edits the ini file, and
# sudo runs its command as the current user (chown only when that is root).
# External commands (openstack, lxc-*) are scripts in $STUB_BIN.

: "${STUB_LOG:?}" "${STUB_PYTHON:?}"

function _stub_record {
    echo "$*" >>"$STUB_LOG"
}

function is_service_enabled {
    local service
    for service in "$@"; do
        if [[ ",$ENABLED_SERVICES," == *",$service,"* ]]; then
            return 0
        fi
    done
    return 1
}

function enable_service {
    ENABLED_SERVICES=$ENABLED_SERVICES,$1
}

function echo_summary {
    echo "$*"
}

function warn {
    _stub_record "warn $2"
    echo "[WARNING] $2" >&2
}

function die {
    _stub_record "die $2"
    echo "[ERROR] $2" >&2
    exit 1
}

function install_package {
    _stub_record "install_package $*"
}

function pip_install {
    _stub_record "pip_install $*"
}

function setup_develop {
    _stub_record "setup_develop $*"
}

function start_service {
    _stub_record "start_service $*"
}

function sudo {
    _stub_record "sudo $*"
    # The CRIU build is recorded, not run (it takes a minute and apt).
    if [[ "$1" == */tools/criu/build.sh ]]; then
        return "${STUB_CRIU_BUILD_RC:-0}"
    fi
    if [[ "$1" == "chown" && $EUID -ne 0 ]]; then
        return 0
    fi
    "$@"
}

# iniset [-sudo] FILE SECTION OPTION VALUE
function iniset {
    if [[ "$1" == "-sudo" ]]; then
        shift
    fi
    local file=$1 section=$2 option=$3
    shift 3
    _stub_record "iniset $file $section $option $*"
    "$STUB_PYTHON" - "$file" "$section" "$option" "$*" <<'EOF'
import configparser
import sys

path, section, option, value = sys.argv[1:]
ini = configparser.RawConfigParser()
ini.optionxform = str
ini.read(path)
if section != 'DEFAULT' and not ini.has_section(section):
    ini.add_section(section)
ini.set(section, option, value)
with open(path, 'w') as f:
    ini.write(f)
EOF
}

# devstack's: the variable named $2 as True/False, $1 when it is unset.
function trueorfalse {
    local default=$1 value=${!2:-}
    case "${value:-$default}" in
        1|yes|Yes|YES|true|True|TRUE|on|On|ON) echo True ;;
        *) echo False ;;
    esac
}
