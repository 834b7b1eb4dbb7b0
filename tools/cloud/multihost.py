"""The multi-host steps of the smoke test (``cloud.sh up --computes N``).

Boots one server on each of the first two compute hosts on the tenant
network, checks that they ping each other over VXLAN (from inside each
guest, run in its host's namespaces) and answer ping from the network's
DHCP namespace, and that each host's containers exist only in its own
mount namespace. Then, when the driver can move servers
(``nova_lxd_py.virt.migration``), the moves: resize to a bigger flavor
(to the other host) and confirm, cold migration and revert, cold
migration to a named host and confirm; and when it reports
``supports_evacuate``, evacuation from a host whose nova-compute died,
after which that nova-compute, started again, removes what the evacuated
server left there and keeps its other servers.

Steps print PASS, FAIL or N/A (moves the driver does not have yet) with
their times; smoke.py sums them up with its own.
"""

import importlib.util
import json
import re
import os
import shlex
import subprocess
import sys
import time

from smoke import _indent
from smoke import check
from smoke import NotRun
from smoke import StepFailed

WAIT_SECONDS = 300
PING_SECONDS = 60
CLEANUP_SECONDS = 180
# Server-side microversions of the commands below: migrate --host (2.56),
# evacuate without onSharedStorage (2.29), service set --down (2.11).
COMPUTE_API = '2.56'
LIVE_PING_SECONDS = 25


def _driver_capability(name):
    """The installed driver's capability ``name`` (in a child process: the
    driver module pulls in all of Nova)."""
    proc = subprocess.run(
        [sys.executable, '-c', 'import sys; from nova_lxd_py.virt import '
         'driver; sys.exit(0 if driver.LXCDriver.capabilities.get(%r) '
         'else 1)' % name], capture_output=True, timeout=120)
    return proc.returncode == 0


class MultiHost:
    def __init__(self, args, conn):
        self.args = args
        self.conn = conn
        self.hosts = json.loads(args.multihost)
        check(len(self.hosts) >= 2, 'not a multi-host cloud: %s' %
              list(self.hosts))
        self.names = list(self.hosts)[:2]
        self.results = []
        self.timings = {}
        self.servers = {}     # label -> server id
        self.prefix = 'smoke-mh-%d' % time.time()
        self.network = None
        self.dead = None      # a host whose nova-compute evacuate killed
        self.moves = importlib.util.find_spec(
            'nova_lxd_py.virt.migration') is not None
        self.evacuates = _driver_capability('supports_evacuate')
        self.lives = importlib.util.find_spec(
            'nova_lxd_py.virt.live_migration') is not None

    # -- tools -------------------------------------------------------------

    def osc(self, *argv, timeout=WAIT_SECONDS, api=COMPUTE_API):
        cmd = ['openstack', '--os-cloud', self.args.cloud,
               '--os-compute-api-version', api] + list(argv)
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout)
        check(proc.returncode == 0, '`%s` exited %d: %s' % (
            ' '.join(cmd), proc.returncode, proc.stderr.strip()[-800:]))
        return proc.stdout

    def on(self, host, argv, timeout=60):
        """Run ``argv`` in compute host ``host``'s namespaces."""
        return subprocess.run(shlex.split(self.hosts[host]) + list(argv),
                              capture_output=True, text=True,
                              timeout=timeout)

    def container_dir(self, server_id):
        return os.path.join(self.args.container_path, server_id)

    def has_container(self, host, server_id):
        return self.on(host, ['test', '-d', self.container_dir(
            server_id)]).returncode == 0

    def other(self, host):
        return [n for n in self.names if n != host][0]

    def server(self, label):
        return self.conn.compute.get_server(self.servers[label])

    def host_of(self, label):
        return self.server(label).compute_host

    def wait_status(self, label, wanted, seconds=WAIT_SECONDS):
        deadline = time.monotonic() + seconds
        while True:
            server = self.server(label)
            if server.status == wanted and not server.task_state:
                return server
            check(server.status != 'ERROR', 'server %s went to ERROR: %s' % (
                label, (server.fault or {}).get('message')))
            check(time.monotonic() < deadline, 'server %s still %s/%s after '
                  '%d s, not %s' % (label, server.status, server.task_state,
                                    seconds, wanted))
            time.sleep(1)

    def address(self, label):
        ports = list(self.conn.network.ports(device_id=self.servers[label]))
        check(len(ports) == 1, 'ports of %s: %s' % (label, ports))
        return ports[0].fixed_ips[0]['ip_address']

    def _until(self, run, what):
        started = time.monotonic()
        while True:
            proc = run()
            if proc.returncode == 0:
                return time.monotonic() - started
            check(time.monotonic() - started < PING_SECONDS,
                  '%s: no answer after %d s: %s' % (
                      what, PING_SECONDS,
                      (proc.stdout + proc.stderr).strip()[-300:]))
            time.sleep(0.5)

    def dhcp_ping(self, label):
        address = self.address(label)
        cmd = ['ip', 'netns', 'exec', 'qdhcp-' + self.network.id, 'ping',
               '-c', '1', '-W', '1', address]
        return self._until(
            lambda: subprocess.run(cmd, capture_output=True, text=True,
                                   timeout=30),
            '%s (%s) from qdhcp' % (label, address))

    def guest_ping(self, src, dst):
        """Ping server ``dst`` from inside server ``src``."""
        host, address = self.host_of(src), self.address(dst)
        cmd = ['lxc-attach', '-n', self.servers[src], '-P',
               self.args.container_path, '--', '/bin/ping', '-c', '1', '-W',
               '2', address]
        return self._until(lambda: self.on(host, cmd),
                           '%s -> %s (%s)' % (src, dst, address))

    def pings(self, label, peer):
        return '%s answers from qdhcp after %.1f s and from %s (on %s) ' \
            'after %.1f s' % (label, self.dhcp_ping(label), peer,
                              self.host_of(peer), self.guest_ping(peer, label))

    def boot(self, label, host):
        self.servers[label] = self.osc(
            'server', 'create', '--flavor', self.args.flavor, '--image',
            self.args.image, '--network', self.args.network,
            '--availability-zone', 'nova:' + host, '-f', 'value', '-c', 'id',
            '%s-%s' % (self.prefix, label)).strip()

    def need_moves(self):
        if not self.moves:
            raise NotRun('nova_lxd_py.virt.migration is not in the '
                         'installed driver')

    def need_evacuate(self):
        if not self.evacuates:
            raise NotRun('the driver does not report supports_evacuate '
                         '(Nova refuses to rebuild its servers elsewhere)')

    def last_action(self, label):
        """The server's newest instance action with its events, for a
        failure message (why a move ended where it did)."""
        try:
            actions = json.loads(self.osc('server', 'event', 'list',
                                          self.servers[label], '-f', 'json'))
            if not actions:
                return 'no instance actions'
            newest = max(actions, key=lambda a: a.get('Start Time') or '')
            shown = json.loads(self.osc(
                'server', 'event', 'show', self.servers[label],
                newest['Request ID'], '-f', 'json'))
            return json.dumps(shown, default=str)[-1500:]
        except (StepFailed, ValueError, KeyError) as e:
            return 'instance actions not readable: %s' % e

    def moved(self, label, status, to_host, seconds=30):
        """Wait for ``label`` to be ``status`` with no task on ``to_host``.
        The host is polled too (for ``seconds``) and a failure names the
        newest instance action, so that a move that Nova rolled back
        (NoValidHost: the server is ACTIVE again where it was) reads as
        that, not as a wrong host."""
        server = self.wait_status(label, status)
        deadline = time.monotonic() + seconds
        while server.compute_host != to_host and \
                time.monotonic() < deadline:
            time.sleep(1)
            server = self.wait_status(label, status)
        check(server.compute_host == to_host, '%s is on %s, not %s; newest '
              'action: %s' % (label, server.compute_host, to_host,
                              self.last_action(label)))
        return server

    def port_active(self, label, seconds=60):
        """The server's only port once Neutron reports it ACTIVE: after
        a re-plug (rebuild) the OVS agent reports it DOWN, then UP."""
        deadline = time.monotonic() + seconds
        port = self.port_of(label)
        while port.status != 'ACTIVE' and time.monotonic() < deadline:
            time.sleep(1)
            port = self.port_of(label)
        return port

    # -- steps ---------------------------------------------------------------

    def step_mh_boot(self):
        self.network = self.conn.network.find_network(self.args.network)
        check(self.network, 'no network %s' % self.args.network)
        started = time.monotonic()
        self.boot('a', self.names[0])
        self.boot('b', self.names[1])
        for label in ('a', 'b'):
            self.wait_status(label, 'ACTIVE')
        self.timings['mh_boot_two'] = time.monotonic() - started
        for label, host in zip(('a', 'b'), self.names):
            check(self.host_of(label) == host, 'server %s is on %s, not %s'
                  % (label, self.host_of(label), host))
            port = list(self.conn.network.ports(
                device_id=self.servers[label]))[0]
            check(port.binding_host_id == host and port.status == 'ACTIVE',
                  'port of %s: %s on %s' % (label, port.status,
                                            port.binding_host_id))
        return 'a %s on %s, b %s on %s: ACTIVE, ports ACTIVE and bound ' \
            'there' % (self.servers['a'], self.names[0], self.servers['b'],
                       self.names[1])

    def step_mh_dhcp_ping(self):
        return 'a (%s) after %.1f s, b (%s) after %.1f s' % (
            self.address('a'), self.dhcp_ping('a'), self.address('b'),
            self.dhcp_ping('b'))

    def step_mh_cross_ping(self):
        return 'a -> b %.1f s, b -> a %.1f s (VXLAN %s <-> %s)' % (
            self.guest_ping('a', 'b'), self.guest_ping('b', 'a'),
            self.names[0], self.names[1])

    def step_mh_isolation(self):
        for label, host in zip(('a', 'b'), self.names):
            sid = self.servers[label]
            check(self.has_container(host, sid), '%s: no %s on %s' % (
                label, self.container_dir(sid), host))
            other = self.other(host)
            check(not self.has_container(other, sid), '%s: %s seen on %s' % (
                label, self.container_dir(sid), other))
            info = self.on(other, ['lxc-info', '-n', sid, '-P',
                                   self.args.container_path, '-s'])
            check('RUNNING' not in info.stdout, '%s: liblxc on %s says %s' % (
                label, other, info.stdout.strip()))
        check(not os.path.exists(self.args.container_path),
              '%s exists in the host\'s own mount namespace' %
              self.args.container_path)
        return 'each container only in its own host\'s mount namespace; ' \
            'none in the host\'s'

    def step_resize(self):
        self.need_moves()
        source = self.host_of('a')
        started = time.monotonic()
        self.osc('server', 'resize', '--flavor', self.args.flavor_bigger,
                 self.servers['a'])
        self.moved('a', 'VERIFY_RESIZE', self.other(source))
        self.osc('server', 'resize', 'confirm', self.servers['a'])
        server = self.wait_status('a', 'ACTIVE')
        self.timings['resize_confirm'] = time.monotonic() - started
        check(server.flavor.get('original_name', server.flavor.get('name'))
              == self.args.flavor_bigger, 'flavor %s' % server.flavor)
        check(not self.has_container(source, self.servers['a']),
              '%s left on %s after confirm' % (
                  self.container_dir(self.servers['a']), source))
        return 'a %s -> %s, flavor %s, confirmed; %s' % (
            source, server.compute_host, self.args.flavor_bigger,
            self.pings('a', 'b'))

    def step_migrate_revert(self):
        self.need_moves()
        source = self.host_of('a')
        self.osc('server', 'migrate', self.servers['a'])
        self.moved('a', 'VERIFY_RESIZE', self.other(source))
        self.osc('server', 'resize', 'revert', self.servers['a'])
        self.moved('a', 'ACTIVE', source)
        check(not self.has_container(self.other(source), self.servers['a']),
              'container left on %s after revert' % self.other(source))
        return 'a migrated to %s and reverted: back on %s; %s' % (
            self.other(source), source, self.pings('a', 'b'))

    def step_migrate_host(self):
        self.need_moves()
        source = self.host_of('a')
        target = self.other(source)
        self.osc('server', 'migrate', '--host', target, self.servers['a'])
        self.moved('a', 'VERIFY_RESIZE', target)
        self.osc('server', 'resize', 'confirm', self.servers['a'])
        self.moved('a', 'ACTIVE', target)
        check(not self.has_container(source, self.servers['a']),
              'container left on %s after confirm' % source)
        return 'a migrated --host %s (cold), confirmed; %s' % (
            target, self.pings('a', 'b'))

    def guest_processes(self, label):
        """Server ``label``'s own processes (pid and command)."""
        proc = self.on(self.host_of(label), [
            'lxc-attach', '-n', self.servers[label], '-P',
            self.args.container_path, '--', '/bin/ps', '-o', 'pid,args'])
        check(proc.returncode == 0, 'ps in %s: %s' % (label, proc.stderr))
        return sorted(line.strip() for line in proc.stdout.splitlines()[1:]
                      if not line.split(None, 1)[1].startswith(
                          ('/bin/ps', 'ps ', '{ps}')))

    def step_live_migrate(self):
        if not self.lives:
            raise NotRun('nova_lxd_py.virt.live_migration is not in the '
                         'installed driver')
        # A server of its own ('live'), so that the moves after this one
        # start from a server that never moved live.
        self.boot('live', self.other(self.host_of('b')))
        self.wait_status('live', 'ACTIVE')
        self.dhcp_ping('live')
        self.guest_ping('b', 'live')
        source = self.host_of('live')
        target = self.other(source)
        before = self.guest_processes('live')
        # b pings it every 50 ms through the move (busybox ping in b).
        pinger = subprocess.Popen(
            shlex.split(self.hosts[self.host_of('b')]) + [
                'lxc-attach', '-n', self.servers['b'], '-P',
                self.args.container_path, '--', '/bin/ping', '-i', '0.05',
                '-w', str(LIVE_PING_SECONDS), '-q', self.address('live')],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            started = time.monotonic()
            self.osc('server', 'migrate', '--live-migration', '--host',
                     target, self.servers['live'])
            self.moved('live', 'ACTIVE', target, seconds=60)
            self.timings['live_migrate'] = time.monotonic() - started
            out, _ = pinger.communicate(timeout=LIVE_PING_SECONDS + 30)
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.communicate()
        check(not self.has_container(source, self.servers['live']),
              'container left on %s after the live migration' % source)
        after = self.guest_processes('live')
        check(after == before, 'the guest\'s processes changed: %s, then %s'
              % (before, after))
        counts = re.search(r'(\d+) packets transmitted, (\d+) (?:packets )?'
                           r'received', out)
        check(counts, 'ping from b said: %s' % out.strip()[-300:])
        sent, received = int(counts.group(1)), int(counts.group(2))
        self.timings['live_migrate_pings_lost'] = sent - received
        self.conn.compute.delete_server(self.servers.pop('live'))
        return ('server live %s -> %s in %.1f s, the same %d processes; b '
                'pinged it every 50 ms: %d sent, %d lost (%.2f s without '
                'answers)' % (source, target, self.timings['live_migrate'],
                              len(after), sent, sent - received,
                              (sent - received) * 0.05))

    def port_of(self, label):
        ports = list(self.conn.network.ports(device_id=self.servers[label]))
        check(len(ports) == 1, 'ports of %s: %s' % (label, ports))
        return ports[0]

    def step_rebuild(self):
        self.need_moves()
        host, before = self.host_of('a'), self.port_of('a')
        self.osc('server', 'rebuild', '--image', self.args.image,
                 self.servers['a'])
        self.moved('a', 'ACTIVE', host)
        after = self.port_active('a')
        check(after.id == before.id and after.binding_host_id == host and
              after.status == 'ACTIVE' and
              after.mac_address == before.mac_address,
              'port after rebuild: %s %s on %s, MAC %s (before: %s %s on '
              '%s, MAC %s)' % (after.id, after.status, after.binding_host_id,
                               after.mac_address, before.id, before.status,
                               before.binding_host_id, before.mac_address))
        return 'a rebuilt on %s from %s, port %s kept (bound there, ' \
            'ACTIVE); %s' % (host, self.args.image, after.id,
                             self.pings('a', 'b'))

    def _shelve_to(self, label, target):
        source = self.host_of(label)
        self.osc('server', 'shelve', self.servers[label])
        self.wait_status(label, 'SHELVED_OFFLOADED')
        check(not self.has_container(source, self.servers[label]),
              'container left on %s after shelve offload' % source)
        # unshelve --host: microversion 2.91.
        self.osc('server', 'unshelve', '--host', target, self.servers[label],
                 api='2.91')
        self.moved(label, 'ACTIVE', target)
        check(self.port_of(label).binding_host_id == target,
              'port of %s not bound to %s' % (label, target))

    def step_unshelve_other(self):
        """There and back, so that the later steps find ``a`` where they
        expect it (not beside ``b``)."""
        self.need_moves()
        source = self.host_of('a')
        target = self.other(source)
        self._shelve_to('a', target)
        there = self.pings('a', 'b')
        self._shelve_to('a', source)
        return 'a shelved (offloaded from %s), unshelved --host %s (%s), ' \
            'and back to %s; %s' % (source, target, there, source,
                                    self.pings('a', 'b'))

    def step_evacuate(self):
        self.need_evacuate()
        dead = self.host_of('a')
        # A bystander on the host that dies: it must survive the recovery.
        self.boot('c', dead)
        self.wait_status('c', 'ACTIVE')
        started = time.monotonic()
        self.dead = dead
        subprocess.run([self.args.cloud_sh, 'compute', 'kill', dead],
                       check=True, capture_output=True, timeout=120)
        self.osc('compute', 'service', 'set', '--down', dead, 'nova-compute')
        self.osc('server', 'evacuate', self.servers['a'])
        self.moved('a', 'ACTIVE', self.other(dead))
        self.timings['evacuate'] = time.monotonic() - started
        return 'nova-compute on %s killed, its containers stopped, forced ' \
            'down; a rebuilt on %s; %s' % (dead, self.other(dead),
                                           self.pings('a', 'b'))

    def step_recover(self):
        self.need_evacuate()
        check(self.dead, 'no host was killed')
        dead = self.dead
        self.revive()
        deadline = time.monotonic() + WAIT_SECONDS
        while self.has_container(dead, self.servers['a']):
            check(time.monotonic() < deadline, '%s still on %s after %d s' % (
                self.container_dir(self.servers['a']), dead, WAIT_SECONDS))
            time.sleep(2)
        check(self.host_of('c') == dead and
              self.has_container(dead, self.servers['c']),
              'the bystander c is gone from %s' % dead)
        self.osc('server', 'reboot', '--hard', '--wait', self.servers['c'])
        self.wait_status('c', 'ACTIVE')
        return 'nova-compute on %s back: the evacuated a\'s container ' \
            'removed there, c kept and rebooted; %s' % (
                dead, self.pings('c', 'a'))

    def revive(self):
        """Start the nova-compute evacuate killed; no longer forced down."""
        if self.dead:
            subprocess.run([self.args.cloud_sh, 'compute', 'start',
                            self.dead], check=True, capture_output=True,
                           timeout=120)
            # Nova refuses --up while the host's evacuation records are
            # 'done': the restarted nova-compute first removes what was
            # evacuated from it and completes them (as an operator would
            # wait for before bringing the host back).
            deadline = time.monotonic() + WAIT_SECONDS
            while True:
                try:
                    self.osc('compute', 'service', 'set', '--up', self.dead,
                             'nova-compute')
                    break
                except StepFailed as e:
                    check(time.monotonic() < deadline, str(e))
                    time.sleep(2)
            self.dead = None

    def step_mh_cleanup(self):
        self.revive()
        for sid in self.servers.values():
            self.conn.compute.delete_server(sid, ignore_missing=True)
        deadline = time.monotonic() + CLEANUP_SECONDS
        for label, sid in self.servers.items():
            while self.conn.compute.find_server(sid, ignore_missing=True):
                check(time.monotonic() < deadline, 'server %s not deleted '
                      'after %d s' % (label, CLEANUP_SECONDS))
                time.sleep(1)
        known = {s.id for s in self.conn.compute.servers(all_projects=True)}
        left = []
        for host in self.hosts:
            listed = self.on(host, ['ls', '-1', self.args.container_path])
            left += ['%s on %s' % (name, host)
                     for name in listed.stdout.split() if name not in known]
        check(not left, 'containers Nova does not know: %s' % left)
        deleted, self.servers = sorted(self.servers), {}
        return 'servers %s deleted; no unknown container on any host' % (
            ', '.join(deleted))

    STEPS = ('mh_boot', 'mh_dhcp_ping', 'mh_cross_ping', 'mh_isolation',
             'resize', 'migrate_revert', 'migrate_host', 'live_migrate',
             'rebuild',
             'unshelve_other', 'evacuate',
             'recover', 'mh_cleanup')

    def run(self):
        failed = False
        for name in self.STEPS:
            if failed and name != 'mh_cleanup':
                self.results.append((name, 'SKIP', 0.0, 'after a failure'))
                print('%-4s %-14s %6.1fs  %s' % ('SKIP', name, 0.0,
                                                 'after a failure'))
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
        if self.servers:
            print('cleanup: deleting %s' % ', '.join(self.servers.values()))
            for sid in self.servers.values():
                self.conn.compute.delete_server(sid, ignore_missing=True)
        return failed
