"""A stock nova-compute process loads LXCDriver through the installed shim.

``compute_driver = lxc_py.LXCDriver`` works only if ``nova.virt.lxc_py`` is
importable in the environment nova-compute runs in, which depends on how
this project was installed (wheel or editable, see README.md, "Packaging").
These tests start the environment's own ``nova-compute`` console script as a
separate process, outside this source tree, and read its log.

nova-compute waits for nova-conductor before it loads its driver, and then
asks it for its service record; with no message broker here, a stand-in
conductor runs inside the compute process on its fake transport
(``compute_hook/sitecustomize.py``). Placement is needed only for its version
document while the compute manager is built; a loopback HTTP server serves
it. Everything after that is Nova's own start-up, up to our ``init_host``.

tools/run-tests.sh exports NOVA_LXD_PY_EXPECT_INSTALL (``wheel`` or
``editable``) so that a run cannot quietly test the other kind of install.
"""

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
HOOK_DIR = os.path.join(HERE, 'compute_hook')
SOURCE_SHIM = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(HERE))),
    'nova', 'virt', 'lxc_py', '__init__.py')
BIN_DIR = os.path.dirname(sys.executable)
NOVA_COMPUTE = os.path.join(BIN_DIR, 'nova-compute')
START_TIMEOUT = 60

LOADING = "Loading compute driver 'lxc_py.LXCDriver'"
LOAD_FAILURES = ('Unable to load the virtualization driver',
                 "from 'nova.virt' is not of type")
# LXCDriver.init_host's last line: it ran in that process, on our config.
INIT_HOST = re.compile(
    r'INFO nova_lxd_py\.virt\.driver .* liblxc \S+, cgroup v\d, '
    r'containers in (\S+)$', re.M)

PLACEMENT_VERSIONS = json.dumps({'versions': [{
    'id': 'v1.0', 'min_version': '1.0', 'max_version': '1.39',
    'status': 'CURRENT', 'links': [{'rel': 'self', 'href': ''}]}]}).encode()

SHIM_PROBE = textwrap.dedent('''
    import json
    from importlib import metadata
    import nova.virt
    import nova.virt.lxc_py as shim
    print(json.dumps({
        'version': metadata.version('nova-lxd-py'),
        'shim': shim.__file__,
        'nova_virt': nova.virt.__path__[0],
        'driver': '%s.%s' % (shim.LXCDriver.__module__,
                             shim.LXCDriver.__qualname__),
    }))
''')


class _PlacementVersions(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(PLACEMENT_VERSIONS)))
        self.end_headers()
        self.wfile.write(PLACEMENT_VERSIONS)

    def log_message(self, format, *args):
        pass


def _clean_env(**extra):
    """The environment without anything that would find this source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP')}
    env.update(extra)
    return env


class ShimLoadTest(unittest.TestCase):

    def setUp(self):
        if not os.path.exists(NOVA_COMPUTE):
            self.fail('no nova-compute next to %s: nova is not installed in '
                      'this environment' % sys.executable)
        tmp = tempfile.TemporaryDirectory(prefix='nova-lxd-py-shim-')
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name

    def _serve_placement_versions(self):
        server = http.server.ThreadingHTTPServer(
            ('127.0.0.1', 0), _PlacementVersions)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return 'http://127.0.0.1:%d/placement' % server.server_address[1]

    def _write_conf(self, placement_url):
        path = os.path.join(self.tmp, 'nova.conf')
        with open(path, 'w') as f:
            f.write(textwrap.dedent('''\
                [DEFAULT]
                compute_driver = lxc_py.LXCDriver
                transport_url = fake://
                host = shim-test
                state_path = {tmp}/state
                instances_path = {tmp}/instances
                rpc_response_timeout = 10
                log_options = false

                [oslo_concurrency]
                lock_path = {tmp}/locks

                [placement]
                auth_type = none
                endpoint_override = {placement}
                ''').format(tmp=self.tmp, placement=placement_url))
        return path

    def _start_compute(self, conf):
        log = open(os.path.join(self.tmp, 'nova-compute.log'), 'w+')
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [NOVA_COMPUTE, '--config-file', conf],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.tmp, start_new_session=True,
            env=_clean_env(PYTHONPATH=HOOK_DIR,
                           NOVA_LXD_PY_CONDUCTOR_STUB='1',
                           OS_NOVA_DISABLE_EVENTLET_PATCHING='1'))
        self.addCleanup(self._stop, proc)
        return proc, log.name

    @staticmethod
    def _stop(proc):
        # The whole session: nova-compute may have started helpers.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def test_nova_compute_loads_driver_and_runs_init_host(self):
        conf = self._write_conf(self._serve_placement_versions())
        proc, log_path = self._start_compute(conf)

        deadline = time.monotonic() + START_TIMEOUT
        text = ''
        while time.monotonic() < deadline:
            with open(log_path) as f:
                text = f.read()
            if INIT_HOST.search(text) or proc.poll() is not None:
                break
            time.sleep(0.2)
        # Give a process that is about to fail its last words.
        if proc.poll() is not None:
            with open(log_path) as f:
                text = f.read()
        tail = '\n'.join(text.splitlines()[-40:])

        # assertTrue: assertIn would print the whole log, not its tail.
        self.assertTrue(LOADING in text, tail)
        for failure in LOAD_FAILURES:
            self.assertFalse(failure in text, tail)
        match = INIT_HOST.search(text)
        self.assertIsNotNone(
            match, 'no init_host line from nova_lxd_py.virt.driver within '
                   '%d s:\n%s' % (START_TIMEOUT, tail))
        self.assertEqual(
            os.path.join(self.tmp, 'instances', 'containers'), match.group(1))

    def test_shim_resolves_to_this_install(self):
        out = subprocess.run(
            [sys.executable, '-c', SHIM_PROBE], cwd=self.tmp,
            env=_clean_env(OS_NOVA_DISABLE_EVENTLET_PATCHING='1'),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=120)
        self.assertEqual(0, out.returncode, out.stderr[-3000:])
        probe = json.loads(out.stdout.strip().splitlines()[-1])

        self.assertEqual('nova_lxd_py.virt.driver.LXCDriver', probe['driver'])
        # A wheel puts the shim inside Nova's own package directory; an
        # editable install leaves it in the source tree for its finder.
        shim_dir = os.path.realpath(os.path.dirname(probe['shim']))
        in_nova = shim_dir == os.path.realpath(
            os.path.join(probe['nova_virt'], 'lxc_py'))
        kind = 'wheel' if in_nova else 'editable'
        expected = os.environ.get('NOVA_LXD_PY_EXPECT_INSTALL')
        if expected:
            self.assertEqual(expected, kind, probe)
        if kind == 'editable':
            self.assertEqual(os.path.realpath(SOURCE_SHIM),
                             os.path.realpath(probe['shim']), probe)
