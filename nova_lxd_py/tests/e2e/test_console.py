"""The serial console through Nova's REST API, as nova-serialproxy uses it.

``POST /servers/{id}/remote-consoles`` gives a websocket URL with a token;
nova-serialproxy's own request handler code resolves the token (Nova's
console auth, then the compute service's check of the port) to the
compute host's TCP endpoint, which a plain socket then types into. The
websocket leg of the proxy is not run.
"""

import random
import socket
import time
from urllib import parse

from nova.console import websocketproxy
from nova import context as nova_context
from nova import exception as nova_exception
from nova.tests.functional.api import client as api_client

from nova_lxd_py.tests.e2e import base

SERVER_NAME = 'e2e-console'
BOOTED = 'guest init: booted %s' % SERVER_NAME


class SerialConsoleTest(base.ContainerTestBase):

    def setUp(self):
        super().setUp()
        port = random.randrange(20000, 60000, 100)
        self.flags(group='serial_console', enabled=True,
                   proxyclient_address='127.0.0.1',
                   base_url='ws://127.0.0.1:6083/',
                   port_range='%d:%d' % (port, port + 100))
        self.image_id = self._create_guest_image()
        self.flavor_id = self._create_container_flavor()

    def _console_url(self, server):
        body = {'remote_console': {'protocol': 'serial', 'type': 'serial'}}
        return self.api.api_post(
            '/servers/%s/remote-consoles' % server['id'],
            body).body['remote_console']

    @staticmethod
    def _resolve(url):
        """What nova-serialproxy does with the URL's token: (host, port)."""
        token = parse.parse_qs(parse.urlparse(url).query)['token'][0]
        # The handler's __init__ serves an HTTP request; only its token
        # resolution (ConsoleAuthToken.validate and the compute service's
        # validate_console_port) is used.
        handler = websocketproxy.NovaProxyRequestHandler.__new__(
            websocketproxy.NovaProxyRequestHandler)
        handler._compute_rpcapi = None
        info = handler._get_connect_info(
            nova_context.get_admin_context(), token)
        return info.host, info.port

    @staticmethod
    def _type(address, command, expected):
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(command.encode() + b'\n')
            seen = b''
            deadline = time.monotonic() + base.CONSOLE_TIMEOUT
            while expected.encode() not in seen and \
                    time.monotonic() < deadline:
                data = sock.recv(4096)
                if not data:
                    break
                seen += data
        return seen.decode(errors='replace')

    def test_serial_console_url_reaches_guest_shell(self):
        server = self._boot(self.image_id, self.flavor_id, name=SERVER_NAME)
        self.wait_for_console(server['id'], BOOTED)

        console = self._console_url(server)
        self.assertEqual('serial', console['protocol'])
        self.assertTrue(console['url'].startswith('ws://127.0.0.1:6083/'))
        address = self._resolve(console['url'])
        self.assertEqual('127.0.0.1', address[0])

        token = random.randrange(10 ** 6)
        expected = 'console-%d' % (token + 1)
        out = self._type(address, 'echo console-$((%d+1)) > /tmp/c; cat '
                         '/tmp/c' % token, expected)
        self.assertIn(expected, out)
        self.assertEqual(expected + '\n',
                         self.run_in_guest(server['id'], 'cat', '/tmp/c'))
        # The console log (os-getConsoleOutput) shows the session too.
        self.assertIn(expected, self.api.post_server_action(
            server['id'], {'os-getConsoleOutput': {'length': 20}})['output'])

        # A second URL for the running server leads to the same port.
        self.assertEqual(address,
                         self._resolve(self._console_url(server)['url']))

        # Stopped: the port is closed, the proxy's check of the old token
        # fails (the compute service says the server is not running), and
        # no new URL is given.
        self.api.post_server_action(server['id'], {'os-stop': None})
        self._wait_for_state_change(server, 'SHUTOFF')
        self.assertRaises(ConnectionRefusedError, socket.create_connection,
                          address, 2)
        self.assertRaises(nova_exception.InstanceNotReady, self._resolve,
                          console['url'])
        error = self.assertRaises(api_client.OpenStackApiException,
                                  self._console_url, server)
        self.assertEqual(409, error.response.status_code)
        self.assertIn('is not running', error.response.text)

    def test_serial_console_disabled(self):
        server = self._boot(self.image_id, self.flavor_id, name=SERVER_NAME)
        self.flags(group='serial_console', enabled=False)
        error = self.assertRaises(api_client.OpenStackApiException,
                                  self._console_url, server)
        self.assertEqual(400, error.response.status_code)
        self.assertEqual({}, self.driver._console_servers)
