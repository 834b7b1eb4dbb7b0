"""Flavor bandwidth limits (quota:vif_*) on real containers: TCP transfers
between a guest and a peer network namespace on the port's bridge, timed,
and the qdiscs on the port's host end (run as root).

The peer namespace, its veth pair and the bridge are named from fresh
random ids and removed after the test; addresses are on 198.18.0.0/15 in
the guest and the peer namespace only (see test_vif).
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import fixtures  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.tests.functional import test_vif  # noqa: E402
from nova_lxd_py.vif import naming  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402

LIMIT_KB = 256                 # quota:vif_*_average, KB/s
LIMIT_BYTES = LIMIT_KB * 1000
PAYLOAD = 2 * 1024 * 1024      # bytes per timed transfer
PORT = 5001

# Runs in the peer namespace: serves (send, as HTTP) or takes (receive)
# PAYLOAD bytes over one TCP connection and prints the seconds it took,
# from the connection to the last byte.
PEER_SCRIPT = r'''
import socket, sys, time
mode, size = sys.argv[1], int(sys.argv[2])
server = socket.create_server(('0.0.0.0', int(sys.argv[3])))
server.settimeout(60)
print('ready', flush=True)
conn, _ = server.accept()
conn.settimeout(60)
start = time.monotonic()
if mode == 'send':   # as an HTTP server, for the guest's wget
    while b'\r\n\r\n' not in conn.recv(65536):
        pass
    conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n' % size)
    conn.sendall(b'\0' * size)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):      # the guest closes once it has it all
        pass
else:
    got = 0
    while got < size:
        data = conn.recv(65536)
        if not data:
            break
        got += len(data)
    assert got >= size, got
print('%.3f' % (time.monotonic() - start), flush=True)
'''


def tc_show(*argv):
    return subprocess.run(['tc'] + list(argv), capture_output=True,
                          text=True, check=True).stdout


class PeerNamespace(fixtures.Fixture):
    """A network namespace with one veth end on the network's bridge, at
    address .200 of the network's /24."""

    def __init__(self, network):
        super().__init__()
        self.net = network

    def _setUp(self):
        suffix = '%08x' % random.getrandbits(32)
        self.name = 'qosns' + suffix
        outer, inner = 'qpo' + suffix, 'qpi' + suffix
        self.address = self.net.prefix + '.200'
        self._run('ip', 'netns', 'add', self.name)
        self.addCleanup(self._run, 'ip', 'netns', 'del', self.name)
        self._run('ip', 'link', 'add', outer, 'type', 'veth', 'peer',
                  'name', inner)
        self.addCleanup(test_vif.delete_link, outer)
        self._run('ip', 'link', 'set', inner, 'netns', self.name)
        self._run('ip', 'link', 'set', outer, 'mtu', str(test_vif.MTU),
                  'master', self.net.bridge, 'up')
        self.ns('ip', 'link', 'set', inner, 'mtu', str(test_vif.MTU), 'up')
        self.ns('ip', 'addr', 'add', self.address + '/24', 'dev', inner)

    @staticmethod
    def _run(*argv):
        subprocess.run(argv, check=True, capture_output=True)

    def ns(self, *argv):
        self._run('ip', 'netns', 'exec', self.name, *argv)

    def serve(self, mode, size=PAYLOAD, port=PORT):
        """Start PEER_SCRIPT; returns the process once it listens."""
        proc = subprocess.Popen(
            ['ip', 'netns', 'exec', self.name, sys.executable, '-c',
             PEER_SCRIPT, mode, str(size), str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        self.addCleanup(proc.wait)
        assert proc.stdout.readline().strip() == 'ready', proc.stderr.read()
        return proc


class QosTest(test_vif.VifTestCase):

    def guest_on_bridge(self, **extra_specs):
        vif = self.net.port(1)
        guest, _ = self.spawn_on(vif, instance=self.make_instance(
            **extra_specs))
        self.configure(guest, vif)
        peer = self.useFixture(PeerNamespace(self.net))
        return guest, vif, peer

    def rate(self, guest, peer, direction):
        """Bytes/s of PAYLOAD sent to (inbound) or by the guest."""
        if direction == 'inbound':
            server = peer.serve('send')
            command = 'wget -q -O /dev/null http://%s:%d/' % (
                peer.address, PORT)
        else:
            server = peer.serve('receive')
            command = ('dd if=/dev/zero bs=65536 count=%d 2>/dev/null | '
                       'nc %s %d' % (PAYLOAD // 65536, peer.address, PORT))
        code, out = container.run_in_guest(guest.uuid, ['sh', '-c', command],
                                           90)
        self.assertEqual(0, code, out)
        stdout, stderr = server.communicate(timeout=90)
        self.assertEqual(0, server.returncode, stderr)
        return PAYLOAD / float(stdout.strip())

    def assert_limited(self, rate):
        self.assertTrue(0.5 * LIMIT_BYTES <= rate <= 1.3 * LIMIT_BYTES,
                        '%.0f bytes/s for a limit of %d' % (rate,
                                                            LIMIT_BYTES))

    def test_inbound_limit_shapes_what_the_guest_receives(self):
        guest, vif, peer = self.guest_on_bridge(**{
            'quota:vif_inbound_average': str(LIMIT_KB)})
        self.assertIn('tbf 1: root', tc_show('qdisc', 'show', 'dev',
                                             naming.host_name(vif)))
        rate = self.rate(guest, peer, 'inbound')
        print('inbound limited to %d B/s: %.0f B/s' % (LIMIT_BYTES, rate))
        self.assert_limited(rate)
        # Not the other way.
        self.assertGreater(self.rate(guest, peer, 'outbound'),
                           4 * LIMIT_BYTES)

    def test_outbound_limit_shapes_what_the_guest_sends(self):
        guest, vif, peer = self.guest_on_bridge(**{
            'quota:vif_outbound_average': str(LIMIT_KB),
            'quota:vif_outbound_burst': '64'})
        ifb = naming.ifb_name(vif)
        self.assertIn('tbf 1: root', tc_show('qdisc', 'show', 'dev', ifb))
        self.assertIn('Egress Redirect', tc_show(
            'filter', 'show', 'dev', naming.host_name(vif), 'ingress'))
        rate = self.rate(guest, peer, 'outbound')
        print('outbound limited to %d B/s: %.0f B/s' % (LIMIT_BYTES, rate))
        self.assert_limited(rate)
        # The ifb goes with the port.
        self.driver.unplug_vifs(guest, [vif])
        self.assertNotIn(ifb, test_vif.host_links())

    def test_without_limits_transfers_are_much_faster(self):
        guest, vif, peer = self.guest_on_bridge()
        self.assertNotIn('tbf', tc_show('qdisc', 'show', 'dev',
                                        naming.host_name(vif)))
        rate = self.rate(guest, peer, 'inbound')
        print('inbound without limit: %.0f B/s' % rate)
        self.assertGreater(rate, 4 * LIMIT_BYTES)

    def test_replug_without_limits_keeps_an_ingress_qdisc_not_ours(self):
        guest, vif, _ = self.guest_on_bridge()
        host_end = naming.host_name(vif)
        # As a QoS agent's policing would have it.
        subprocess.run(['tc', 'qdisc', 'add', 'dev', host_end, 'ingress'],
                       check=True)
        self.driver.plug_vifs(guest, [vif])
        self.assertIn('qdisc ingress', tc_show('qdisc', 'show', 'dev',
                                               host_end))

    def test_limits_survive_power_cycle_and_reach_hotplugged_port(self):
        guest, vif, peer = self.guest_on_bridge(**{
            'quota:vif_inbound_average': str(LIMIT_KB),
            'quota:vif_inbound_peak': str(2 * LIMIT_KB),
            'quota:vif_outbound_average': str(LIMIT_KB)})
        self.driver.power_off(guest)
        self.driver.power_on(self.context, guest, [vif])
        self.wait_booted(guest, times=2)
        qdiscs = tc_show('qdisc', 'show', 'dev', naming.host_name(vif))
        self.assertIn('tbf 1: root', qdiscs)
        self.assertIn('peakrate', qdiscs)
        self.assertIn('ingress', qdiscs)
        second = self.net.port(3)
        self.driver.attach_interface(self.context, guest, self.image_meta(),
                                     second)
        self.assertIn('tbf 1: root', tc_show('qdisc', 'show', 'dev',
                                             naming.host_name(second)))
        self.assertIn('tbf 1: root', tc_show('qdisc', 'show', 'dev',
                                             naming.ifb_name(second)))
        self.driver.detach_interface(self.context, guest, second)
        self.assertNotIn(naming.ifb_name(second), test_vif.host_links())

    def test_invalid_limit_refused_before_anything_is_made(self):
        for value in ('-1', '1.5', 'fast', str(2 ** 32)):
            vif = self.net.port(1)
            instance = self.make_instance(
                **{'quota:vif_inbound_average': value})
            self.assertRaises(
                exception.InvalidExtraSpec, self.driver.spawn, self.context,
                instance, self.image_meta(), [], None, {},
                network_info=test_vif.network_model.NetworkInfo([vif]))
            self.assert_no_links(vif)
            self.assertNotIn(naming.ifb_name(vif), test_vif.host_links())
            self.assertEqual([], self.container_dirs())
