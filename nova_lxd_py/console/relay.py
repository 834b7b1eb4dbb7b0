"""A guest's console on a TCP port: what nova-serialproxy connects to.

One ConsoleServer per guest whose console was asked for. A thread polls
the listening socket, the one client at a time (as libvirt's TCP serial
device: a second is told the console is in use and let go), the console's
pty, a wake-up pipe and a pidfd of the process that holds the console
(liblxc's monitor). The server closes itself when that process exits
(the guest stopped), or when stop() is called.

The console itself is opened afresh for each client by a root helper,
which sends its descriptors here over a unix socket (receive_console):
nova-compute does not run as root, and liblxc's console is reached
through a root-owned socket. Closing the descriptors frees the console
for the next client; the guest's console log is written by liblxc
throughout.
"""

import os
import select
import socket
import struct
import termios
import threading
import tty
import uuid

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# Bytes held for a side that does not read before we stop reading the other.
BUFFER = 64 * 1024
BUSY_MESSAGE = b'\r\nThis console is in use by another client.\r\n'
_ENDED = select.POLLHUP | select.POLLERR | select.POLLNVAL
_PEERCRED = struct.Struct('3i')   # struct ucred: pid, uid, gid


class ConsoleUnavailable(Exception):
    """The console could not be opened; the message says why."""


class Console:
    """An open console: the pty master and what keeps the console taken."""

    def __init__(self, pty, holders=()):
        self.pty = pty
        self.holders = list(holders)

    def close(self):
        """Close the descriptors once; later calls do nothing (a second
        os.close could hit a number the process has given out again)."""
        fds = ([self.pty] if self.pty is not None else []) + self.holders
        self.pty, self.holders = None, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def receive_console(send, address_prefix, timeout=10):
    """Have ``send(address)`` send a console to us; return the Console.

    ``send`` is given an abstract unix socket address starting with
    ``address_prefix`` to connect to; it returns '' once the descriptors
    were sent (pty master first), else the reason there are none. Only a
    peer running as root is believed.
    """
    address = address_prefix + uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address)
        listener.listen(8)
        reason = send(address)
        if reason:
            raise ConsoleUnavailable(reason)
        listener.settimeout(timeout)
        for _ in range(8):
            conn, _ = listener.accept()
            with conn:
                _, uid, _ = _PEERCRED.unpack(conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
                _, fds, _, _ = socket.recv_fds(conn, 64, 16)
            if not fds:
                continue
            console = Console(fds[0], fds[1:])
            if uid != 0:
                LOG.warning('Ignored a console sent by uid %d', uid)
                console.close()
                continue
            try:
                # The guest's own terminal translates already; this one
                # must not do it again (CR CR LF).
                tty.setraw(console.pty)
            except termios.error as e:
                console.close()
                raise ConsoleUnavailable('not a terminal: %s' % e)
            return console
    raise ConsoleUnavailable('no console received')


class _Session:
    """One client joined to one open console."""

    def __init__(self, client, console):
        self.client, self.console = client, console
        self.to_client, self.to_console = bytearray(), bytearray()
        client.setblocking(False)
        os.set_blocking(console.pty, False)

    def interest(self):
        """[(fd, poll events)] this session waits for."""
        client = select.POLLIN if len(self.to_console) < BUFFER else 0
        pty = select.POLLIN if len(self.to_client) < BUFFER else 0
        client |= select.POLLOUT if self.to_client else 0
        pty |= select.POLLOUT if self.to_console else 0
        return [(self.client.fileno(), client), (self.console.pty, pty)]

    def pump(self, events):
        """Move bytes as ``events`` ({fd: revents}) allow; False once
        either side is gone."""
        try:
            client = events.get(self.client.fileno(), 0)
            pty = events.get(self.console.pty, 0)
            if client & (select.POLLIN | _ENDED):
                data = self.client.recv(BUFFER)
                if not data:
                    return False
                self.to_console += data
            if pty & (select.POLLIN | _ENDED):
                # EIO once the guest side is gone (the guest stopped).
                data = os.read(self.console.pty, BUFFER)
                if not data:
                    return False
                self.to_client += data
            if pty & select.POLLOUT and self.to_console:
                del self.to_console[:os.write(self.console.pty,
                                              self.to_console)]
            if client & select.POLLOUT and self.to_client:
                del self.to_client[:self.client.send(self.to_client)]
        except BlockingIOError:
            pass
        except OSError:
            return False
        return True

    def close(self):
        self.client.close()
        self.console.close()


class ConsoleServer:
    """A guest's console on ``host``:``port`` until ``holder_pid`` exits.

    ``open_console()`` returns a Console for a new client (or raises
    ConsoleUnavailable); ``on_close(server)`` runs once the server has
    closed its port.
    """

    def __init__(self, name, host, port, holder_pid, open_console,
                 on_close=None):
        self.name, self.host, self.port = name, host, port
        self.holder_pid = holder_pid
        self._open_console = open_console
        self._on_close = on_close
        self._session = None
        self._closed = threading.Event()
        self._lock = threading.Lock()   # the wake-up pipe against _close
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family)
        try:
            self._pidfd = os.pidfd_open(holder_pid)
        except OSError:
            self._listener.close()
            raise ConsoleUnavailable('process %d is gone' % holder_pid)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name='console-%s' % name, daemon=True)
        self._thread.start()

    @property
    def closed(self):
        return self._closed.is_set()

    def stop(self, timeout=10):
        """Close the port (and any client) and wait for it."""
        with self._lock:
            if not self.closed:
                os.write(self._wake_w, b'x')
        self._thread.join(timeout)

    def _run(self):
        try:
            while self._serve_once():
                pass
        except Exception:
            LOG.exception('Console server of %s failed', self.name)
        finally:
            self._close()

    def _serve_once(self):
        poller = select.poll()
        for fd in (self._wake_r, self._pidfd, self._listener.fileno()):
            poller.register(fd, select.POLLIN)
        if self._session:
            for fd, events in self._session.interest():
                poller.register(fd, events)
        events = dict(poller.poll())
        if events.get(self._wake_r) or events.get(self._pidfd):
            return False
        if self._session and not self._session.pump(events):
            LOG.debug('Console client of %s left', self.name)
            self._end_session()
        if events.get(self._listener.fileno()):
            self._accept()
        return True

    def _accept(self):
        client, peer = self._listener.accept()
        if self._session:
            LOG.info('Console of %s is in use; refused %s', self.name, peer)
            client.settimeout(1)
            _send_quietly(client, BUSY_MESSAGE)
            client.close()
            return
        try:
            console = self._open_console()
        except Exception as e:
            if not isinstance(e, ConsoleUnavailable):
                LOG.exception('Could not open the console of %s', self.name)
            LOG.warning('Console of %s unavailable to %s: %s',
                        self.name, peer, e)
            client.settimeout(1)
            _send_quietly(client, ('\r\nconsole unavailable: %s\r\n'
                                   % e).encode())
            client.close()
            return
        LOG.debug('Console client %s joined %s', peer, self.name)
        self._session = _Session(client, console)

    def _end_session(self):
        if self._session:
            self._session.close()
            self._session = None

    def _close(self):
        self._end_session()
        self._listener.close()
        with self._lock:
            for fd in (self._pidfd, self._wake_r, self._wake_w):
                os.close(fd)
            self._closed.set()
        if self._on_close:
            self._on_close(self)


def _send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass
