"""Live snapshot throughput against plain ``tar -c``, and the frozen time.

Run as root: ``python benchmarks/snapshot.py [--backend overlay|dir|btrfs]
[--runs N] [--size-mb M]``.

One unprivileged guest is spawned by LXCDriver from the busybox image on the
chosen root-disk backend (``[lxc] root_disk_backend``; for ``btrfs`` on a
loop-mounted btrfs made for the run); about ``--size-mb`` MB of real files
(libraries and documentation from this host's /usr) are put in its root's
writable tree (the overlay's upper layer, or the root itself for ``dir`` and
``btrfs``), owned by the guest's root, and the guest is started. Each round
runs every variant below once, in an order rotating between rounds; for
each one a writer is started in the guest (a shell loop appending to
/var/log/writer, much as the functional snapshot test does), a snapshot
is taken the way ``LXCDriver.snapshot`` does (``storage.snapshot.take``:
copy, freeze, catch up, thaw; on btrfs a read-only subvolume snapshot made
while frozen), the writer is stopped, and the stream is read to its end by this
process from a pipe (the stand-in for Glance; bytes are counted and
dropped). A fresh snapshot for every stream, as every upload has: on btrfs
a new subvolume's files are not in the page cache yet (the guest's own
are), so reading one snapshot several times would favour every stream
but the first.

* ``ours-zstd``: ``storage.snapshot.send``, as the driver uploads it: GNU
  tar in the guest's user namespace (over a read-only overlay in a private
  mount namespace for ``overlay``), zstd, through the FIFO;
* ``ours-plain``: the same without compression;
* ``tar``: plain ``tar -c`` as host root, no user namespace, no
  compression: the issue's baseline. For ``overlay``, of the same merged
  tree (the same overlay of the same copy over the same image); for
  ``dir`` and ``btrfs``, of the guest's root directory itself (on btrfs
  its root subvolume), with no overlay;
* ``tar|zstd``: that piped through the same zstd command, to tell the cost
  of compression from the cost of our machinery;
* ``tar-copy`` (``dir`` and ``btrfs``): ``tar -c`` of the very tree ours
  reads, the copy ``take`` made (on btrfs the read-only snapshot), to tell
  what reading a fresh snapshot costs from what our machinery costs.

Ratios are baseline time / our time (throughput relative to ``tar -c``;
the issue's target is at least 0.8), for the stream alone and for the
whole snapshot (take + stream). The frozen time is the guest's, measured
by ``take`` around freeze and thaw; the stall is the longest pause of the
writer's appends seen from the host during ``take`` (its log polled every
ms by another process; a pause counts between two polls that saw the same
size), which also shows a guest starved of CPU while ``take`` copies.
By default everything lives on a tmpfs mounted for the run (``--on-disk
DIR`` works in DIR), the btrfs image file too: see benchmarks/README.md.
Results go to benchmarks/results/snapshot-<backend>-<time>.json.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')
# This checkout's code, not an installed copy.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from nova import monkey_patch  # noqa: E402,I100
monkey_patch.patch()

from nova import conf as nova_conf  # noqa: E402
from nova.image import glance  # noqa: E402
from nova import objects  # noqa: E402
from nova.virt import fake  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

from nova_lxd_py import privsep  # noqa: E402
from nova_lxd_py.storage import snapshot  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import driver as lxc_driver  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402

import _btrfs  # noqa: E402

CONF = nova_conf.CONF
IMAGE_ID = 'b3f1c0de-0000-4000-8000-00000000500a'
TARGET = 0.8
FROZEN_TARGET_S = 1.0
CHUNK = 1 << 20
BACKENDS = ('overlay', 'dir', 'btrfs')
VARIANTS = ('ours-zstd', 'ours-plain', 'tar', 'tar|zstd')
COPY_VARIANT = 'tar-copy'
SOURCES = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
           '/usr/share')
TAR = ('tar', '-c', '-f', '-', '--numeric-owner', '--sparse', '.')
# tar's exit status when a file changed while it was read: the live root
# of a running guest (its init may touch a file); the bytes are all there.
TAR_CHANGED = 1
# The functional snapshot test's writer (a builtin appending lines as fast
# as the guest can), with its pid kept: it runs only while a snapshot is
# taken, and no stream competes with it for the CPUs.
LOG = '/var/log/writer'
WRITER_PID = '/var/log/writer.pid'
WRITER = (': > %s; i=0; while :; do echo "$i" >> %s; i=$((i+1)); done '
          '</dev/null >/dev/null 2>&1 & echo $! > %s'
          % (LOG, LOG, WRITER_PID))
STOP_WRITER = 'kill "$(cat %s)"; rm -f %s' % (WRITER_PID, WRITER_PID)
# Run in its own process (not a thread: take's frozen pass is Python and
# must not share our GIL): polls the writer's log every ms until its stdin
# closes, then prints the longest time between two polls that saw the same
# size (the writer surely wrote nothing meanwhile: a time this process was
# not scheduled does not count), the longest time between two polls, and
# the number of polls.
STALL_WATCH = r"""
import os, select, sys, time
size = since = last = None
stall = gap = 0.0
polls = 0
print('ready', flush=True)
while not select.select([sys.stdin], [], [], 0.001)[0]:
    try:
        now_size = os.stat(sys.argv[1]).st_size
    except FileNotFoundError:
        now_size = -1
    now = time.monotonic()
    if last is not None:
        gap = max(gap, now - last)
    last = now
    if now_size != size:
        size, since = now_size, now
    else:
        stall = max(stall, now - since)
    polls += 1
print(stall, gap, polls, flush=True)
"""
BTRFS_FS_MB = 1024   # beyond 3x --size-mb: the image, metadata, the log


def copy_files(dest, budget):
    """Copy regular files and symlinks from /usr until ``budget`` bytes."""
    used = 0
    for src in SOURCES:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, '/')
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if not (os.path.islink(path) or os.path.isfile(path)):
                    continue
                size = os.lstat(path).st_size
                if used + size > budget:
                    continue
                os.makedirs(os.path.join(dest, rel), exist_ok=True)
                if os.path.islink(path):
                    os.symlink(os.readlink(path),
                               os.path.join(dest, rel, name))
                else:
                    shutil.copyfile(path, os.path.join(dest, rel, name))
                    used += size
            if used >= budget - (1 << 20):
                return used
    return used


def drain(f):
    """Read ``f`` to its end; the bytes read."""
    total = 0
    while True:
        data = f.read(CHUNK)
        if not data:
            return total
        total += len(data)


def tar_command(tree, lower=None, root=None):
    """tar -c as host root of ``tree``, or of ``tree`` stacked over
    ``lower`` in a read-only overlay at ``root`` (private mount ns)."""
    if lower is None:
        return ['tar', '-C', tree] + list(TAR[1:])
    return ['unshare', '--mount', '--propagation', 'private', '--', 'sh',
            '-c', 'mount -t overlay -o "$1" overlay "$2" && cd "$2" && '
            'shift 2 && exec "$@"', 'sh',
            'ro,lowerdir=%s:%s' % (tree, lower), root] + list(TAR)


def plain_tar(argv, compress, live=False):
    """``argv`` (| zstd) read to its end; bytes out."""
    tar = subprocess.Popen(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE if live else None)
    # Pipes as wide as ours (snapshot.send's), so both sides are woken as
    # often: the baseline is not slowed by our harness.
    snapshot._widen(tar.stdout.fileno())
    procs, out = [tar], tar.stdout
    if compress:
        procs.append(subprocess.Popen(snapshot.COMPRESSORS['zstd'],
                                      stdin=tar.stdout,
                                      stdout=subprocess.PIPE))
        tar.stdout.close()
        out = procs[-1].stdout
        snapshot._widen(out.fileno())
    total = drain(out)
    out.close()
    for proc in procs:
        code = proc.wait()
        if proc is tar and live:
            err = tar.stderr.read().decode(errors='replace')
            tar.stderr.close()
            if code == TAR_CHANGED and 'changed as we read it' in err:
                continue
            sys.stderr.write(err)
        if code != 0:
            raise RuntimeError('%s failed' % proc.args[0])
    return total


class Bench:
    def __init__(self, base, args):
        self.args = args
        tarball = guest_image.write_tarball(
            os.path.join(base, 'busybox.tar.gz'), 'bench')

        class LocalGlance:
            def get(self, context, image_id):
                return {'id': image_id, 'disk_format': 'raw',
                        'container_format': 'bare'}

            def download(self, context, image_id, data=None,
                         trusted_certs=None):
                with open(tarball, 'rb') as f:
                    shutil.copyfileobj(f, data)

        glance.API = LocalGlance
        self.driver = lxc_driver.LXCDriver(fake.FakeVirtAPI())
        self.driver.init_host(host='bench')
        self.name = uuidutils.generate_uuid()
        flavor = objects.Flavor(
            name='bench', flavorid='bench', memory_mb=256, vcpus=1,
            root_gb=args.root_gb, ephemeral_gb=0, swap=0, extra_specs={})
        self.instance = objects.Instance(
            id=1, uuid=self.name, flavor=flavor, hostname='bench',
            trusted_certs=None)
        self.driver.spawn(None, self.instance, objects.ImageMeta.from_dict(
            {'id': IMAGE_ID, 'disk_format': 'raw',
             'container_format': 'bare'}), [], None, {}, power_on=False)
        cdir = container.container_dir(self.name)
        # The writable tree: the overlay's upper layer (over ``lower``,
        # the cached image) or, for dir and btrfs, the whole root.
        self.lower, self.tree = snapshot._source(cdir)
        idmap = host.idmap()
        self.data_bytes = copy_files(os.path.join(self.tree, 'srv'),
                                     args.size_mb << 20)
        subprocess.run(['chown', '-R', '%d:%d' % (idmap.uid_start,
                                                  idmap.gid_start),
                        os.path.join(self.tree, 'srv')], check=True)
        self.driver.power_on(None, self.instance, None)
        snap = os.path.join(cdir, snapshot.SNAPSHOT_DIR)
        self.layer = os.path.join(snap, snapshot.LAYER)
        self.root = os.path.join(snap, 'bench-root')
        self.log = os.path.join(self.tree, LOG.lstrip('/'))
        self.variants = VARIANTS + (() if self.lower else (COPY_VARIANT,))

    def guest(self, script):
        code, out = container.run_in_guest(self.name, ['sh', '-c', script],
                                           30)
        if code:
            raise RuntimeError('in the guest: %r: %s' % (script, out))

    def start_writer(self):
        """Start the writer and wait until the host sees it writing."""
        self.guest(WRITER)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.log) or \
                os.path.getsize(self.log) < 4096:
            if time.monotonic() > deadline:
                raise RuntimeError('the guest writer wrote nothing')
            time.sleep(0.01)

    def take(self):
        self.start_writer()
        watch = subprocess.Popen(
            [sys.executable, '-c', STALL_WATCH, self.log],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            watch.stdout.readline()   # ready
            started = time.monotonic()
            taken = snapshot.take(self.name)
            seconds = time.monotonic() - started
        finally:
            watch.stdin.close()
            watched = watch.stdout.read().split()
            watch.wait()
            self.guest(STOP_WRITER)
        stall, gap, polls = watched
        return dict(taken, seconds=seconds, stall_seconds=float(stall),
                    stall_polls=int(polls), poll_gap_seconds=float(gap),
                    log_bytes=os.path.getsize(self.log))

    def run(self, variant):
        if self.args.drop_caches:
            subprocess.run(['sync'])
            with open('/proc/sys/vm/drop_caches', 'w') as f:
                f.write('3')
        started = time.monotonic()
        if variant.startswith('ours'):
            _, sent = snapshot.send(
                self.name, drain,
                'zstd' if variant == 'ours-zstd' else 'none')
            size = sent['bytes']
        elif variant == COPY_VARIANT:
            size = plain_tar(tar_command(self.layer), False)
        elif self.lower:
            os.makedirs(self.root, exist_ok=True)
            size = plain_tar(tar_command(self.layer, self.lower, self.root),
                             variant == 'tar|zstd')
        else:
            size = plain_tar(tar_command(self.tree), variant == 'tar|zstd',
                             live=True)
        return time.monotonic() - started, size

    def close(self):
        try:
            snapshot.discard(self.name)
        finally:
            self.driver.destroy(None, self.instance, None)


def rounds(bench, args):
    variants = bench.variants
    samples = {v: [] for v in variants}
    sizes = {}
    takes = []
    for i in range(args.warmup + args.runs):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for variant in order:
            taken = bench.take()
            try:
                seconds, size = bench.run(variant)
            finally:
                snapshot.discard(bench.name)
            if i >= args.warmup:
                samples[variant].append(seconds)
                sizes[variant] = size
                takes.append(dict(taken, before=variant))
    return samples, sizes, takes


def summary(values):
    return {'min': min(values), 'median': statistics.median(values),
            'max': max(values)}


def report(r):
    print('\n%s backend, %d rounds; %.0f MB of files in the guest\'s '
          'writable tree; tree %.0f MB as tar; %s' % (
              r['backend'], r['runs'], r['data_bytes'] / 1e6,
              r['tar_bytes'] / 1e6, r['storage']))
    print('%-11s %8s %8s %8s %10s %9s' % ('variant', 'min s', 'median s',
                                          'max s', 'MB/s tree', 'out MB'))
    for v, s in r['stream_s'].items():
        print('%-11s %8.3f %8.3f %8.3f %10.0f %9.1f' % (
            v, s['min'], s['median'], s['max'], r['mb_per_s'][v],
            r['out_bytes'][v] / 1e6))
    t = r['take']
    print('take: median %.3f s, max %.3f s; entries copied again while '
          'frozen: %s' % (t['take_s']['median'], t['take_s']['max'],
                          t['recopied']))
    for key, label in (('frozen_s', 'guest frozen (take)'),
                       ('stall_s', 'writer stalled (host view)'),
                       ('poll_gap_s', 'longest poll interval')):
        print('%-27s min %.3f, median %.3f, max %.3f s' % (
            label, t[key]['min'], t[key]['median'], t[key]['max']))
    for label, x in r['ratios'].items():
        print('%-44s %.2f' % (label, x))
    print('target: ours >= %.1fx tar -c (whole snapshot, zstd): %s' % (
        TARGET, 'met' if r['ratios']['tar / (take + ours-zstd)'] >= TARGET
        else 'MISSED'))
    print('target: guest frozen < %.0f s (max of the rounds): %s' % (
        FROZEN_TARGET_S, 'met' if t['frozen_s']['max'] < FROZEN_TARGET_S
        else 'MISSED'))
    print('load average before: %s; after: %s'
          % (r['loadavg_before'], r['loadavg_after']))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backend', choices=BACKENDS, default='overlay',
                        help='[lxc] root_disk_backend of the guest; btrfs '
                             'runs on a loop-mounted btrfs made for the run')
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--size-mb', type=int, default=200,
                        help='MB of files put in the guest\'s writable tree')
    parser.add_argument('--root-gb', type=int, default=0,
                        help='the flavor\'s root_gb (0: no size limit)')
    parser.add_argument('--on-disk', metavar='DIR',
                        help='work in DIR instead of a tmpfs')
    parser.add_argument('--drop-caches', action='store_true',
                        help='drop the page cache before each stream')
    parser.add_argument('--output')
    return parser.parse_args()


def configure(base, top, args):
    """Point the driver at ``top``: ``base`` or a btrfs mounted in it."""
    objects.register_all()
    CONF([], project='nova', default_config_files=[])
    CONF.set_override('state_path', base)
    CONF.set_override('root_disk_backend', args.backend, group='lxc')
    CONF.set_override('instances_path', top)
    CONF.set_override('container_path', os.path.join(top, 'containers'),
                      group='lxc')
    CONF.set_override('image_cache_path', os.path.join(top, '_base_lxc'),
                      group='lxc')
    privsep.sys_admin_pctxt.client_mode = False


def measure(base, args):
    """Set up, run the rounds and clean up, whatever happens.

    Only what this run made is stopped, unmounted or removed: containers
    in its own lxcpath, the btrfs and the tmpfs it mounted, ``base``.
    """
    tmpfs = not args.on_disk
    fs = _btrfs.LoopBtrfs(base) if args.backend == 'btrfs' else None
    top = fs.path if fs else base
    bench = None
    try:
        if tmpfs:
            mb = args.size_mb * 4 + 512 + (args.root_gb << 10)
            if fs:
                mb += args.size_mb * 3 + BTRFS_FS_MB
            subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%dm,'
                            'mode=0755' % mb, 'tmpfs', base], check=True)
        os.chmod(base, 0o755)   # the guest's root must reach the image cache
        if fs:
            fs.make(args.size_mb * 3 + BTRFS_FS_MB + (args.root_gb << 10))
        configure(base, top, args)
        bench = Bench(base, args)
        load_before = [round(x, 2) for x in os.getloadavg()]
        samples, sizes, takes = rounds(bench, args)
        load_after = [round(x, 2) for x in os.getloadavg()]
        return (bench.data_bytes, samples, sizes, takes, load_before,
                load_after)
    finally:
        cleanup(base, top, fs, bench, tmpfs)


def cleanup(base, top, fs, bench, tmpfs):
    """Each step runs even if one before it failed (the first error is
    raised at the end, after everything was tried)."""
    steps = [lambda: bench and bench.close(),
             lambda: _btrfs.stop_containers(os.path.join(top, 'containers')),
             lambda: fs and fs.close()]
    if tmpfs:
        steps.append(lambda: _btrfs.unmount(base, fs.lazy if fs else ()))
    steps.append(lambda: shutil.rmtree(base))
    failed = []
    for step in steps:
        try:
            step()
        except Exception as e:
            print('cleanup: %s' % e, file=sys.stderr)
            failed.append(e)
    if failed:
        raise failed[0]


def results(args, measured):
    data_bytes, samples, sizes, takes, load_before, load_after = measured
    stats = {v: summary(s) for v, s in samples.items()}
    take = {'take_s': summary([t['seconds'] for t in takes]),
            'recopied': [t['recopied'] for t in takes],
            'frozen_s': summary([t['frozen_seconds'] for t in takes]),
            'stall_s': summary([t['stall_seconds'] for t in takes]),
            'poll_gap_s': summary([t['poll_gap_seconds'] for t in takes])}
    med = {v: s['median'] for v, s in stats.items()}
    total = med['ours-zstd'] + take['take_s']['median']
    ratios = {
        'tar / ours-plain (stream)': med['tar'] / med['ours-plain'],
        'tar / ours-zstd (stream)': med['tar'] / med['ours-zstd'],
        'tar|zstd / ours-zstd (stream, same work)':
            med['tar|zstd'] / med['ours-zstd'],
        'tar / (take + ours-plain)':
            med['tar'] / (med['ours-plain'] + take['take_s']['median']),
        'tar / (take + ours-zstd)': med['tar'] / total,
    }
    if COPY_VARIANT in med:
        ratios['tar-copy / ours-plain (stream, same tree)'] = \
            med[COPY_VARIANT] / med['ours-plain']
    return {
        'when': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'host': {'kernel': platform.release(), 'cpus': os.cpu_count(),
                 'liblxc': container.lxc_version(),
                 'python': platform.python_version()},
        'backend': args.backend,
        'baseline': ('tar -c of the merged overlay of the copy over the '
                     'image' if args.backend == 'overlay' else
                     'tar -c of the guest\'s root %s' % (
                         'subvolume' if args.backend == 'btrfs'
                         else 'directory')),
        'storage': ('tmpfs' if not args.on_disk else
                    'disk (%s)' % args.on_disk) +
                   (', btrfs in a loop-mounted file there'
                    if args.backend == 'btrfs' else ''),
        'root_gb': args.root_gb, 'runs': args.runs,
        'data_bytes': data_bytes, 'tar_bytes': sizes['tar'],
        'out_bytes': sizes, 'stream_s': stats,
        'mb_per_s': {v: sizes['tar'] / 1e6 / m for v, m in med.items()},
        'take': take, 'ratios': ratios,
        'loadavg_before': load_before, 'loadavg_after': load_after,
        'samples_s': samples,
        'takes': takes,
    }


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: a container is started for real')
    if args.backend == 'btrfs' and _btrfs.missing_tools():
        sys.exit(_btrfs.missing_tools())
    # A kill runs the clean-up too (an interrupt does already).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(
        'killed: cleaning up'))
    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-snapshot-',
                            dir=args.on_disk or '/var/tmp')
    result = results(args, measure(base, args))
    report(result)
    output = args.output or os.path.join(
        HERE, 'results', 'snapshot-%s-%s.json' % (
            args.backend, datetime.datetime.now().strftime('%Y%m%d-%H%M%S')))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
        json.dump(result, f, indent=2)
    print('JSON: %s' % output)


if __name__ == '__main__':
    main()
