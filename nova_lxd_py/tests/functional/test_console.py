"""The serial console on real containers: a TCP client types into the
guest's console shell (the busybox guest's inittab runs one) and reads
the output back, as nova-serialproxy relays it (run as root).

The ports are on loopback, from a range picked at random per test.
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import random  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402
from nova.console import serial  # noqa: E402
from nova.console import type as ctype  # noqa: E402
from nova import exception as nova_exception  # noqa: E402

from nova_lxd_py.console import relay  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import DriverTestCase  # noqa
from nova_lxd_py.tests.functional.driver_base import wait_until  # noqa
from nova_lxd_py.virt import container  # noqa: E402

LOOPBACK = '127.0.0.1'
READ_TIMEOUT = 10


class ConsoleClient:
    """A plain TCP client of a console port."""

    def __init__(self, console):
        self.sock = socket.create_connection((console.host, console.port),
                                             timeout=READ_TIMEOUT)
        self.seen = b''

    def run(self, command):
        """Type ``command`` and a newline; return the output up to the
        next prompt."""
        self.sock.sendall(command.encode() + b'\n')
        return self.read_until(b'# ')

    def read_until(self, wanted):
        deadline = time.monotonic() + READ_TIMEOUT
        while wanted not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError('no %r on the console; got %r'
                                     % (wanted, self.seen[-500:]))
            data = self.sock.recv(4096)
            if not data:
                raise AssertionError('console closed; got %r' % self.seen)
            self.seen += data
        text, _, self.seen = self.seen.partition(wanted)
        return text.decode(errors='replace')

    def rest(self):
        """What the server sends until it ends the connection."""
        try:
            while True:
                data = self.sock.recv(4096)
                if not data:
                    break
                self.seen += data
        except ConnectionResetError:
            pass
        return self.seen.decode(errors='replace')

    def closed_by_server(self):
        """True once the server ends the connection."""
        self.rest()
        return True

    def close(self):
        self.sock.close()


def port_open(console):
    try:
        socket.create_connection((console.host, console.port), 1).close()
    except ConnectionRefusedError:
        return False
    return True


class SerialConsoleTest(DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        base = random.randrange(20000, 60000, 100)
        self.flags(group='serial_console', enabled=True,
                   proxyclient_address=LOOPBACK,
                   port_range='%d:%d' % (base, base + 100))
        self.addCleanup(self._stop_servers)

    def _stop_servers(self):
        for server in list(self.driver._console_servers.values()):
            server.stop()

    def get_console(self, instance):
        return self.driver.get_serial_console(self.context, instance)

    def connect(self, console):
        client = ConsoleClient(console)
        self.addCleanup(client.close)
        return client

    def marked_command(self, client):
        """Run a command whose output differs from its echo; return the
        output expected."""
        token = random.randrange(10 ** 6)
        out = client.run('echo hello-$((%d+1)) > /tmp/x; cat /tmp/x' % token)
        expected = 'hello-%d' % (token + 1)
        self.assertIn(expected, out)
        return expected

    def test_console_runs_commands_and_keeps_logging(self):
        instance = self.spawn()
        console = self.get_console(instance)
        self.assertIsInstance(console, ctype.ConsoleSerial)
        self.assertEqual(LOOPBACK, console.host)
        client = self.connect(console)
        expected = self.marked_command(client)
        self.assertEqual(expected + '\n',
                         self.run_in_guest(instance, 'cat', '/tmp/x'))
        # liblxc's console log records the session as well.
        self.assertIn(expected, self.console(instance))
        self.assertIn('echo hello-$((', self.console(instance))

    def test_console_same_port_and_reconnect(self):
        instance = self.spawn()
        console = self.get_console(instance)
        self.assertEqual(console.port, self.get_console(instance).port)
        first = self.connect(console)
        self.marked_command(first)
        first.close()
        second = self.connect(console)
        self.marked_command(second)
        # One client at a time: a second one is told and let go, the
        # first keeps its console.
        third = self.connect(console)
        self.assertIn('in use by another client', third.rest())
        self.marked_command(second)
        self.assertEqual(console.port, self.get_console(instance).port)

    def test_power_off_closes_and_releases_port(self):
        instance = self.spawn()
        console = self.get_console(instance)
        client = self.connect(console)
        self.marked_command(client)
        self.driver.power_off(instance)
        self.assertTrue(client.closed_by_server())
        self.assertFalse(port_open(console))
        self.assertNotIn((console.host, console.port),
                         serial.ALLOCATED_PORTS)
        self.assertRaises(nova_exception.InstanceNotReady,
                          self.get_console, instance)
        # Started again: a console again, first free port of the range.
        self.driver.power_on(self.context, instance, [])
        self.wait_booted(instance, times=2)
        console = self.get_console(instance)
        self.marked_command(self.connect(console))

    def test_guest_stopping_by_itself_releases_port(self):
        # Not through the driver (as a guest that halts): the server sees
        # liblxc's monitor exit.
        instance = self.spawn()
        console = self.get_console(instance)
        client = self.connect(console)
        self.assertTrue(container.stop(instance.uuid))
        self.assertTrue(client.closed_by_server())
        wait_until(lambda: (console.host, console.port) not in
                   serial.ALLOCATED_PORTS, what='port released')
        self.assertFalse(port_open(console))
        self.assertEqual({}, self.driver._console_servers)

    def test_destroy_releases_port(self):
        instance = self.spawn()
        console = self.get_console(instance)
        self.connect(console)
        self.driver.destroy(self.context, instance, [])
        self.assertFalse(port_open(console))
        self.assertNotIn((console.host, console.port),
                         serial.ALLOCATED_PORTS)
        self.assertRaises(nova_exception.InstanceNotFound,
                          self.get_console, instance)

    def test_console_taken_elsewhere_is_reported_to_client(self):
        instance = self.spawn()
        console = self.get_console(instance)
        # Someone on the host holds the console (as lxc-console would).
        held = relay.receive_console(
            lambda address: container.send_console(instance.uuid, address),
            container.CONSOLE_ADDRESS_PREFIX)
        self.addCleanup(held.close)
        self.assertIn('Unable to allocate tty', self.connect(console).rest())
        held.close()
        self.marked_command(self.connect(console))

    def test_disabled_serial_console_unavailable(self):
        instance = self.spawn()
        self.flags(group='serial_console', enabled=False)
        self.assertRaises(nova_exception.ConsoleTypeUnavailable,
                          self.get_console, instance)
        self.assertEqual({}, self.driver._console_servers)

    def test_console_closing_before_it_is_registered_not_running(self):
        # The guest stops between the port's opening and its registration.
        instance = self.spawn()
        allocated = set(serial.ALLOCATED_PORTS)
        real = relay.ConsoleServer

        def closed_at_once(*args, **kwargs):
            server = real(*args, **kwargs)
            server.stop()
            return server

        self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.console.relay.ConsoleServer', autospec=True,
            side_effect=closed_at_once))
        self.assertRaises(nova_exception.InstanceNotReady,
                          self.get_console, instance)
        self.assertEqual({}, self.driver._console_servers)
        self.assertEqual(allocated, serial.ALLOCATED_PORTS)   # released

    def test_stopped_instance_not_running(self):
        instance = self.spawn(power_on=False)
        self.assertRaises(nova_exception.InstanceNotReady,
                          self.get_console, instance)
        self.assertEqual({}, self.driver._console_servers)

    def test_unknown_instance_not_found(self):
        self.assertRaises(nova_exception.InstanceNotFound,
                          self.get_console, self.make_instance())

    def test_send_console_refuses_other_addresses(self):
        instance = self.spawn()
        for address in ('/tmp/sock', '\0elsewhere', '\0nova-lxd-py-console-'
                        'x\0y'):
            self.assertRaises(ValueError, container.send_console,
                              instance.uuid, address)
        self.assertRaises(ValueError, container.send_console, '../x',
                          container.CONSOLE_ADDRESS_PREFIX + 'x')
