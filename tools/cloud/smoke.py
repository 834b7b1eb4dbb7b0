"""End-to-end smoke test of the single-host cloud, through its real services.

Drives one server on a Neutron network through its life with the
``openstack`` CLI (create, show, console log, stop, start, reboot, pause,
unpause, suspend, resume, delete) and checks after each step, on the host
itself, what liblxc and the cgroup freezer say about its container; runs a
command inside the guest; checks that its port is bound ``vif_type=ovs``
to this host and ACTIVE, and that the guest, which took its address by
DHCP, answers ping from the network's DHCP namespace (``qdhcp-<network
id>``) after boot and after every step that restarts or thaws it; that
delete leaves no device of the port on the host, in the host's namespace
or the switch's; and at the end that no container is left that Nova does
not know about.

The server boots with a key pair, user data and a config drive. Inside
the guest it reads the metadata service at 169.254.169.254 (Nova's
metadata API behind Neutron's DHCP-namespace proxy and metadata agent)
and the config drive at /config-drive (which it cannot write), and it
types a command into its serial console through nova-serialproxy's
websocket, the way Horizon's console does.

On a multi-host cloud (``cloud.sh up --computes N``) the same steps run
on its first compute host, through that host's namespaces (``--host-exec``,
the server placed there with ``--zone``; no serial console), and the steps
of ``multihost.py`` follow: servers on two hosts, VXLAN between them, and
the moves (resize, cold migration, evacuate) when the driver has them.

Run by ``tools/cloud/cloud.sh smoke`` (as root). Prints each step's time
and a closing ``smoke: N passed, N failed`` line; exits 1 on any failure.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives import serialization
import openstack

CGROUP_ROOT = '/sys/fs/cgroup'
WAIT_SECONDS = 180
PING_SECONDS = 60
# Host-side devices of a port: the driver's veth pair (vif.naming).
PORT_DEVICE_PREFIXES = ('tap', 'tin')
METADATA_URL = 'http://169.254.169.254/openstack/latest/'
METADATA_SECONDS = 30
CONFIG_DRIVE = '/config-drive/openstack/latest/'
CONSOLE_SECONDS = 20


class StepFailed(Exception):
    pass


class NotRun(Exception):
    """A step this cloud or driver has nothing to test for (N/A)."""


def check(condition, message):
    if not condition:
        raise StepFailed(message)


class WebSocket:
    """Just enough of an RFC 6455 client for a console: the handshake
    (with one subprotocol), masked binary frames out, frames in."""

    GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

    def __init__(self, url, protocol, timeout=5):
        parts = urllib.parse.urlsplit(url)
        check(parts.scheme == 'ws', 'not a ws:// URL: %s' % url)
        self.sock = socket.create_connection(
            (parts.hostname, parts.port or 80), timeout)
        self.buf = b''
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or '/') + ('?' + parts.query if parts.query
                                      else '')
        self.sock.sendall((
            'GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n'
            'Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n'
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n'
            '\r\n' % (path, parts.netloc, key, protocol)).encode())
        while b'\r\n\r\n' not in self.buf:
            self.buf += self._chunk()
        head, self.buf = self.buf.split(b'\r\n\r\n', 1)
        status, *lines = head.decode('latin-1').split('\r\n')
        check(status.split()[1:2] == ['101'], 'handshake answered %r' % status)
        headers = {k.strip().lower(): v.strip() for k, v in (
            line.split(':', 1) for line in lines if ':' in line)}
        accept = base64.b64encode(hashlib.sha1(
            (key + self.GUID).encode()).digest()).decode()
        check(headers.get('sec-websocket-accept') == accept,
              'bad Sec-WebSocket-Accept: %s' % headers)
        check(headers.get('sec-websocket-protocol') == protocol,
              'subprotocol %r, not %r' % (
                  headers.get('sec-websocket-protocol'), protocol))

    def _chunk(self):
        chunk = self.sock.recv(4096)
        if not chunk:
            raise EOFError('the websocket was closed')
        return chunk

    def _read(self, size):
        while len(self.buf) < size:
            self.buf += self._chunk()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def _frame(self, opcode, data):
        size = len(data)
        if size < 126:
            head = struct.pack('!BB', 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            head = struct.pack('!BBH', 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack('!BBQ', 0x80 | opcode, 0x80 | 127, size)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(
            b ^ mask[i % 4] for i, b in enumerate(data)))

    def send(self, data):
        self._frame(0x2, data)

    def recv(self):
        """The next data frame's payload; EOFError once closed."""
        while True:
            first, second = self._read(2)
            size = second & 0x7f
            if size == 126:
                size = struct.unpack('!H', self._read(2))[0]
            elif size == 127:
                size = struct.unpack('!Q', self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            data = self._read(size)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = first & 0x0f
            if opcode == 0x8:
                raise EOFError('the proxy closed the websocket: %r' % data)
            if opcode == 0x9:
                self._frame(0xA, data)
            elif opcode in (0x0, 0x1, 0x2):
                return data

    def close(self):
        try:
            self._frame(0x8, struct.pack('!H', 1000))
        except OSError:
            pass
        self.sock.close()


class Smoke:
    def __init__(self, args):
        self.args = args
        self.conn = openstack.connect(cloud=args.cloud)
        self.server_id = None
        self.suspended = None
        self.name = 'smoke-%d' % time.time()
        self.results = []
        self.timings = {}
        self.network = None
        self.port = None
        self.address = None
        self.keypair = None
        self.public_key = None
        self.user_data = ('#!/bin/sh\necho "user data of %s"\n' %
                          self.name).encode()

    # -- tools -------------------------------------------------------------

    def on_host(self, argv, **kwargs):
        """Run ``argv`` on the compute host (in its namespaces, if it has
        its own); the CompletedProcess."""
        prefix = shlex.split(self.args.host_exec or '')
        kwargs.setdefault('capture_output', True)
        kwargs.setdefault('timeout', 60)
        return subprocess.run(prefix + list(argv), **kwargs)

    def osc(self, *argv):
        cmd = ['openstack', '--os-cloud', self.args.cloud] + list(argv)
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=WAIT_SECONDS)
        check(proc.returncode == 0, '`%s` exited %d: %s' % (
            ' '.join(cmd), proc.returncode, proc.stderr.strip()[-800:]))
        return proc.stdout

    def lxc(self, tool, *argv):
        cmd = [tool, '-n', self.server_id, '-P', self.args.container_path]
        proc = self.on_host(cmd + list(argv), text=True)
        return proc.returncode, proc.stdout.strip() + proc.stderr.strip()

    def lxc_state(self):
        code, out = self.lxc('lxc-info', '-s', '-H')
        return out if code == 0 else 'UNDEFINED'

    def init_pid(self):
        code, out = self.lxc('lxc-info', '-p', '-H')
        check(code == 0 and out.isdigit(), 'no init pid: %s' % out)
        return int(out)

    def frozen(self):
        """The cgroup freezer's view of the container's init."""
        with open('/proc/%d/cgroup' % self.init_pid()) as f:
            lines = [line.rstrip('\n').split(':', 2) for line in f]
        for _, controllers, path in lines:
            if 'freezer' in controllers.split(','):
                state = os.path.join(CGROUP_ROOT, 'freezer', path.lstrip('/'),
                                     'freezer.state')
                with open(state) as f:
                    return f.read().strip() == 'FROZEN'
        for _, controllers, path in lines:
            if controllers == '':
                for base in (CGROUP_ROOT, os.path.join(CGROUP_ROOT,
                                                       'unified')):
                    events = os.path.join(base, path.lstrip('/'),
                                          'cgroup.events')
                    if os.path.exists(events):
                        with open(events) as f:
                            return 'frozen 1' in f.read().splitlines()
        raise StepFailed('no freezer cgroup for the container init')

    def guest(self, *argv):
        """Run ``argv`` in the guest; the CompletedProcess (bytes)."""
        return self.on_host(
            ['lxc-attach', '-n', self.server_id, '-P',
             self.args.container_path, '--'] + list(argv))

    def guest_http(self, url):
        """GET ``url`` from inside the guest (busybox wget; its own -T
        crashes in Debian 12's busybox, so timeout bounds it)."""
        return self.guest('/bin/timeout', '10', '/bin/wget', '-q', '-O',
                          '-', url)

    def guest_json(self, path):
        proc = self.guest('/bin/cat', path)
        check(proc.returncode == 0, 'cat %s in the guest exited %d: %s' % (
            path, proc.returncode, proc.stderr.decode(errors='replace')))
        return proc.stdout

    def guest_ps(self):
        code, out = self.lxc('lxc-attach', '--', '/bin/ps')
        check(code == 0, 'lxc-attach exited %d: %s' % (code, out))
        check('init' in out, 'no init in the guest ps: %s' % out)
        return out

    def ping(self):
        """Seconds until the guest answers ping from its network's DHCP
        namespace; StepFailed after PING_SECONDS."""
        started = time.monotonic()
        cmd = ['ip', 'netns', 'exec', 'qdhcp-' + self.network.id, 'ping',
               '-c', '1', '-W', '1', self.address]
        while True:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=30)
            if proc.returncode == 0:
                return time.monotonic() - started
            check(time.monotonic() - started < PING_SECONDS,
                  'no answer from %s after %d s: %s' % (
                      self.address, PING_SECONDS,
                      (proc.stdout + proc.stderr).strip()[-300:]))
            time.sleep(0.5)

    def port_links(self):
        """The port's devices left in the host's or the switch's
        namespace."""
        names = {(prefix + self.port.id)[:14]
                 for prefix in PORT_DEVICE_PREFIXES}
        found = []
        for netns in (None, self.args.ovs_netns):
            cmd = ['ip'] + (['-n', netns] if netns else []) + [
                '-o', 'link', 'show']
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 check=True).stdout
            for line in out.splitlines():
                name = line.split(':')[1].strip().split('@')[0]
                if name in names:
                    found.append('%s (%s)' % (name, netns or 'host'))
        return found

    def wait_status(self, wanted):
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            server = self.conn.compute.get_server(self.server_id)
            if server.status == wanted and not server.task_state:
                return server
            check(server.status != 'ERROR', 'server went to ERROR: %s' % (
                (server.fault or {}).get('message')))
            check(time.monotonic() < deadline, 'still %s/%s after %d s, '
                  'not %s' % (server.status, server.task_state,
                              WAIT_SECONDS, wanted))
            time.sleep(0.5)

    def expect(self, api_status, lxc_state, frozen=None):
        """Wait for ``api_status``; check liblxc and the freezer agree."""
        self.wait_status(api_status)
        state = self.lxc_state()
        if frozen:
            # The driver freezes through the cgroup, which liblxc's monitor
            # may not notice: the freezer itself is the judge.
            check(state in ('FROZEN', 'RUNNING'),
                  'liblxc says %s, expected FROZEN' % state)
        else:
            check(state == lxc_state,
                  'liblxc says %s, expected %s' % (state, lxc_state))
        if frozen is not None:
            check(self.frozen() == frozen, 'freezer: frozen=%s, expected %s'
                  % (not frozen, frozen))
        return state

    # -- steps ---------------------------------------------------------------

    def step_neutron(self):
        agents = [a for a in self.conn.network.agents(host=self.args.host)
                  if a.agent_type == 'Open vSwitch agent']
        check(agents and agents[0].is_alive,
              'no live Open vSwitch agent on %s' % self.args.host)
        net = self.conn.network.create_network(name=self.name)
        try:
            port = self.conn.network.create_port(
                network_id=net.id, binding_host_id=self.args.host)
            check(port.binding_vif_type == 'ovs',
                  'port bound as %r, not ovs' % port.binding_vif_type)
            self.conn.network.delete_port(port)
        finally:
            self.conn.network.delete_network(net)
        return 'OVS agent alive; a port on %s binds as vif_type=ovs (%s)' % (
            self.args.host, port.binding_vif_details)

    def step_create(self):
        self.network = self.conn.network.find_network(self.args.network)
        check(self.network, 'no network %s' % self.args.network)
        self.public_key = ed25519.Ed25519PrivateKey.generate().public_key(
        ).public_bytes(serialization.Encoding.OpenSSH,
                       serialization.PublicFormat.OpenSSH).decode()
        self.keypair = self.conn.compute.create_keypair(
            name=self.name, public_key=self.public_key)
        with tempfile.NamedTemporaryFile(prefix='smoke-user-data-') as f:
            f.write(self.user_data)
            f.flush()
            self.created_at = time.monotonic()
            zone = ['--availability-zone', self.args.zone] \
                if self.args.zone else []
            self.server_id = self.osc(
                'server', 'create', '--flavor', self.args.flavor, '--image',
                self.args.image, '--network', self.network.id,
                '--config-drive', 'true', '--user-data', f.name,
                '--key-name', self.name, '-f', 'value', '-c', 'id',
                *zone, self.name).strip()
        self.wait_status('ACTIVE')
        self.active_after = time.monotonic() - self.created_at
        self.expect('ACTIVE', 'RUNNING', frozen=False)
        return 'server %s (key pair, user data, config drive) ACTIVE ' \
            'after %.1f s, container RUNNING' % (self.server_id,
                                                 self.active_after)

    def step_port(self):
        ports = list(self.conn.network.ports(device_id=self.server_id))
        check(len(ports) == 1, 'ports of the server: %s' % ports)
        self.port = port = ports[0]
        check(port.binding_vif_type == 'ovs' and
              port.binding_host_id == self.args.host,
              'port %s bound as %r to %r, not ovs to %s' % (
                  port.id, port.binding_vif_type, port.binding_host_id,
                  self.args.host))
        check(port.status == 'ACTIVE',
              'port %s is %s' % (port.id, port.status))
        self.address = port.fixed_ips[0]['ip_address']
        return 'port %s ACTIVE, bound vif_type=ovs to %s, %s (%s)' % (
            port.id, self.args.host, self.address, port.binding_vif_details)

    def step_ping(self):
        self.ping()
        took = time.monotonic() - self.created_at
        self.timings['create_to_ping'] = took
        return ('%s answers from qdhcp-%s; %.1f s from create to ping '
                '(ACTIVE after %.1f s)' % (self.address, self.network.id,
                                           took, self.active_after))

    def step_show(self):
        return self.osc('server', 'show', self.server_id, '-c', 'name', '-c',
                        'status', '-c', 'OS-EXT-STS:power_state', '-c',
                        'OS-EXT-SRV-ATTR:host', '-c', 'image')

    def step_console_log(self):
        out = self.osc('console', 'log', 'show', self.server_id)
        check('guest init: booted' in out, 'no boot line in: %r' % out)
        check(re.search(r'guest dhcp: eth0 bound %s/' % re.escape(
            self.address), out), 'no DHCP lease line in: %r' % out)
        return out.strip()

    def step_guest_command(self):
        return self.guest_ps()

    def step_metadata(self):
        """meta_data.json from the metadata service, asked in the guest:
        its route to 169.254.169.254 came with its DHCP lease."""
        started = time.monotonic()
        while True:
            proc = self.guest_http(METADATA_URL + 'meta_data.json')
            if proc.returncode == 0:
                break
            if time.monotonic() - started > METADATA_SECONDS:
                routes = self.guest('/bin/ip', 'route').stdout.decode()
                raise StepFailed(
                    'wget %s in the guest exited %d after %d s: %s; the '
                    'guest\'s routes: %s' % (
                        METADATA_URL, proc.returncode, METADATA_SECONDS,
                        proc.stderr.decode(errors='replace').strip(),
                        routes.strip()))
            time.sleep(1)
        meta = json.loads(proc.stdout)
        check(meta.get('uuid') == self.server_id and
              meta.get('name') == self.name,
              'meta_data.json names %s/%s, not %s/%s' % (
                  meta.get('uuid'), meta.get('name'), self.server_id,
                  self.name))
        check(meta.get('public_keys', {}).get(self.name) ==
              self.public_key, 'not our key: %s' % meta.get('public_keys'))
        user_data = self.guest_http(METADATA_URL + 'user_data').stdout
        check(user_data == self.user_data, 'user_data from the service: '
              '%r' % user_data)
        route = [line.strip() for line in self.guest('/bin/ip', 'route')
                 .stdout.decode().splitlines()
                 if line.startswith('169.254.')]
        return ('%s from the guest after %.1f s: uuid, name, key and '
                'user_data are the server\'s (route: %s)' % (
                    METADATA_URL, time.monotonic() - started,
                    '; '.join(route) or 'none of its own'))

    def step_config_drive(self):
        meta = json.loads(self.guest_json(CONFIG_DRIVE + 'meta_data.json'))
        check(meta.get('uuid') == self.server_id,
              'config drive uuid %s' % meta.get('uuid'))
        check(meta.get('public_keys', {}).get(self.name) ==
              self.public_key, 'not our key: %s' % meta.get('public_keys'))
        user_data = self.guest_json(CONFIG_DRIVE + 'user_data')
        check(user_data == self.user_data, 'user_data: %r' % user_data)
        network = json.loads(
            self.guest_json(CONFIG_DRIVE + 'network_data.json'))
        macs = [link.get('ethernet_mac_address')
                for link in network.get('links', [])]
        check(macs == [self.port.mac_address],
              'network_data.json MACs %s, the port has %s' % (
                  macs, self.port.mac_address))
        proc = self.guest('/bin/sh', '-c',
                          'echo x > /config-drive/openstack/smoke')
        check(proc.returncode != 0, 'the guest wrote into /config-drive')
        return ('/config-drive: uuid, key, user_data, the port\'s MAC %s; '
                'a write fails: %s' % (
                    self.port.mac_address,
                    proc.stderr.decode(errors='replace').strip()))

    def step_serial_console(self):
        if self.args.no_serial_console:
            raise NotRun('no serial console on this cloud (nova-serialproxy '
                         'cannot reach a compute host\'s own network '
                         'namespace)')
        url = self.osc('console', 'url', 'show', '--serial', self.server_id,
                       '-f', 'value', '-c', 'url').strip()
        check(url.startswith('ws://'), 'console URL %r' % url)
        number = random.randrange(10000, 99999)
        # The shell's answer, not the tty's echo of what was typed.
        wanted = ('nova-serial-%d' % (number + 1)).encode()
        ws = WebSocket(url, 'binary')
        try:
            ws.send(b'echo nova-serial-$((%d+1))\n' % number)
            seen = b''
            deadline = time.monotonic() + CONSOLE_SECONDS
            while wanted not in seen:
                check(time.monotonic() < deadline, 'no %r from the console '
                      'after %d s; it sent: %r' % (wanted, CONSOLE_SECONDS,
                                                   seen[-300:]))
                try:
                    seen += ws.recv()
                except socket.timeout:
                    pass
        finally:
            ws.close()
        return '%s: typed echo nova-serial-$((%d+1)), the guest shell ' \
            'answered %s' % (re.sub(r'token=[^&]+', 'token=***', url),
                             number, wanted.decode())

    def step_stop(self):
        self.osc('server', 'stop', self.server_id)
        self.expect('SHUTOFF', 'STOPPED')
        return 'SHUTOFF, container STOPPED'

    def step_start(self):
        self.osc('server', 'start', self.server_id)
        self.expect('ACTIVE', 'RUNNING', frozen=False)
        self.guest_ps()
        return 'ACTIVE, container RUNNING, guest answers; ping after ' \
            '%.1f s' % self.ping()

    def step_reboot(self):
        before = self.init_pid()
        self.osc('server', 'reboot', '--wait', self.server_id)
        self.expect('ACTIVE', 'RUNNING', frozen=False)
        after = self.init_pid()
        check(after != before, 'init pid still %d: no reboot' % before)
        return 'ACTIVE, new guest init (host pid %d -> %d); ping after ' \
            '%.1f s' % (before, after, self.ping())

    def step_pause(self):
        self.osc('server', 'pause', self.server_id)
        state = self.expect('PAUSED', 'FROZEN', frozen=True)
        return 'PAUSED, cgroup freezer FROZEN (liblxc: %s)' % state

    def step_unpause(self):
        self.osc('server', 'unpause', self.server_id)
        self.expect('ACTIVE', 'RUNNING', frozen=False)
        self.guest_ps()
        return 'ACTIVE, thawed, guest answers'

    def guest_processes(self):
        """The guest's own processes (pid and command), not the ps."""
        code, out = self.lxc('lxc-attach', '--', '/bin/ps', '-o', 'pid,args')
        check(code == 0, 'lxc-attach exited %d: %s' % (code, out))
        return sorted(line.strip() for line in out.splitlines()[1:]
                      if not line.split(None, 1)[1].startswith(
                          ('/bin/ps', 'ps ', '{ps}')))

    def step_suspend(self):
        self.suspended = self.guest_processes()
        self.osc('server', 'suspend', self.server_id)
        self.wait_status('SUSPENDED')
        state = self.lxc_state()
        if state == 'STOPPED':
            # Suspended to disk: CRIU's checkpoint in the instance's
            # directory, no process of the guest left.
            path = os.path.join(self.args.container_path, self.server_id,
                                'checkpoint', 'pstree.img')
            check(self.on_host(['test', '-e', path]).returncode == 0,
                  'STOPPED without a checkpoint (%s)' % path)
            return 'SUSPENDED, checkpointed to disk by CRIU (liblxc: ' \
                'STOPPED, %d guest processes in the checkpoint)' % len(
                    self.suspended)
        self.suspended = None
        state = self.expect('SUSPENDED', 'FROZEN', frozen=True)
        return 'SUSPENDED, frozen in memory: no CRIU checkpoint (liblxc: ' \
            '%s)' % state

    def step_resume(self):
        self.osc('server', 'resume', self.server_id)
        self.expect('ACTIVE', 'RUNNING', frozen=False)
        self.guest_ps()
        how = 'thawed'
        if self.suspended is not None:
            now = self.guest_processes()
            check(now == self.suspended, 'the guest\'s processes changed '
                  'over suspend and resume: %s, then %s' % (
                      self.suspended, now))
            how = 'restored from its checkpoint, the same %d processes' % (
                len(now))
        return 'ACTIVE, %s; ping after %.1f s' % (how, self.ping())

    def step_delete(self):
        self.osc('server', 'delete', '--wait', self.server_id)
        check(self.lxc_state() == 'UNDEFINED', 'container still defined')
        path = os.path.join(self.args.container_path, self.server_id)
        check(self.on_host(['test', '-e', path]).returncode != 0,
              '%s is left' % path)
        self.server_id, deleted = None, self.server_id
        left = self.port_links()
        check(not left, 'devices of port %s left: %s' % (self.port.id,
                                                         left))
        return 'server %s gone; its container, directory and port ' \
            'devices too' % deleted

    def step_host_clean(self):
        known = {s.id for s in self.conn.compute.servers(all_projects=True)}
        path = self.args.container_path
        listed = self.on_host(['ls', '-1', path], text=True)
        on_host = set(listed.stdout.split()) if listed.returncode == 0 \
            else set()
        orphans = sorted(on_host - known)
        check(not orphans, 'containers Nova does not know: %s' % orphans)
        mountinfo = self.on_host(['cat', '/proc/self/mountinfo'], text=True,
                                 check=True).stdout.splitlines()
        # A live server's disk stays mounted (the demo's, say).
        mounts = [line for line in mountinfo if path in line and not any(
            os.path.join(path, uuid) + '/' in line for uuid in known)]
        check(not mounts, 'mounts left under %s: %s' % (path, mounts))
        return '%d container(s) on the host, all of live servers (%s)' % (
            len(on_host), ', '.join(sorted(on_host)) or 'none')

    STEPS = ('neutron', 'create', 'port', 'ping', 'show', 'console_log',
             'guest_command', 'metadata', 'config_drive', 'serial_console',
             'stop', 'start', 'reboot', 'pause', 'unpause', 'suspend',
             'resume', 'delete', 'host_clean')

    # -- runner --------------------------------------------------------------

    def run(self):
        failed = False
        for name in self.STEPS:
            if failed and name not in ('host_clean',):
                self.results.append((name, 'SKIP', 0.0, 'after a failure'))
                continue
            started = time.monotonic()
            try:
                detail = getattr(self, 'step_' + name)()
                outcome = 'PASS'
            except NotRun as e:
                detail, outcome = str(e), 'N/A'
            except Exception as e:
                detail, outcome, failed = '%s: %s' % (
                    type(e).__name__, e), 'FAIL', True
            took = time.monotonic() - started
            self.results.append((name, outcome, took, detail))
            print('%-4s %-14s %6.1fs  %s' % (outcome, name, took,
                                             _indent(detail)), flush=True)
        self.cleanup()
        return failed

    def cleanup(self):
        if self.server_id:
            print('cleanup: deleting server %s' % self.server_id)
            try:
                self.osc('server', 'delete', '--wait', self.server_id)
            except Exception as e:
                print('cleanup failed: %s' % e)
        if self.keypair:
            self.conn.compute.delete_keypair(self.keypair,
                                             ignore_missing=True)


def _indent(text):
    return str(text).replace('\n', '\n' + ' ' * 28)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    for opt in ('cloud', 'flavor', 'image', 'network', 'ovs-netns',
                'container-path', 'host', 'logs', 'timings'):
        parser.add_argument('--' + opt, required=True)
    parser.add_argument('--host-exec', help='command prefix that runs a '
                        'command in the compute host\'s namespaces')
    parser.add_argument('--zone', help='availability zone of the server '
                        '(nova:HOST puts it on HOST)')
    parser.add_argument('--no-serial-console', action='store_true')
    parser.add_argument('--multihost', metavar='JSON', help='the compute '
                        'hosts, {"name": "command prefix", ...}: run the '
                        'steps of multihost.py after these')
    parser.add_argument('--flavor-bigger', help='flavor a resize goes to')
    parser.add_argument('--cloud-sh', help='cloud.sh, which stops and '
                        'starts a host\'s nova-compute')
    args = parser.parse_args()
    smoke = Smoke(args)
    started = time.monotonic()
    failed = smoke.run()
    if args.multihost:
        import multihost
        hosts = multihost.MultiHost(args, smoke.conn)
        failed = hosts.run() or failed
        smoke.results += hosts.results
        smoke.timings.update(hosts.timings)
    not_run = sum(1 for r in smoke.results if r[1] == 'N/A')
    total = time.monotonic() - started
    with open(args.timings, 'w') as f:
        for name, outcome, took, _ in smoke.results:
            f.write('%-16s %-4s %6.1fs\n' % (name, outcome, took))
        for name, took in smoke.timings.items():
            f.write('%-16s      %6.1fs\n' % (name, took))
        f.write('%-16s      %6.1fs\n' % ('total', total))
    passed = sum(1 for r in smoke.results if r[1] == 'PASS')
    failures = sum(1 for r in smoke.results if r[1] not in ('PASS', 'N/A'))
    print('total %.1fs (timings in %s)' % (total, args.timings))
    if failed:
        print('On failure read %s/nova-compute.log first, then nova-api.log, '
              'nova-conductor.log and nova-scheduler.log.' % args.logs)
    if not_run:
        print('%d step(s) not applicable (N/A above)' % not_run)
    print('smoke: %d passed, %d failed' % (passed, failures))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
