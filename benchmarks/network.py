"""Networking, config drive and serial console: LXCDriver against raw liblxc.

Run as root: ``python benchmarks/network.py [--runs N]``. Every figure is
a ratio of ours to a baseline measured in the same invocation, in rounds
whose order rotates:

1. spawn to reachable: ``LXCDriver.spawn`` with one 'bridge' port, against
   ``lxc-start`` of the same rootfs with a plain ``lxc.net.0.type = veth``
   on the same Linux bridge, until the guest (its address given by
   ``lxc-attach``) answers a ping from a peer network namespace on the
   bridge; then the destroy, and the links it leaves;
2. ping RTT and TCP throughput peer -> guest and guest -> peer over both,
   then the rate a flavor bandwidth limit lets through;
3. spawn with a config drive against spawn without one (and raw);
4. the serial console: first command through a new console, and each
   later connection, against an ``lxc-attach -- echo`` round trip.

Addresses are on 198.18.0.0/15, in the guests and the peer namespace only.
benchmarks/README.md has the details.
"""

import argparse
import datetime
import math
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

import spawn   # noqa: I100  (before the driver's imports: monkey patching)

from nova import context as nova_context  # noqa: E402,I100
from nova.network import model as network_model  # noqa: E402
from nova import objects  # noqa: E402
from nova.tests.unit import fake_instance  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

from nova_lxd_py.privsep import net as privsep_net  # noqa: E402
from nova_lxd_py.tests.functional import test_qos  # noqa: E402
from nova_lxd_py.tests.functional import test_vif  # noqa: E402
from nova_lxd_py.vif import driver as vifs  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402

CONF = spawn.CONF
CDIR = spawn.CDIR
BOOTED = b'guest init: booted'
RTT = re.compile(r'= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms')
CHUNK = 65536          # dd block in the guest
LINK_GONE_WAIT = 5.0   # s to wait for a port to leave the bridge
PEER_LINK_PREFIX = 'qpo'   # test_qos.PeerNamespace's end on the bridge
REFILL = 1.5           # s idle before a limited transfer: a full bucket

# The raw baseline's network: liblxc makes the veth pair itself.
RAW_NET = """\
lxc.net.0.type = veth
lxc.net.0.link = {bridge}
lxc.net.0.name = eth0
lxc.net.0.flags = up
lxc.net.0.mtu = {mtu}
"""


def attach(lxcpath, name, argv, timeout=300):
    """stdout of ``argv`` run in the guest by ``lxc-attach``."""
    done = subprocess.run(['lxc-attach', '-n', name, '-P', lxcpath,
                           '--clear-env', '--'] + list(argv),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError('%s in %s: %s' % (argv, name, done.stderr))
    return done.stdout


def bridge_members(bridge):
    """The bridge's ports but the peer namespace's."""
    return [dev for dev in test_vif.bridge_members(bridge)
            if not dev.startswith(PEER_LINK_PREFIX)]


# -- the two kinds of guest ---------------------------------------------------

class Ours(spawn.Driver):
    """LXCDriver, each guest with a fresh port of ``net`` (or none), the
    flavor's ``extra_specs``, a config drive or not."""

    def __init__(self, net=None, extra_specs=None, config_drive=False):
        super().__init__()
        self.net, self.config_drive = net, config_drive
        self.flavor.extra_specs = dict(extra_specs or {})
        self.context = nova_context.get_admin_context()
        self.lxcpath = CONF.lxc.container_path
        self.ports = {}

    def spawn(self, name, host_part=1):
        self._privsep_mode()
        instance = fake_instance.fake_instance_obj(
            self.context, uuid=name, id=next(self.ids), hostname='bench',
            flavor=self.flavor, config_drive='True' if self.config_drive
            else '')
        instance.trusted_certs = None
        instance.system_metadata = {}
        instance.metadata = {}
        instance.device_metadata = None
        instance.numa_topology = None
        instance.ec2_ids = objects.EC2Ids(
            instance_id='i-00000001', ami_id='ami-00000001',
            kernel_id=None, ramdisk_id=None)
        ports = [self.net.port(host_part)] if self.net else []
        self.instances[name], self.ports[name] = instance, ports
        self.driver.spawn(self.context, instance, self.image_meta, [], None,
                          {}, network_info=network_model.NetworkInfo(ports))

    def delete(self, name):
        self._privsep_mode()
        self.driver.destroy(self.context, self.instances.pop(name),
                            network_model.NetworkInfo(self.ports.pop(name)))

    def links_left(self, name, ports):
        """The port's devices still on the host, and bridge members."""
        return sorted(
            {dev for vif in ports for dev in (
                naming.host_name(vif), naming.peer_name(vif),
                naming.ifb_name(vif))
             if os.path.exists('/sys/class/net/' + dev)} |
            set(bridge_members(self.net.bridge)))


class Raw(spawn.Baseline):
    """``lxc-start`` of the same rootfs; liblxc makes a veth on the
    bridge (or, with no bridge, an empty network namespace)."""

    def __init__(self, lxcpath, text, idmap, bridge=None):
        super().__init__(lxcpath, text, idmap)
        self.bridge = bridge

    def spawn(self, name, host_part=1):
        super().spawn(name)

    def links_left(self, name, ports):
        return bridge_members(self.bridge)


def raw_config(cached, idmap, bridge=None):
    text = spawn.BASELINE_CONFIG.format(
        lower=cached.rootfs, cdir=CDIR, uid=idmap.uid_start,
        gid=idmap.gid_start, size=idmap.size)
    if bridge:
        text = text.replace('lxc.net.0.type = empty\n', RAW_NET.format(
            bridge=bridge, mtu=test_vif.MTU))
    return text


# -- measurements -------------------------------------------------------------

def ms_since(start):
    return (time.perf_counter() - start) * 1000.0


def rotated(items, i):
    shift = i % len(items)
    return items[shift:] + items[:shift]


def ping_until_reply(peer, address, seconds=10):
    """A ping every 2 ms from the peer until the first reply."""
    subprocess.run(['ip', 'netns', 'exec', peer.name, 'ping', '-n', '-q',
                    '-c', '1', '-i', '0.002', '-w', str(seconds), address],
                   check=True, capture_output=True)


def rtt(peer, address, count):
    """(min, avg, max, mdev) ms of ``count`` pings 10 ms apart."""
    out = subprocess.run(['ip', 'netns', 'exec', peer.name, 'ping', '-n',
                          '-q', '-c', str(count), '-i', '0.01', address],
                         check=True, capture_output=True, text=True).stdout
    return [float(x) for x in RTT.search(out).groups()]


def give_address(kind, name, address):
    attach(kind.lxcpath, name, ['sh', '-c', 'ip link set eth0 up && ip addr '
                                'add %s/24 dev eth0' % address])


def wait_links_gone(kind, name, ports):
    """(devices left when destroy returned, ms until none is left)."""
    start = time.perf_counter()
    left = kind.links_left(name, ports)
    first = list(left)
    while left and time.perf_counter() - start < LINK_GONE_WAIT:
        time.sleep(0.005)
        left = kind.links_left(name, ports)
    if left:
        raise RuntimeError('%s left after %.0f s: %s' % (
            name, LINK_GONE_WAIT, left))
    return first, ms_since(start) if first else 0.0


class PortSteps:
    """Times the driver's plug_all and unplug_all (part of its spawn and
    destroy): ``taken`` holds the ms of the last call of each."""

    def __init__(self):
        self.taken = {}

    def __enter__(self):
        self.originals = {attr: getattr(vifs, attr)
                          for attr in ('plug_all', 'unplug_all')}
        for attr, original in self.originals.items():
            setattr(vifs, attr, self._timed(attr, original))
        return self

    def _timed(self, attr, original):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.taken[attr] = ms_since(start)
        return timed_call

    def __exit__(self, *exc):
        for attr, original in self.originals.items():
            setattr(vifs, attr, original)


def reach_rounds(kinds, peer, address, rounds, warmup):
    """{label: {step: [ms]}}: spawn, address (lxc-attach), first ping
    reply, their total, destroy, and the wait until no link is left; for
    the driver also its plug_all (in spawn) and unplug_all (in destroy)."""
    with PortSteps() as ports:
        return _reach_rounds(kinds, peer, address, rounds, warmup,
                             ports.taken)


def _reach_rounds(kinds, peer, address, rounds, warmup, port_steps):
    samples = {label: {} for label in kinds}
    leftovers = {label: [] for label in kinds}
    for i in range(warmup + rounds):
        for label in rotated(list(kinds), i):
            kind, name = kinds[label], uuidutils.generate_uuid()
            peer.ns('ip', 'neigh', 'flush', 'all')
            start = time.perf_counter()
            kind.spawn(name)
            spawned = time.perf_counter()
            give_address(kind, name, address)
            addressed = time.perf_counter()
            ping_until_reply(peer, address)
            steps = {'spawn': (spawned - start) * 1000.0,
                     'address': (addressed - spawned) * 1000.0,
                     'first_reply': ms_since(addressed),
                     'reachable': ms_since(start)}
            if kind.state(name) != 'RUNNING':
                raise RuntimeError('%s: %s not running' % (label, name))
            ports = getattr(kind, 'ports', {}).get(name, [])
            start = time.perf_counter()
            kind.delete(name)
            steps['destroy'] = ms_since(start)
            left, steps['links_gone'] = wait_links_gone(kind, name, ports)
            if ports:
                steps['plug_all'] = port_steps['plug_all']
                steps['unplug_all'] = port_steps['unplug_all']
            if i >= warmup:
                for step, ms in steps.items():
                    samples[label].setdefault(step, []).append(ms)
                leftovers[label].append(left)
    return samples, leftovers


# Run in the peer namespace: fetches a file from the guest's httpd over
# one TCP connection and prints the seconds from connecting to the last
# byte (as test_qos.PEER_SCRIPT times what the peer serves or takes).
FETCH_SCRIPT = r"""
import socket, sys, time
address, port, path, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], \
    int(sys.argv[4])
start = time.monotonic()
conn = socket.create_connection((address, port), timeout=60)
conn.sendall(b'GET /%s HTTP/1.0\r\n\r\n' % path.encode())
got = 0
while True:
    data = conn.recv(1 << 20)
    if not data:
        break
    got += len(data)
assert got >= size, got
print('%.4f' % (time.monotonic() - start), flush=True)
"""
GUEST_HTTP_PORT = 8080
GUEST_DIR = '/tmp/bench'   # the guest's tmpfs


def serve_from_guest(kind, name, sizes):
    """Files of ``sizes`` bytes (zeros) in the guest's tmpfs, served by
    busybox httpd (which sends them with sendfile)."""
    attach(kind.lxcpath, name, ['sh', '-c', 'mkdir -p %s && %s && '
                                'httpd -p %d -h %s' % (
                                    GUEST_DIR, ' && '.join(
                                        'dd if=/dev/zero of=%s/%d bs=%d '
                                        'count=%d 2>/dev/null' % (
                                            GUEST_DIR, size, CHUNK,
                                            size // CHUNK)
                                        for size in sizes),
                                    GUEST_HTTP_PORT, GUEST_DIR)])


def transfer(peer, kind, name, address, direction, size):
    """Seconds to move ``size`` bytes between the peer and the guest over
    one TCP connection, timed by the peer up to the last byte: 'in' the
    guest receives (busybox wget from the peer's HTTP server, from its
    accepting the connection), 'out' the guest sends (the peer fetches a
    file from the guest's busybox httpd, from its connecting; see
    serve_from_guest). Python on the peer side either way."""
    if direction == 'in':
        server = peer.serve('send', size)
        attach(kind.lxcpath, name, [
            'wget', '-q', '-O', '/dev/null', 'http://%s:%d/' % (
                peer.address, test_qos.PORT)])
        stdout, stderr = server.communicate(timeout=300)
        code = server.returncode
    else:
        done = subprocess.run(
            ['ip', 'netns', 'exec', peer.name, sys.executable, '-c',
             FETCH_SCRIPT, address, str(GUEST_HTTP_PORT), str(size),
             str(size)], capture_output=True, text=True, timeout=300)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    if code:
        raise RuntimeError('peer %s: %s' % (direction, stderr))
    return float(stdout.strip())


def wire_rounds(kinds, names, addresses, peer, rounds, size, pings):
    """{label: {metric: [values]}}: ping RTT (ms, avg of ``pings``) and
    MB/s (10^6 bytes/s) each way, the guests up throughout."""
    samples = {label: {} for label in kinds}
    for i in range(rounds):
        for label in rotated(list(kinds), i):
            kind, name = kinds[label], names[label]
            got = samples[label]
            got.setdefault('rtt_avg_ms', []).append(
                rtt(peer, addresses[label], pings)[1])
            for direction in ('in', 'out'):
                got.setdefault('mb_per_s_%s' % direction, []).append(
                    size / 1e6 / transfer(peer, kind, name, addresses[label],
                                          direction, size))
    return samples


def limited_rounds(kind, name, address, peer, rounds, limit_kb):
    """The rate a limit of ``limit_kb`` KB/s lets through each way: two
    transfers of 2 and 4 s worth, each after the bucket refilled; the
    whole larger one, and the marginal rate between the two, which the
    burst (a second's worth) does not count in."""
    rate = limit_kb * 1000.0
    small, large = (int(math.ceil(n * rate / CHUNK)) * CHUNK for n in (2, 4))
    serve_from_guest(kind, name, (small, large))
    found = {}
    for _ in range(rounds):
        for direction in ('in', 'out'):
            seconds = []
            for size in (small, large):
                time.sleep(REFILL)
                seconds.append(transfer(peer, kind, name, address,
                                        direction, size))
            got = found.setdefault(direction, {'whole': [], 'marginal': []})
            got['whole'].append(large / seconds[1] / rate)
            got['marginal'].append((large - small) /
                                   max(seconds[1] - seconds[0], 1e-3) / rate)
    return {'limit_kb_per_s': limit_kb, 'bytes': [small, large],
            'rate_over_limit': found}


class ConsoleClient:
    """A TCP client of the console port, as nova-serialproxy is."""

    def __init__(self, console):
        self.sock = socket.create_connection((console.host, console.port),
                                             timeout=10)
        self.seen = b''

    def read_until(self, wanted):
        while wanted not in self.seen:
            data = self.sock.recv(4096)
            if not data:
                raise RuntimeError('console closed: %r' % self.seen[-300:])
            self.seen += data
        self.seen = self.seen.partition(wanted)[2]

    def command(self, start):
        """Type a command whose output differs from its echo; ms from
        ``start`` to the first echoed byte and to the output."""
        token = random.randrange(10 ** 6)
        self.sock.sendall(b'echo bench-$((%d+1))\n' % token)
        self.read_until(b'echo bench-')
        echoed = ms_since(start)
        self.read_until(b'\nbench-%d' % (token + 1))
        self.read_until(b'# ')   # nothing left for the next client
        return echoed, ms_since(start)

    def close(self):
        self.sock.close()


def console_rounds(drv, name, rounds, cycles):
    """{metric: [ms]}: a new console (get_serial_console, connect, first
    command), each later connection (connect, a command, close), and the
    baseline, an ``lxc-attach -- echo`` round trip of the same guest."""
    instance = drv.instances[name]
    found = {key: [] for key in ('get_serial_console', 'first_echo',
                                 'first_output', 'connection_echo',
                                 'connection', 'attach_echo')}
    for _ in range(rounds):
        drv.driver._close_serial_console(instance)   # a new server each round
        start = time.perf_counter()
        console = drv.driver.get_serial_console(None, instance)
        found['get_serial_console'].append(ms_since(start))
        client = ConsoleClient(console)
        echoed, output = client.command(start)
        client.close()
        found['first_echo'].append(echoed)
        found['first_output'].append(output)
        for i in range(cycles):
            for step in rotated(['console', 'attach'], i):
                start = time.perf_counter()
                if step == 'attach':
                    token = str(random.randrange(10 ** 6))
                    if attach(drv.lxcpath, name, ['echo', token]).strip() \
                            != token:
                        raise RuntimeError('lxc-attach echo lost')
                    found['attach_echo'].append(ms_since(start))
                    continue
                client = ConsoleClient(console)
                echoed, _ = client.command(start)
                client.close()
                found['connection_echo'].append(echoed)
                found['connection'].append(ms_since(start))
    return found


# -- set-up, report -----------------------------------------------------------

def stats(samples):
    return {key: spawn.summary(values) for key, values in samples.items()}


def ratio(ours, base, key='median'):
    return ours[key] / base[key]


def line(what, ours, base, unit='ms', fmt='%8.1f'):
    """One table row: ours and the baseline (median [min-max]), and the
    ratio of the medians (of the minimums)."""
    def cell(s):
        return (fmt + ' [' + fmt.strip() + '-' + fmt.strip() + ']') % (
            s['median'], s['min'], s['max'])
    print('%-34s %-28s %-28s %6.2f (%.2f)  %s' % (
        what, cell(ours), cell(base), ratio(ours, base), ratio(ours, base,
                                                               'min'), unit))


def print_report(r):
    print('\nmedian [min-max] over %d rounds; ratio ours / baseline of the '
          'medians (of the minimums)' % r['runs'])
    print('%-34s %-28s %-28s %s' % ('', 'ours', 'baseline', 'ratio'))
    reach = r['reach']['stats']
    print('-- 1. one bridge port: spawn to reachable (baseline: lxc-start, '
          'liblxc veth)')
    for step in ('spawn', 'address', 'first_reply', 'reachable',
                 'destroy'):
        line(step, reach['driver'][step], reach['raw'][step])
    print('   of which the port (driver): plug_all %.1f ms in spawn, '
          'unplug_all %.1f ms in destroy (medians); spawn without a port: '
          'see 3.' % (reach['driver']['plug_all']['median'],
                      reach['driver']['unplug_all']['median']))
    for label in ('driver', 'raw'):
        print('   %s: devices left when destroy returned: %s; gone %.1f ms '
              'later at most' % (label, sorted(
                  {d for x in r['reach']['left'][label] for d in x}) or
                  'none', reach[label]['links_gone']['max']))
    wire = r['wire']['stats']
    print('-- 2. through the port (%d MB per transfer; MB/s = 10^6 B/s)' % (
        r['wire']['bytes'] // 10 ** 6))
    line('ping rtt avg', wire['driver']['rtt_avg_ms'],
         wire['raw']['rtt_avg_ms'], 'ms', '%8.3f')
    line('TCP peer -> guest', wire['driver']['mb_per_s_in'],
         wire['raw']['mb_per_s_in'], 'MB/s', '%8.0f')
    line('TCP guest -> peer', wire['driver']['mb_per_s_out'],
         wire['raw']['mb_per_s_out'], 'MB/s', '%8.0f')
    lim = r['limit']
    if lim:
        print('   flavor limit %d KB/s each way: achieved / limit, median '
              '[min-max]' % lim['limit_kb_per_s'])
        for direction, label in (('in', 'inbound (peer -> guest)'),
                                 ('out', 'outbound (guest -> peer)')):
            got = lim['rate_over_limit'][direction]
            print('   %-26s whole %.0f MB: %.2f [%.2f-%.2f]   marginal: '
                  '%.2f [%.2f-%.2f]' % (
                      label, lim['bytes'][1] / 1e6,
                      statistics.median(got['whole']), min(got['whole']),
                      max(got['whole']), statistics.median(got['marginal']),
                      min(got['marginal']), max(got['marginal'])))
    cd = r['config_drive']['stats']
    print('-- 3. config drive (no port)')
    for op in spawn.OPS:
        line('%s: with / without drive' % op, cd['driver-cd'][op],
             cd['driver'][op])
        line('%s: with drive / raw' % op, cd['driver-cd'][op], cd['raw'][op])
        line('%s: without drive / raw' % op, cd['driver'][op], cd['raw'][op])
    con = r['console']['stats']
    print('-- 4. serial console (baseline: lxc-attach -- echo, same guest)')
    for key in ('get_serial_console', 'first_echo', 'first_output',
                'connection_echo', 'connection'):
        line(key, con[key], con['attach_echo'])
    print('load average (1, 5, 15 min): before %s, after %s; other work: %s'
          % (r['loadavg_before'], r['loadavg_after'], r['other_work']))


def other_work():
    """What else ran: a CI rehearsal, other containers."""
    found = []
    if subprocess.run(['pgrep', '-f', '/var/tmp/ci-clone'],
                      capture_output=True).returncode == 0:
        found.append('CI rehearsal running')
    monitors = subprocess.run(['pgrep', '-c', '-f', r'^\[lxc monitor\]'],
                              capture_output=True, text=True).stdout.strip()
    found.append('%s lxc monitors' % (monitors or 0))
    # The busiest processes, by CPU over their lifetime (ps's %CPU).
    busy = subprocess.run(['ps', '-eo', 'pcpu=,comm=', '--sort=-pcpu'],
                          capture_output=True, text=True).stdout
    found.append('busiest: ' + '; '.join(
        ' '.join(row.split()) for row in busy.splitlines()[:5]))
    return ', '.join(found)


def bench(base, args, net, peer):
    fetched = spawn.use_local_glance(base)
    idmap = host.idmap()
    # Warm the image cache; the raw guests run the very same tree.
    ours = Ours(net)
    name = uuidutils.generate_uuid()
    ours.spawn(name)
    ours.delete(name)
    cached, _ = ours.driver._images.ensure(None, spawn.IMAGE_ID, idmap, 0)
    raw_path = os.path.join(base, 'baseline')
    raw = Raw(raw_path, raw_config(cached, idmap, net.bridge), idmap,
              net.bridge)
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    work_before = other_work()

    # 1. Spawn to reachable, destroy.
    address = '%s.1' % net.prefix
    kinds = {'driver': ours, 'raw': raw}
    reach, left = reach_rounds(kinds, peer, address, args.runs, args.warmup)

    # 2. Through the port: both guests up, then a limited one.
    names, addresses = {}, {}
    peer.ns('ip', 'neigh', 'flush', 'all')   # .1 had other MACs
    for host_part, label in enumerate(kinds, start=1):
        names[label] = uuidutils.generate_uuid()
        addresses[label] = '%s.%d' % (net.prefix, host_part)
        kinds[label].spawn(names[label], host_part)
        give_address(kinds[label], names[label], addresses[label])
        ping_until_reply(peer, addresses[label])
    size = args.payload_mb * 1000000 // CHUNK * CHUNK
    try:
        for label, name in names.items():
            serve_from_guest(kinds[label], name, [size])
        wire = wire_rounds(kinds, names, addresses, peer, args.runs, size,
                           args.pings)
    finally:
        for label, name in names.items():
            kinds[label].delete(name)
    limit = {}
    if args.limit_kb:
        limited = Ours(net, {'quota:vif_inbound_average': args.limit_kb,
                             'quota:vif_outbound_average': args.limit_kb})
        name = uuidutils.generate_uuid()
        limited.spawn(name, 3)
        try:
            give_address(limited, name, '%s.3' % net.prefix)
            ping_until_reply(peer, '%s.3' % net.prefix)
            limit = limited_rounds(limited, name, '%s.3' % net.prefix, peer,
                                   args.limit_runs, args.limit_kb)
        finally:
            limited.delete(name)

    # 3. Config drive: spawn and delete, no port.
    with mock.patch('nova.network.security_group_api.'
                    'get_instance_security_groups',
                    return_value=[{'name': 'default'}]), \
            mock.patch('nova.objects.BlockDeviceMappingList.'
                       'get_by_instance_uuid',
                       return_value=objects.BlockDeviceMappingList(
                           objects=[])):
        cd = spawn.run_rounds(
            {'driver': Ours(), 'driver-cd': Ours(config_drive=True),
             'raw': Raw(raw_path, raw_config(cached, idmap), idmap)},
            args.runs, args.warmup)

    # 4. Serial console.
    low = random.randrange(20000, 60000, 100)
    CONF.set_override('enabled', True, group='serial_console')
    CONF.set_override('proxyclient_address', '127.0.0.1',
                      group='serial_console')
    CONF.set_override('port_range', '%d:%d' % (low, low + 100),
                      group='serial_console')
    console_drv = Ours()
    name = uuidutils.generate_uuid()
    console_drv.spawn(name)
    try:
        deadline = time.monotonic() + 30
        while BOOTED not in container.read_console_log(name, 1 << 16):
            if time.monotonic() > deadline:
                raise RuntimeError('the console guest did not boot')
            time.sleep(0.05)
        console = console_rounds(console_drv, name, args.console_runs,
                                 args.console_cycles)
    finally:
        console_drv.delete(name)
    if len(fetched) != 1:
        raise RuntimeError('image fetched %d times' % len(fetched))

    return {
        'when': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'host': spawn.host_facts(),
        'loadavg_before': loadavg_before,
        'loadavg_after': [round(x, 2) for x in os.getloadavg()],
        'other_work': '%s (before); %s (after)' % (work_before,
                                                   other_work()),
        'runs': args.runs, 'warmup': args.warmup,
        'reach': {'stats': {k: stats(v) for k, v in reach.items()},
                  'samples_ms': reach, 'left': left},
        'wire': {'stats': {k: stats(v) for k, v in wire.items()},
                 'samples': wire, 'bytes': size, 'pings': args.pings},
        'limit': limit,
        'config_drive': {'stats': {k: stats(v) for k, v in cd.items()},
                         'samples_ms': cd},
        'console': {'stats': stats(console), 'samples_ms': console,
                    'cycles': args.console_cycles},
        'raw_config': raw.config,
    }


def clean_ports(net):
    """The ifb devices of the ports (test_vif.Network removes the rest)."""
    for vif in getattr(net, 'ports', ()):
        test_vif.delete_link(naming.ifb_name(vif))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    for flag, default, text in (
            ('--runs', 15, 'timed rounds of spawn-to-reachable, throughput '
             'and config drive'),
            ('--warmup', 1, 'untimed rounds first'),
            ('--payload-mb', 100, 'MB (10^6 bytes) per unlimited transfer '
             '(the guest holds a file of that size in its tmpfs)'),
            ('--pings', 50, 'pings per RTT sample, 10 ms apart'),
            ('--limit-kb', 10000, 'quota:vif_{in,out}bound_average of the '
             'limited guest, KB/s (0: off)'),
            ('--limit-runs', 2, 'rounds of limited transfers'),
            ('--console-runs', 5, 'new consoles'),
            ('--console-cycles', 10, 'connections per console')):
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument('--output', help='JSON file (default: '
                        'benchmarks/results/network-<time>.json)')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: containers and namespaces are made for real')
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(
        'killed: cleaning up'))
    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-net-')
    os.chmod(base, 0o755)   # guests' root must reach the image cache
    net = test_vif.Network()
    net.setUp()
    peer = test_qos.PeerNamespace(net)
    try:
        spawn.configure(base, base, 'overlay')
        privsep_net.ensure_bridge(net.bridge)   # as a plug makes it
        peer.setUp()
        result = bench(base, args, net, peer)
    finally:
        spawn.kill_everything(base, base, None)
        if hasattr(peer, 'name'):
            peer.cleanUp()
        clean_ports(net)
        net.cleanUp()
    print_report(result)
    spawn.save(result, args.output, 'network')


if __name__ == '__main__':
    main()
