"""Cold migration: the driver's move of a guest against tar | ssh by hand.

Run as root: ``python benchmarks/migration.py [--runs N] [--write-mb M]``.

Two "hosts" share this machine, as in the e2e move tests: the destination
is a private sshd on 127.0.0.1 (the tests' ``SshServer``: its own host
key, client key, authorized_keys and known_hosts, with ``[lxc]
migration_ssh_*`` pointed at them), and both use one ``[lxc]
container_path``: a move keeps the source's directory aside as
``.resize/<uuid>`` and the files arrive in ``<uuid>`` through ssh.

Two guests are spawned by LXCDriver (``--backend``, default overlay, with
``--root-gb``, default 1) with ``--write-mb`` MiB of random data in their
writable root. In rounds whose order rotates:

* **transfer**: ``transfer.send`` (privsep, as the driver calls it) of the
  entries the driver's move sends, against ``tar -cf - | ssh tar -xf -``
  of the same entries to the same sshd: plain, with ``--sparse``, and
  with the driver's own tar flags (``same-tar``); and ``ssh true``;
* **downtime** of a running guest, from the stop request to RUNNING on
  the destination: ``migrate_disk_and_power_off`` + ``finish_migration``
  against the same by hand (``lxc-stop``, ``umount``, ``tar --sparse |
  ssh tar -x`` of the container directory, ``mount``, ``lxc-start``).

benchmarks/README.md has the details; the JSON goes to
benchmarks/results/migration-<time>.json.
"""

import argparse
import datetime
import itertools
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import spawn   # noqa: I100  (before the driver's imports: monkey patching)

from nova import objects  # noqa: E402,I100
from oslo_serialization import jsonutils  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

from nova_lxd_py import privsep  # noqa: E402
from nova_lxd_py.storage import backends  # noqa: E402
from nova_lxd_py.storage.backends import disk  # noqa: E402
from nova_lxd_py.storage import transfer  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402
from nova_lxd_py.virt import migration  # noqa: E402

CONF = spawn.CONF
DEST = lxc_fixtures.SshServer.ADDRESS
# This "host"'s own address: not the destination's, or the move would copy
# locally. A loopback address other than the sshd's; nothing is sent to it.
MY_IP = '127.0.0.2'
FILE_MIB = 8   # the guest's data, in files of this size
DATA_DIR = 'var/bench-data'
# The baselines' tar flags (after tar), creating and extracting; same-tar
# has the driver's own (sparse, numeric owners, xattrs, ACLs).
TAR_FLAGS = {'tar': (['-c', '-f', '-'], ['-x', '-f', '-']),
             'tar -S': (['-c', '-f', '-', '--sparse'], ['-x', '-f', '-']),
             'same-tar': (transfer.TAR_CREATE[1:], transfer.TAR_EXTRACT[1:])}
TRANSFERS = ('driver',) + tuple(TAR_FLAGS)
CONNECT = 'ssh true'   # a login alone, for reference
MOVES = ('driver', 'by hand')
STEPS = ('stop', 'send', 'start')
TOTALS = re.compile(r'Total bytes written: (\d+)')


def configure(base, sshd, backend):
    """nova.conf for this run, read by the privsep daemon too: absolute
    paths, and the ssh options of the private sshd."""
    objects.register_all()
    path = os.path.join(base, 'nova.conf')
    with open(path, 'w') as f:
        f.write('[DEFAULT]\ninstances_path = {b}\nmy_ip = {ip}\n'
                '[lxc]\ncontainer_path = {b}/containers\n'
                'image_cache_path = {b}/_base_lxc\n'
                'root_disk_backend = {backend}\n'
                'migration_ssh_user = root\nmigration_ssh_port = {port}\n'
                'migration_ssh_identity_file = {key}\n'
                'migration_ssh_known_hosts_file = {known}\n'.format(
                    b=base, ip=MY_IP, backend=backend, port=sshd.port,
                    key=sshd.client_key, known=sshd.known_hosts))
    CONF(['--config-file', path], project='nova', default_config_files=[])
    CONF.set_override(
        'helper_command', '%s --config-file %s' % (
            os.path.join(os.path.dirname(sys.executable), 'privsep-helper'),
            path), group='nova_lxd_py_privileged')


def run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError('%s failed (%d): %s' % (
            ' '.join(argv), proc.returncode, proc.stderr.strip()))


def allocated(path):
    """(bytes on disk, apparent bytes) of a file or tree."""
    files = [path] if not os.path.isdir(path) else [
        os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
    stats = [os.lstat(f) for f in files]
    return (sum(st.st_blocks * 512 for st in stats),
            sum(st.st_size for st in stats))


class Guests:
    """LXCDriver and guests of it, spawned as the compute manager would."""

    def __init__(self, args):
        self.args = args
        self.spawned = spawn.Driver(daemon=args.privsep_daemon,
                                    root_gb=args.root_gb)
        self.driver = self.spawned.driver
        self.backend = backends.get(CONF.lxc.root_disk_backend)
        self.ids = itertools.count(1)
        # What finish_migration reads of the move's record.
        self.migration = objects.Migration(source_compute='bench',
                                           dest_compute='bench-dest')

    def make(self):
        """A running guest with ``--write-mb`` MiB of random data in its
        writable root, written while it was stopped."""
        instance = objects.Instance(
            id=next(self.ids), uuid=uuidutils.generate_uuid(),
            flavor=self.spawned.flavor, hostname='bench',
            trusted_certs=None, config_drive='', system_metadata={},
            image_ref=spawn.IMAGE_ID, migration_context=None)
        self.driver.spawn(None, instance, self.spawned.image_meta,
                          injected_files=[], admin_password=None,
                          allocations={}, power_on=False)
        root = self.backend.writable_root(
            container.container_dir(instance.uuid))
        data = os.path.join(root, DATA_DIR)
        os.makedirs(data)
        idmap = host.idmap()
        left = self.args.write_mb
        while left > 0:
            path = os.path.join(data, 'f%04d' % len(os.listdir(data)))
            with open(path, 'wb') as f:
                f.write(os.urandom(min(left, FILE_MIB) << 20))
            left -= FILE_MIB
        for path in [data, os.path.dirname(data)] + [
                os.path.join(data, n) for n in os.listdir(data)]:
            os.chown(path, idmap.uid_start, idmap.gid_start)
        self.driver.power_on(None, instance, [])
        return instance

    def running(self, name):
        state = container.state(name)[0]
        if state != 'RUNNING':
            raise RuntimeError('%s is %s after its move' % (name, state))

    def move(self, instance):
        """The driver's move of a running guest: {step: seconds}."""
        marks = {}
        real_send = transfer.send

        def timed_send(*args):
            marks['sent'] = time.perf_counter()
            try:
                return real_send(*args)
            finally:
                marks['received'] = time.perf_counter()

        transfer.send = timed_send
        try:
            started = time.perf_counter()
            info = self.driver.migrate_disk_and_power_off(
                None, instance, DEST, instance.flavor, [],
                timeout=self.args.shutdown_timeout, retry_interval=1)
            self.driver.finish_migration(
                None, self.migration, instance, info, [],
                self.spawned.image_meta, False, {}, power_on=True)
            ended = time.perf_counter()
        finally:
            transfer.send = real_send
        self.running(instance.uuid)
        self.driver.confirm_migration(None, self.migration, instance, [])
        return {'downtime': ended - started,
                'stop': marks['sent'] - started,
                'send': marks['received'] - marks['sent'],
                'start': ended - marks['received'],
                'bytes': jsonutils.loads(info)['bytes_sent']}

    def move_by_hand(self, instance):
        """The same move with the plain tools: {step: seconds}."""
        name, lxcpath = instance.uuid, CONF.lxc.container_path
        cdir, kept = container.container_dir(name), migration.kept_dir(name)
        image, point = disk.image_path(cdir), disk.mount_point(cdir)
        started = time.perf_counter()
        run(['lxc-stop', '-n', name, '-P', lxcpath] + (
            ['-t', str(self.args.shutdown_timeout)]
            if self.args.shutdown_timeout else ['-k']))
        if os.path.ismount(point):
            run(['umount', point])
        os.makedirs(os.path.dirname(kept), mode=0o711, exist_ok=True)
        os.rename(cdir, kept)
        sending = time.perf_counter()
        entries = sorted(set(os.listdir(kept)) - {container.LXC_LOG})
        sent = tar_ssh(kept, entries, cdir, 'tar -S')
        received = time.perf_counter()
        if os.path.exists(image):
            run(['mount', '-t', 'ext4', '-o', 'loop,nodev,nosuid,noatime',
                 image, point])
        run(['lxc-start', '-n', name, '-P', lxcpath, '-o',
             os.path.join(cdir, container.LXC_LOG), '-l',
             container.LXC_LOG_LEVEL])
        ended = time.perf_counter()
        self.running(name)
        run(['rm', '-rf', '--', kept])
        return {'downtime': ended - started, 'stop': sending - started,
                'send': received - sending, 'start': ended - received,
                'bytes': sent}


def tar_ssh(source, entries, dest, variant):
    """``tar -c`` of ``entries`` of ``source`` piped into ``ssh DEST tar
    -x`` into a new ``dest``, with the flags of ``variant``; the bytes of
    the stream."""
    create, extract = TAR_FLAGS[variant]
    create = ['tar', '-C', source] + create + ['--totals', '--'] + entries
    receive = 'mkdir -m 0711 {d} && tar -C {d} {x}'.format(
        d=shlex.quote(dest), x=' '.join(shlex.quote(a) for a in extract))
    tar = subprocess.Popen(create, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    ssh = subprocess.Popen(transfer.ssh_argv(DEST) + [receive],
                           stdin=tar.stdout, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    tar.stdout.close()
    ssh_err = ssh.communicate()[1]
    tar_err = tar.stderr.read().decode(errors='replace')
    tar.stderr.close()
    if tar.wait() or ssh.returncode:
        raise RuntimeError('tar | ssh failed: %s %s' % (
            tar_err.strip(), ssh_err.decode(errors='replace').strip()))
    return int(TOTALS.search(tar_err).group(1))


def send_once(variant, kept, entries):
    """Seconds and stream bytes of one transfer of ``entries`` of the
    kept directory ``kept`` to a new instance directory at DEST; the copy
    is removed afterwards and everything written out (untimed)."""
    name = uuidutils.generate_uuid()
    dest = transfer.final_dir(name)
    started = time.perf_counter()
    if variant == 'driver':
        sent = transfer.send(kept, entries, DEST, name)
    else:
        sent = tar_ssh(kept, entries, dest, variant)
    seconds = time.perf_counter() - started
    if not os.path.isdir(dest):
        raise RuntimeError('%s: nothing arrived in %s' % (variant, dest))
    run(['rm', '-rf', '--', dest])
    os.sync()
    return seconds, sent


def rotate(labels, i):
    return labels[i % len(labels):] + labels[:i % len(labels)]


def connect_once():
    """Seconds of ``ssh DEST true``: what every transfer pays to log in."""
    started = time.perf_counter()
    run(transfer.ssh_argv(DEST) + ['true'])
    return time.perf_counter() - started


def transfer_rounds(kept, entries, args):
    samples = {v: [] for v in TRANSFERS + (CONNECT,)}
    stream = {CONNECT: 0}
    for i in range(args.warmup + args.runs):
        for variant in rotate(TRANSFERS, i) + (CONNECT,):
            if variant == CONNECT:
                seconds = connect_once()
            else:
                seconds, stream[variant] = send_once(variant, kept, entries)
            if i >= args.warmup:
                samples[variant].append(seconds)
    return samples, stream


def move_rounds(guests, instances, args):
    samples = {v: [] for v in MOVES}
    for i in range(args.warmup + args.runs):
        for variant in rotate(MOVES, i):
            mover = guests.move if variant == 'driver' else \
                guests.move_by_hand
            taken = mover(instances[variant])
            os.sync()
            if i >= args.warmup:
                samples[variant].append(taken)
    return samples


def median(values):
    return spawn.summary(values)['median']


def bench(base, args):
    spawn.use_local_glance(base)
    guests = Guests(args)
    instances = {v: guests.make() for v in MOVES}
    # The transfers' source: the kept directory of a real move (the guest
    # runs on at the destination meanwhile, as before a confirm).
    moved = instances['driver']
    info = jsonutils.loads(guests.driver.migrate_disk_and_power_off(
        None, moved, DEST, moved.flavor, []))
    kept, entries = migration.kept_dir(moved.uuid), info['entries']
    guests.driver.finish_migration(
        None, guests.migration, moved, jsonutils.dumps(info), [],
        guests.spawned.image_meta, False, {}, power_on=True)
    tree = [sum(x) for x in zip(*(allocated(os.path.join(kept, e))
                                  for e in entries))]
    load_before = [round(x, 2) for x in os.getloadavg()]
    samples, stream = transfer_rounds(kept, entries, args)
    guests.driver.confirm_migration(None, guests.migration, moved, [])
    moves = move_rounds(guests, instances, args)
    load_after = [round(x, 2) for x in os.getloadavg()]
    stats = {v: spawn.summary(s) for v, s in samples.items()}
    move_stats = {v: {k: spawn.summary([m[k] for m in ms])
                      for k in ('downtime',) + STEPS}
                  for v, ms in moves.items()}
    ratios = {'driver / %s' % v: stats['driver']['median'] /
              stats[v]['median'] for v in TRANSFERS[1:]}
    ratios['downtime driver / by hand'] = (
        move_stats['driver']['downtime']['median'] /
        move_stats['by hand']['downtime']['median'])
    for step in STEPS:
        ratios['%s driver / by hand' % step] = (
            move_stats['driver'][step]['median'] /
            move_stats['by hand'][step]['median'])
    return {
        'when': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'host': dict(spawn.host_facts(), ssh=subprocess.run(
            ['ssh', '-V'], capture_output=True, text=True).stderr.strip()),
        'loadavg_before': load_before, 'loadavg_after': load_after,
        'args': vars(args), 'storage': spawn.storage_of(base),
        'entries': entries, 'tree_allocated_bytes': tree[0],
        'tree_apparent_bytes': tree[1], 'stream_bytes': stream,
        'transfer_s': stats, 'transfer_samples_s': samples,
        'mb_per_s': {v: tree[0] / 1e6 / stats[v]['median']
                     for v in TRANSFERS},
        'move_s': move_stats, 'move_samples': moves, 'ratios': ratios,
    }


def report(r):
    args = r['args']
    print('\n%s backend, root_gb %d, %d MiB written in the guest; %d '
          'rounds; privsep %s; %s' % (
              args['backend'], args['root_gb'], args['write_mb'],
              args['runs'], 'daemon' if args['privsep_daemon'] else
              'in process', r['storage']))
    print('transfer of %s: %.1f MB on disk (%.1f MB apparent)' % (
        ', '.join(r['entries']), r['tree_allocated_bytes'] / 1e6,
        r['tree_apparent_bytes'] / 1e6))
    print('%-9s %8s %8s %8s %9s %10s' % ('variant', 'min s', 'median s',
                                         'max s', 'MB/s', 'stream MB'))
    for v, s in r['transfer_s'].items():
        print(('%-9s %8.3f %8.3f %8.3f ' % (v, s['min'], s['median'],
                                            s['max']) +
               ('%9.0f %10.1f' % (r['mb_per_s'][v],
                                  r['stream_bytes'][v] / 1e6)
                if v in r['mb_per_s'] else '')).rstrip())
    print('\ndowntime of a running guest (shutdown timeout %d s): stop '
          'request to RUNNING on the destination, median s [min-max]' %
          args['shutdown_timeout'])
    print('%-9s %21s %8s %8s %8s' % ('variant', 'downtime', 'stop',
                                     'send', 'start'))
    for v, m in r['move_s'].items():
        d = m['downtime']
        print('%-9s %7.3f [%.3f-%.3f] %8.3f %8.3f %8.3f' % (
            v, d['median'], d['min'], d['max'], m['stop']['median'],
            m['send']['median'], m['start']['median']))
    print('\nratios of the medians:')
    for key, x in r['ratios'].items():
        print('  %-30s %5.2f' % (key, x))
    print('load average (1, 5, 15 min) before the timed rounds: %s; '
          'after: %s' % (r['loadavg_before'], r['loadavg_after']))


def terminated(signum, frame):
    # Once: a kill of the whole process group (timeout(1)) is delivered
    # twice, and a second exit would cut the clean-up short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit('killed: cleaning up')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    for flag, default, text in (
            ('--runs', 5, 'timed rounds of each variant'),
            ('--warmup', 1, 'untimed rounds first'),
            ('--root-gb', 1, 'the flavor\'s root_gb (0: no size limit)'),
            ('--write-mb', 200, 'MiB of random data in the guest\'s root'),
            ('--shutdown-timeout', 0, 'seconds the guest has to shut down '
             'cleanly (Nova\'s shutdown_timeout; 0: killed)')):
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument('--backend', choices=('overlay', 'dir'),
                        default='overlay', help='[lxc] root_disk_backend')
    parser.add_argument('--privsep-daemon', default=True,
                        action=argparse.BooleanOptionalAction,
                        help='privsep entrypoints in a real privsep '
                             'daemon, as nova-compute runs them')
    parser.add_argument('--output', help='JSON file (default: '
                        'benchmarks/results/migration-<time>.json)')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: containers are started for real')
    if args.root_gb and args.write_mb > args.root_gb * 1024 * 0.8:
        sys.exit('--write-mb must leave room in --root-gb (at most 80%)')
    logging.getLogger('oslo.privsep').setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, terminated)
    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-migration-')
    os.chmod(base, 0o755)   # guests' root must reach the image cache
    sshd = lxc_fixtures.SshServer()
    try:
        sshd.setUp()
        configure(base, sshd, args.backend)
        privsep.sys_admin_pctxt.client_mode = args.privsep_daemon
        result = bench(base, args)
    finally:
        spawn.kill_everything(base, base, None)
        sshd.cleanUp()
    report(result)
    spawn.save(result, args.output, 'migration')


if __name__ == '__main__':
    main()
