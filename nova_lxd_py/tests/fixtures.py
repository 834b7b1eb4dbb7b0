"""Fixtures for tests on real containers (run as root).

Each owns one real resource and always cleans it up, even when the test
fails: a private instances_path with its containers, and the guest images.
"""

import atexit
import functools
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import fixtures
import os_vif
from oslo_config import cfg
from vif_plug_ovs.ovsdb import impl_idl
from vif_plug_ovs import privsep as vif_plug_ovs_privsep

from nova_lxd_py import conf  # noqa: F401  (registers [lxc])
from nova_lxd_py import privsep
from nova_lxd_py.tests import guest_image

CONF = cfg.CONF


class PrivsepInProcess(fixtures.Fixture):
    """Run privsep entrypoints in the test process (tests run as root):
    ours, and os-vif's ovs plugin's, which plugs 'ovs' ports."""

    def _setUp(self):
        for context in (privsep.sys_admin_pctxt,
                        vif_plug_ovs_privsep.vif_plug):
            self.useFixture(fixtures.MockPatchObject(
                context, 'client_mode', False))


class HostDirs(fixtures.Fixture):
    """A private instances_path; on cleanup every container in it is killed
    and the directory removed, so a failed test leaves nothing running."""

    def _setUp(self):
        # Not the per-test temp dir of oslotest/nova: it is private (0700),
        # and a guest's root (a subordinate uid) must pass through to reach
        # its image and root layer.
        self.path = tempfile.mkdtemp(prefix='nova-lxd-py-test-',
                                     dir='/var/tmp')
        os.chmod(self.path, 0o755)   # guests' root must reach the cache
        self.addCleanup(self._clean)
        self.container_path = os.path.join(self.path, 'containers')
        self.image_cache_path = os.path.join(self.path, '_base_lxc')
        CONF.set_override('instances_path', self.path)
        self.addCleanup(CONF.clear_override, 'instances_path')

    def _clean(self):
        if os.path.isdir(self.container_path):
            for name in os.listdir(self.container_path):
                subprocess.run(['lxc-stop', '-k', '-n', name, '-P',
                                self.container_path],
                               capture_output=True, check=False)
        # Instances' root disks left mounted by a test that did not delete
        # them: unmount (loop devices go with them) before removing.
        for point in sorted(mounts_under(self.path), reverse=True):
            subprocess.run(['umount', point], capture_output=True,
                           check=False)
        shutil.rmtree(self.path, ignore_errors=True)


class GlanceUploads(fixtures.Fixture):
    """Nova's GlanceFixture, reading uploaded data as Glance does.

    The fixture's ``update`` drops ``data`` unread; a snapshot's stream
    then has no reader and rightly fails. Here the bytes are read to the
    end and kept as ``create`` keeps them, and the record gets what real
    Glance computes on upload (size, sha512 multihash, status active),
    which the driver's image cache checks when it downloads the image.
    ``uploads`` lists the image ids that received data, in order.
    """

    def __init__(self, glance):
        super().__init__()
        self.glance = glance
        self.uploads = []

    def _setUp(self):
        fixture_update = self.glance.update

        def update(context, image_id, metadata, data=None,
                   purge_props=False):
            image = fixture_update(context, image_id, metadata,
                                   purge_props=purge_props)
            if data is not None:
                blob = data.read()
                self.uploads.append(image_id)
                self.glance._imagedata[image_id] = blob
                image.update(size=len(blob), status='active',
                             os_hash_algo='sha512',
                             os_hash_value=hashlib.sha512(blob).hexdigest())
            return image

        self.useFixture(fixtures.MockPatchObject(
            self.glance, 'update', side_effect=update))


class SshServer(fixtures.Fixture):
    """A private sshd on a free loopback port, as the other compute host
    of a move would run one: its own host key, root logins with one
    generated key only, and the driver's ``[lxc] migration_ssh_*`` options
    pointed at it (port, key, a known_hosts file with its key)."""

    ADDRESS = '127.0.0.1'

    def _setUp(self):
        self.dir = tempfile.mkdtemp(prefix='nova-lxd-py-sshd-', dir='/var/tmp')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        host_key = os.path.join(self.dir, 'host_key')
        self.client_key = os.path.join(self.dir, 'client_key')
        for key in (host_key, self.client_key):
            subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '',
                            '-f', key], check=True, capture_output=True)
        shutil.copy(self.client_key + '.pub',
                    os.path.join(self.dir, 'authorized_keys'))
        self.port = free_port()
        with open(host_key + '.pub') as f:
            public = f.read().split()[:2]
        self.known_hosts = os.path.join(self.dir, 'known_hosts')
        with open(self.known_hosts, 'w') as f:
            f.write('[%s]:%d %s\n' % (self.ADDRESS, self.port,
                                      ' '.join(public)))
        config = os.path.join(self.dir, 'sshd_config')
        with open(config, 'w') as f:
            f.write('\n'.join([
                'ListenAddress %s' % self.ADDRESS, 'Port %d' % self.port,
                'HostKey %s' % host_key,
                'AuthorizedKeysFile %s/authorized_keys' % self.dir,
                'PermitRootLogin prohibit-password',
                'PasswordAuthentication no', 'KbdInteractiveAuthentication no',
                'UsePAM no', 'StrictModes no',
                'PidFile %s/sshd.pid' % self.dir, '']))
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
        self.process = subprocess.Popen(
            ['/usr/sbin/sshd', '-D', '-e', '-f', config],
            stdout=subprocess.DEVNULL, stderr=open(
                os.path.join(self.dir, 'sshd.log'), 'wb'))
        self.addCleanup(self.stop)
        wait_for_port(self.ADDRESS, self.port, self.process)
        for name, value in (('migration_ssh_port', self.port),
                            ('migration_ssh_identity_file', self.client_key),
                            ('migration_ssh_known_hosts_file',
                             self.known_hosts),
                            ('migration_ssh_user', 'root')):
            CONF.set_override(name, value, group='lxc')
            self.addCleanup(CONF.clear_override, name, group='lxc')

    def stop(self):
        """As a host that died: no more connections."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self):
        """As a host that lost power: the listener and every session it
        runs (the receiving shell and its tar) die at once, mid-stream."""
        tree = descendants(self.process.pid)
        for pid in [self.process.pid] + tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        return tree


def descendants(pid):
    """Every process below ``pid`` (from /proc; children before theirs)."""
    children = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                # The name is in parentheses and may hold spaces.
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for_port(address, port, process, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError('the server exited at start (%d)' %
                               process.returncode)
        with socket.socket() as s:
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError('nothing listens on %s:%d' % (address, port))


def mounts_under(path):
    """Mount points at or below ``path`` in this mount namespace."""
    found = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            point = line.split()[4]
            if point == path or point.startswith(path.rstrip('/') + '/'):
                found.append(point)
    return found


@functools.lru_cache(maxsize=None)
def _image_dir():
    # Not the default temp dir: oslotest points TMPDIR at a per-test
    # directory that is deleted after that test, and images outlive tests.
    path = tempfile.mkdtemp(prefix='nova-lxd-py-images-', dir='/var/tmp')
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def guest_tarball(marker='busybox-guest', with_init=True, compression='gz'):
    """Path of a bootable busybox rootfs tarball, built once per process.

    ``/etc/image-marker`` in the guest holds ``marker``. Every spelling
    of the same arguments gets the same file, written once: a rewrite would
    change its bytes (gzip stores a time) under tests that hashed it.
    """
    return _guest_tarball(marker, with_init, compression)


@functools.lru_cache(maxsize=None)
def _guest_tarball(marker, with_init, compression):
    name = '%s-%s.tar%s' % (marker, 'init' if with_init else 'noinit',
                            '.' + compression if compression else '')
    path = os.path.join(_image_dir(), name)
    return guest_image.write_tarball(path, marker, with_init, compression)


def host_leftovers(name):
    """Everything of container ``name`` still on the host (should be [])."""
    found = []
    for root in ('/sys/fs/cgroup',):
        for dirpath, dirnames, _ in os.walk(root):
            for d in dirnames:
                if name in d:
                    found.append(os.path.join(dirpath, d))
            if dirpath.count('/') >= 5:
                dirnames[:] = []
    with open('/proc/self/mountinfo') as f:
        found += [line.strip() for line in f if name in line]
    container_dir = os.path.join(CONF.lxc.container_path, name)
    if os.path.lexists(container_dir):
        found.append(container_dir)
    return found


OVS_SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema'


class _OvsDaemons:
    """One private ovsdb-server and ovs-vswitchd per test process.

    Per process, not per test: os-vif's native OVSDB client (ovsdbapp)
    keeps the first connection a process makes for every later client, so
    a second switch would never be seen. Nothing of the system's Open
    vSwitch is used or touched: the database, sockets, pid and log files
    live in a private directory, and the daemons are stopped at exit.

    ovs-vswitchd runs in the host's network namespace or, for tests of
    ``[lxc] ovs_network_namespace``, in a named one of its own: ``start``
    restarts it where it is asked for (the database and its clients stay).
    """

    def __init__(self):
        self.path = None
        self.failure = None
        self.netns = None   # where ovs-vswitchd runs; None: the host's

    @property
    def socket(self):
        return os.path.join(self.path, 'db.sock')

    def _file(self, name):
        return os.path.join(self.path, name)

    def _run(self, argv):
        env = dict(os.environ, OVS_RUNDIR=self.path, OVS_DBDIR=self.path,
                   OVS_LOGDIR=self.path, OVS_SYSCONFDIR=self.path)
        result = subprocess.run(argv, capture_output=True, text=True,
                                env=env, timeout=60, check=False)
        if result.returncode:
            raise RuntimeError('%s failed: %s' % (
                ' '.join(argv[:2]), result.stderr.strip()[-500:]))
        return result.stdout

    def vsctl(self, *args):
        return self._run(['ovs-vsctl', '--db=unix:' + self.socket,
                          '--timeout=30'] + list(args))

    def start(self, in_netns=False):
        """The database socket; unittest.SkipTest if OVS cannot run.

        ``in_netns``: ovs-vswitchd runs in a network namespace of its own
        (named in ``self.netns``), not in the host's.
        """
        if self.failure:
            raise unittest.SkipTest(self.failure)
        try:
            if not self.path:
                self.path = tempfile.mkdtemp(prefix='nova-lxd-py-ovs-',
                                             dir='/var/tmp')
                atexit.register(self.stop)
                self._run(['ovsdb-tool', 'create', self._file('conf.db'),
                           OVS_SCHEMA])
                self._run(['ovsdb-server', self._file('conf.db'),
                           '--remote=punix:' + self.socket,
                           '--pidfile=' + self._file('db.pid'),
                           '--unixctl=' + self._file('db.ctl'),
                           '--log-file=' + self._file('db.log'),
                           '--detach'])
                self._run(['ovs-vsctl', '--db=unix:' + self.socket,
                           '--no-wait', 'init'])
                self.netns = ''   # no ovs-vswitchd yet
            wanted = self._netns_name() if in_netns else None
            if wanted != self.netns:
                if self.netns != '':
                    self._stop_vswitchd()
                if wanted:
                    subprocess.run(['ip', 'netns', 'add', wanted],
                                   capture_output=True, check=False)
                    self._run(['ip', '-n', wanted, 'link', 'set', 'lo',
                               'up'])
                self._start_vswitchd(wanted)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            self.failure = 'Open vSwitch cannot run here: %s' % e
            self.stop()
            raise unittest.SkipTest(self.failure)
        return self.socket

    @staticmethod
    def _netns_name():
        return 'nlxpy-ovs-%d' % os.getpid()

    def _start_vswitchd(self, netns):
        prefix = ['ip', 'netns', 'exec', netns] if netns else []
        self._run(prefix + ['ovs-vswitchd', 'unix:' + self.socket,
                            '--pidfile=' + self._file('vs.pid'),
                            '--unixctl=' + self._file('vs.ctl'),
                            '--log-file=' + self._file('vs.log'),
                            '--detach'])
        self.netns = netns

    def _stop_vswitchd(self):
        subprocess.run(['ovs-appctl', '-t', self._file('vs.ctl'), 'exit',
                        '--cleanup'], capture_output=True, timeout=30,
                       check=False)
        _kill_from_pidfile(self._file('vs.pid'))

    def stop(self):
        if not self.path:
            return
        # Otherwise os-vif's OVSDB client keeps polling the vanished
        # server, logging each attempt, even into streams closed at exit.
        client = impl_idl.NeutronOvsdbIdl._ovsdb_connection
        if client is not None:
            client.stop(timeout=5)
        self._stop_vswitchd()
        _kill_from_pidfile(self._file('db.pid'))
        subprocess.run(['ip', 'netns', 'del', self._netns_name()],
                       capture_output=True, check=False)
        self.netns = None
        shutil.rmtree(self.path, ignore_errors=True)
        self.path = None


def _kill_from_pidfile(path):
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not os.path.exists('/proc/%d' % pid):
                return
            time.sleep(0.1)


_OVS = _OvsDaemons()


def stop_private_ovs():
    """Stop the private Open vSwitch, if this process started one."""
    _OVS.stop()


class OpenVSwitch(fixtures.Fixture):
    """A fresh bridge of OVS's userspace (netdev) datapath on a private
    switch, with os-vif pointed at that switch; on cleanup the bridge is
    deleted with every port on it.

    The switch runs in the host's network namespace or, ``in_netns``, in
    a named one (``self.netns``; None for the host's): the veth host ends
    must be where ovs-vswitchd is. The netdev datapath needs no kernel
    module. The test is skipped if ovs-vswitchd cannot run.
    """

    def __init__(self, in_netns=False):
        super().__init__()
        self.in_netns = in_netns

    def _setUp(self):
        socket = _OVS.start(self.in_netns)
        self.netns = _OVS.netns
        self.bridge = 'brt%08x' % random.getrandbits(32)
        try:
            self.vsctl('add-br', self.bridge, '--', 'set', 'Bridge',
                       self.bridge, 'datapath_type=netdev')
        except RuntimeError as e:
            raise unittest.SkipTest('ovs-vswitchd makes no bridge: %s' % e)
        self.addCleanup(self.vsctl, '--if-exists', 'del-br', self.bridge)
        os_vif.initialize()   # registers [os_vif_ovs]
        CONF.set_override('ovsdb_connection', 'unix:' + socket,
                          group='os_vif_ovs')
        self.addCleanup(CONF.clear_override, 'ovsdb_connection',
                        group='os_vif_ovs')
        os_vif.initialize(reset=True)   # the ovs plugin reads it on load

    @staticmethod
    def vsctl(*args):
        return _OVS.vsctl(*args)

    def ports(self):
        return sorted(self.vsctl('list-ports', self.bridge).split())

    def external_id(self, interface, key):
        """An Interface row's external_ids:key, '' if unset."""
        out = self.vsctl('--if-exists', 'get', 'Interface', interface,
                         'external_ids:' + key)
        return out.strip().strip('"')
