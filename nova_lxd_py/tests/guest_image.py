"""Build small guest root file systems locally, from Debian's busybox-static.

Used by the tests, the benchmarks and the single-host demo: nothing is
downloaded. ``python -m nova_lxd_py.tests.guest_image OUT.tar.gz`` writes a
bootable rootfs tarball.
"""

import io
import os
import shutil
import subprocess
import sys
import tarfile

BUSYBOX = shutil.which('busybox') or '/bin/busybox'

# The last respawn line is a root shell on the console (the serial console
# tests type into it), without job control (+m): an interactive ash with
# job control keeps /dev/tty open, which CRIU cannot checkpoint ("ctty
# inheritance detected"), and live migration and suspend checkpoint it.
INITTAB = """\
::sysinit:/etc/init.d/rcS
::respawn:/bin/sh -c 'while :; do sleep 3600; done'
::respawn:-/bin/sh +m
::shutdown:/bin/echo "guest init: shutting down"
"""

RCS = """\
#!/bin/sh
mount -t tmpfs tmpfs /tmp 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
hostname -F /etc/hostname 2>/dev/null
echo "guest init: kernel $(uname -sr) on $(uname -m)"
echo "guest init: $(grep -c ^processor /proc/cpuinfo) CPU(s)"
echo "guest init: $(grep MemTotal /proc/meminfo)"
# eth0 (a port the guest booted with) by DHCP, in the background: with
# no DHCP server on its network (the functional tests' bridges) the guest
# boots as fast and keeps the addresses it is given by hand. It asks for
# classless static routes (option 121), Neutron's route to the metadata
# service at 169.254.169.254.
if [ -e /sys/class/net/eth0 ]; then
    udhcpc -i eth0 -f -T 2 -A 5 -O staticroutes \
        -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
fi
echo "guest init: booted $(hostname)"
"""

# busybox udhcpc's hook: $1 is the event, the lease is in the environment
# ($mask: the prefix length; $staticroutes: option 121 as "net/len gateway"
# pairs, which replace the router option when given, as RFC 3442 says).
# It never flushes the device, so addresses given by hand stay.
UDHCPC_SCRIPT = """\
#!/bin/sh
routes() {
    while [ $# -ge 2 ]; do
        if [ "$2" = 0.0.0.0 ]; then
            ip route replace "$1" dev "$interface"
        else
            ip route replace "$1" via "$2" dev "$interface"
        fi
        shift 2
    done
}
case "$1" in
deconfig)
    ip link set "$interface" up
    ;;
bound|renew)
    ip addr replace "$ip/${mask:-24}" dev "$interface"
    if [ -n "$staticroutes" ]; then
        routes $staticroutes
    elif [ -n "$router" ]; then
        ip route replace default via "${router%% *}" dev "$interface"
    fi
    if [ -n "$dns" ]; then
        for server in $dns; do echo "nameserver $server"; done \
            >/etc/resolv.conf
    fi
    echo "guest dhcp: $interface $1 $ip/${mask:-24}" >/dev/console
    ;;
esac
exit 0
"""


# Debian's busybox-static has no chpasswd applet: the same contract
# ("user:password" lines on stdin), hashing with busybox's mkpasswd.
CHPASSWD = """\
#!/bin/sh
umask 077
status=0
while IFS= read -r line; do
    user=${line%%:*}
    pass=${line#*:}
    if ! grep -q "^$user:" /etc/passwd; then
        echo "chpasswd: user '$user' does not exist" >&2
        status=1
        continue
    fi
    hash=$(printf '%s' "$pass" | mkpasswd -s -m sha512) || exit 1
    { grep -v "^$user:" /etc/shadow; echo "$user:$hash:19000:0:99999:7:::"; \\
        } > /etc/shadow.new && mv /etc/shadow.new /etc/shadow || exit 1
done
exit $status
"""


def applets():
    out = subprocess.run([BUSYBOX, '--list'], check=True,
                         capture_output=True, text=True).stdout
    return [a for a in out.split() if a and a != 'busybox']


# procps' free reads /proc/meminfo (which lxcfs virtualises); busybox's
# asks the kernel with sysinfo(2), which shows the host.
HOST_PROGRAMS = ('/usr/bin/free',)


def _with_libraries(program):
    """``program`` and the shared objects it loads, as host paths."""
    out = subprocess.run(['ldd', program], capture_output=True, text=True,
                         check=True).stdout
    paths = [program]
    for line in out.splitlines():
        words = line.split()
        if '=>' in words and len(words) > 2 and words[2].startswith('/'):
            paths.append(words[2])
        elif words and words[0].startswith('/'):
            paths.append(words[0])
    return paths


def busybox_members(marker=None, with_init=True):
    """(TarInfo, bytes or None) pairs for a minimal bootable busybox rootfs."""
    members = []

    def add(name, kind=tarfile.DIRTYPE, data=None, mode=0o755, link=''):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.linkname = kind, mode, link
        info.mtime = 1700000000
        if data is not None:
            info.size = len(data)
        members.append((info, data))

    for d in ('bin', 'sbin', 'etc', 'etc/init.d', 'proc', 'sys', 'dev',
              'tmp', 'root', 'run', 'var', 'var/log', 'usr', 'usr/bin',
              'usr/share', 'usr/share/udhcpc'):
        add(d, mode=0o1777 if d == 'tmp' else 0o755)
    with open(BUSYBOX, 'rb') as f:
        add('bin/busybox', tarfile.REGTYPE, f.read())
    programs = [p for p in HOST_PROGRAMS if os.path.exists(p)]
    dirs = set()
    for path in sorted({f for p in programs for f in _with_libraries(p)}):
        parent = os.path.dirname(path).lstrip('/')
        for i in range(1, parent.count('/') + 2):
            sub = '/'.join(parent.split('/')[:i])
            made = ('bin', 'sbin', 'usr', 'usr/bin', 'etc')
            if sub not in dirs and sub not in made:
                dirs.add(sub)
                add(sub)
        with open(path, 'rb') as f:
            add(path.lstrip('/'), tarfile.REGTYPE, f.read())
    skip = {'init'} | {os.path.basename(p) for p in programs}
    for applet in applets():
        if applet not in skip:
            add('bin/' + applet, tarfile.SYMTYPE, link='busybox',
                mode=0o777)
    if with_init:
        add('sbin/init', tarfile.SYMTYPE, link='/bin/busybox', mode=0o777)
    add('etc/inittab', tarfile.REGTYPE, INITTAB.encode(), 0o644)
    add('etc/init.d/rcS', tarfile.REGTYPE, RCS.encode(), 0o755)
    add('usr/share/udhcpc/default.script', tarfile.REGTYPE,
        UDHCPC_SCRIPT.encode(), 0o755)
    add('etc/passwd', tarfile.REGTYPE, b'root:x:0:0:root:/root:/bin/sh\n',
        0o644)
    add('etc/group', tarfile.REGTYPE, b'root:x:0:\n', 0o644)
    add('etc/shadow', tarfile.REGTYPE, b'root:*:19000:0:99999:7:::\n',
        0o600)
    if 'chpasswd' not in applets():
        add('usr/sbin')
        add('usr/sbin/chpasswd', tarfile.REGTYPE, CHPASSWD.encode(), 0o755)
    if marker:
        add('etc/image-marker', tarfile.REGTYPE, marker.encode(), 0o644)
    return members


def write_tarball(path, marker=None, with_init=True, compression='gz'):
    mode = 'w:' + compression if compression else 'w'
    with tarfile.open(path, mode) as tar:
        for info, data in busybox_members(marker, with_init):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def write_tree(path, marker=None):
    """The same rootfs as a plain directory (for raw lxc-start baselines)."""
    os.makedirs(path, exist_ok=True)
    tmp = path.rstrip('/') + '.tar'
    write_tarball(tmp, marker, compression='')
    with tarfile.open(tmp) as tar:
        # Python before 3.11.4 (Debian 12's) has no extraction filters; this
        # module stays free of the driver's imports (it runs standalone).
        trusted = ({'filter': 'fully_trusted'}
                   if hasattr(tarfile, 'fully_trusted_filter') else {})
        tar.extractall(path, numeric_owner=True, **trusted)
    os.unlink(tmp)
    return path


if __name__ == '__main__':
    write_tarball(sys.argv[1], marker=sys.argv[2] if len(sys.argv) > 2
                  else None)
