"""Serial console: the guest's console on a TCP port of this host, for
nova-serialproxy (``[serial_console]``). Part of LXCDriver (a mixin).

The port is taken from ``[serial_console] port_range`` the first time the
console of a running guest is asked for, on ``proxyclient_address``, and
kept while that guest runs: every later request, and the proxy's check of
the port, get the same one. It is given back when the guest stops (its
liblxc monitor exits), is powered off or destroyed. Ports live in
nova-compute's memory, as the libvirt driver's: after a restart each is
taken again when first asked for. See ``nova_lxd_py.console.relay``.
"""

import threading

from nova.console import serial
from nova.console import type as ctype
from nova import exception as nova_exception
from nova.i18n import _
from oslo_log import log as logging

from nova_lxd_py import conf
from nova_lxd_py.console import relay
from nova_lxd_py.virt import container

CONF = conf.CONF
LOG = logging.getLogger(__name__)


def _not_running(instance):
    # InstanceNotReady, not InstanceNotRunning: it is one of the errors the
    # compute manager's console methods expect, which the API answers with
    # 409 (InstanceNotRunning would be a 500).
    return nova_exception.InstanceNotReady(
        instance_id=instance.uuid,
        message=_('Instance %s is not running: its serial console is there '
                  'only while it runs.') % instance.uuid)


class ConsoleMixin:

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._console_servers = {}                 # uuid -> ConsoleServer
        self._console_servers_lock = threading.Lock()   # the dict only
        self._console_start_lock = threading.Lock()

    def get_serial_console(self, context, instance):
        if not CONF.serial_console.enabled:
            raise nova_exception.ConsoleTypeUnavailable(console_type='serial')
        with self._console_start_lock:
            monitor = container.monitor_pid(instance.uuid)
            if monitor < 0:
                if container.state(instance.uuid)[0] == 'UNDEFINED':
                    raise nova_exception.InstanceNotFound(
                        instance_id=instance.uuid)
                raise _not_running(instance)
            server = self._console_servers.get(instance.uuid)
            if server and server.holder_pid != monitor:
                server.stop()   # a guest stopped and started again since
                server = None   # (even if it has not closed yet)
            if not server or server.closed:
                server = self._serve_console(instance, monitor)
        return ctype.ConsoleSerial(host=server.host, port=server.port)

    def _serve_console(self, instance, monitor):
        host = CONF.serial_console.proxyclient_address
        port = serial.acquire_port(host)
        try:
            server = relay.ConsoleServer(
                instance.uuid, host, port, monitor,
                lambda: self._open_console(instance.uuid),
                on_close=self._console_closed)
        except relay.ConsoleUnavailable:   # the monitor exited meanwhile
            serial.release_port(host, port)
            raise _not_running(instance)
        except OSError as e:
            serial.release_port(host, port)
            raise nova_exception.SocketPortInUseException(
                host=host, port=port, error=e)
        with self._console_servers_lock:
            self._console_servers[instance.uuid] = server
        if server.closed:   # before it was registered: its port is free
            with self._console_servers_lock:
                if self._console_servers.get(instance.uuid) is server:
                    del self._console_servers[instance.uuid]
            raise _not_running(instance)
        LOG.info('Serial console on %(host)s:%(port)d',
                 {'host': host, 'port': port}, instance=instance)
        return server

    @staticmethod
    def _open_console(name):
        return relay.receive_console(
            lambda address: container.send_console(name, address),
            container.CONSOLE_ADDRESS_PREFIX)

    def _console_closed(self, server):
        with self._console_servers_lock:
            if self._console_servers.get(server.name) is server:
                del self._console_servers[server.name]
        serial.release_port(server.host, server.port)
        LOG.info('Serial console on %(host)s:%(port)d closed',
                 {'host': server.host, 'port': server.port},
                 instance_uuid=server.name)

    def _close_serial_console(self, instance):
        """Close the guest's console port now (power off, destroy)."""
        with self._console_servers_lock:
            server = self._console_servers.get(instance.uuid)
        if server:
            server.stop()
