"""The console relay with a pty pair standing in for a guest's console and
a child process for the process that holds it."""

import os
import socket
import subprocess
import threading
import time

from oslotest import base

from nova_lxd_py.console import relay

TIMEOUT = 5


def read_until(read, wanted):
    seen = b''
    deadline = time.monotonic() + TIMEOUT
    while wanted not in seen:
        if time.monotonic() > deadline:
            raise AssertionError('no %r in %r' % (wanted, seen))
        data = read()
        if not data:
            raise AssertionError('closed; got %r' % seen)
        seen += data
    return seen


class ConsoleServerTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.holder = subprocess.Popen(['sleep', '60'])
        self.addCleanup(self._end_holder)
        self.guest_ends = []     # pty slaves: the "guest" side
        self.consoles = []
        self.closed = threading.Event()
        self.server = relay.ConsoleServer(
            'guest', '127.0.0.1', 0, self.holder.pid, self._open_console,
            on_close=lambda server: self.closed.set())
        self.addCleanup(self.server.stop)

    def _end_holder(self):
        self.holder.kill()
        self.holder.wait()

    def _open_console(self):
        master, slave = os.openpty()
        self.guest_ends.append(slave)
        self.addCleanup(os.close, slave)
        # What keeps the console taken: its other end is seen closed.
        holder, self.kept = socket.socketpair()
        self.addCleanup(self.kept.close)
        console = relay.Console(master, [holder.detach()])
        self.consoles.append(console)
        return console

    def guest(self, index):
        """The guest end of the index-th console opened, once it is."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.guest_ends) <= index:
            self.assertLess(time.monotonic(), deadline, 'no console opened')
            time.sleep(0.01)
        return self.guest_ends[index]

    def connect(self):
        port = self.server._listener.getsockname()[1]
        client = socket.create_connection(('127.0.0.1', port), TIMEOUT)
        self.addCleanup(client.close)
        return client

    def test_bytes_flow_both_ways(self):
        client = self.connect()
        client.sendall(b'typed\n')
        guest = read_until(lambda: os.read(self.guest(0), 100), b'\n')
        self.assertEqual(b'typed\n', guest)
        os.write(self.guest(0), b'answer\n')
        self.assertIn(b'answer', read_until(lambda: client.recv(100),
                                            b'answer'))

    def test_second_client_refused_first_kept(self):
        first = self.connect()
        first.sendall(b'one\n')
        read_until(lambda: os.read(self.guest(0), 100), b'one')
        second = self.connect()
        self.assertIn(b'in use', read_until(lambda: second.recv(100),
                                            b'client.'))
        self.assertEqual(b'', second.recv(100))
        self.assertEqual(1, len(self.consoles))
        os.write(self.guest(0), b'still\n')
        read_until(lambda: first.recv(100), b'still')

    def test_client_leaving_frees_console_for_next(self):
        first = self.connect()
        first.sendall(b'x\n')
        read_until(lambda: os.read(self.guest(0), 100), b'x')
        first.close()
        # The holder descriptors are closed: the console is given back.
        self.kept.settimeout(TIMEOUT)
        self.assertEqual(b'', self.kept.recv(1))
        second = self.connect()
        second.sendall(b'y\n')
        read_until(lambda: os.read(self.guest(1), 100), b'y')

    def test_unavailable_console_told_to_client(self):
        def unavailable():
            raise relay.ConsoleUnavailable('Unable to allocate tty')
        self.server._open_console = unavailable
        client = self.connect()
        self.assertIn(b'Unable to allocate tty',
                      read_until(lambda: client.recv(100), b'tty'))
        self.assertFalse(self.server.closed)

    def test_holder_exit_closes_server_and_client(self):
        client = self.connect()
        client.sendall(b'x\n')
        read_until(lambda: os.read(self.guest(0), 100), b'x')
        self._end_holder()
        self.assertTrue(self.closed.wait(TIMEOUT))
        while client.recv(100):   # the guest's echo, then the end
            pass
        self.assertRaises(OSError, self.connect)

    def test_stop_closes_server(self):
        self.server.stop()
        self.assertTrue(self.server.closed)
        self.assertTrue(self.closed.is_set())
        self.assertRaises(OSError, self.connect)
        self.server.stop()   # again: nothing happens

    def test_gone_holder_refused(self):
        self._end_holder()
        self.assertRaises(relay.ConsoleUnavailable, relay.ConsoleServer,
                          'guest', '127.0.0.1', 0, self.holder.pid,
                          self._open_console)


class ReceiveConsoleTest(base.BaseTestCase):

    def _send(self, address):
        master, slave = os.openpty()
        self.addCleanup(os.close, slave)
        with socket.socket(socket.AF_UNIX) as peer:
            peer.connect(address)
            socket.send_fds(peer, [b'console'], [master])
        os.close(master)
        return ''

    def test_console_from_root_received(self):
        if os.geteuid() != 0:
            self.skipTest('a console is believed from root only')
        console = relay.receive_console(self._send, '\0test-console-')
        self.addCleanup(console.close)
        self.assertTrue(os.isatty(console.pty))

    def test_reason_raised_when_nothing_sent(self):
        self.assertRaisesRegex(
            relay.ConsoleUnavailable, 'busy', relay.receive_console,
            lambda address: 'busy', '\0test-console-')


class ConsoleCloseTest(base.BaseTestCase):

    def test_second_close_leaves_reused_descriptors_alone(self):
        master, slave = os.openpty()
        self.addCleanup(os.close, slave)
        console = relay.Console(master)
        console.close()
        # The number is given out again, here to a socket of someone else.
        other = socket.socket()
        self.addCleanup(other.close)
        if other.fileno() != master:
            other.close()
            r, w = os.pipe()
            self.addCleanup(os.close, w)
            self.addCleanup(os.close, r)
            reused = r if r == master else w
        else:
            reused = other.fileno()
        console.close()
        os.fstat(reused)   # still open: the second close did nothing
        self.assertIsNone(console.pty)
