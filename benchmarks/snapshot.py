"""Live snapshot throughput against plain ``tar -c``, and the frozen time.

Run as root: ``python benchmarks/snapshot.py [--runs N] [--size-mb M]``.

One unprivileged guest is spawned by LXCDriver from the busybox image; about
``--size-mb`` MB of real files (libraries and documentation from this
host's /usr) are put in its writable layer, owned by the guest's root, and
the guest is started. Each round then takes one snapshot the way
``LXCDriver.snapshot`` does (``storage.snapshot.take``: freeze, copy of the
writable layer, thaw), and streams that same snapshot several ways, in an
order rotating between rounds, each read to the end by this process from a
pipe (the stand-in for Glance; bytes are counted and dropped):

* ``ours-zstd``: ``storage.snapshot.send``, as the driver uploads it:
  read-only overlay in a private mount namespace, GNU tar in the guest's
  user namespace, zstd, through the FIFO;
* ``ours-plain``: the same without compression;
* ``tar``: plain ``tar -c`` as host root of the same merged tree (the same
  overlay of the same copy over the same image), no user namespace, no
  compression: the issue's baseline;
* ``tar|zstd``: that piped through the same zstd command, to tell the cost
  of compression from the cost of our machinery.

Ratios are baseline time / our time (throughput relative to ``tar -c``;
the issue's target is at least 0.8), for the stream alone and for the
whole snapshot (take + stream). The frozen time is the guest's, measured
around freeze and thaw. By default everything lives on a tmpfs mounted for
the run (``--on-disk`` uses /var/tmp): see benchmarks/README.md.
Results go to benchmarks/results/snapshot-<time>.json.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
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

CONF = nova_conf.CONF
IMAGE_ID = 'b3f1c0de-0000-4000-8000-00000000500a'
TARGET = 0.8
CHUNK = 1 << 20
VARIANTS = ('ours-zstd', 'ours-plain', 'tar', 'tar|zstd')
SOURCES = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
           '/usr/share')


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


def plain_tar(layer, lower, root, compress):
    """tar -c (| zstd) of the merged tree as host root; bytes out."""
    tar = subprocess.Popen(
        ['unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c',
         'mount -t overlay -o "$1" overlay "$2" && cd "$2" && shift 2 && '
         'exec "$@"', 'sh', 'ro,lowerdir=%s:%s' % (layer, lower), root,
         'tar', '-c', '-f', '-', '--numeric-owner', '--sparse', '.'],
        stdout=subprocess.PIPE)
    procs, out = [tar], tar.stdout
    if compress:
        procs.append(subprocess.Popen(snapshot.COMPRESSOR, stdin=tar.stdout,
                                      stdout=subprocess.PIPE))
        tar.stdout.close()
        out = procs[-1].stdout
    total = drain(out)
    out.close()
    for proc in procs:
        if proc.wait() != 0:
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
        self.lower, upper = snapshot._source(cdir)
        idmap = host.idmap()
        self.data_bytes = copy_files(os.path.join(upper, 'srv'),
                                     args.size_mb << 20)
        subprocess.run(['chown', '-R', '%d:%d' % (idmap.uid_start,
                                                  idmap.gid_start),
                        os.path.join(upper, 'srv')], check=True)
        self.driver.power_on(None, self.instance, None)
        snap = os.path.join(cdir, snapshot.SNAPSHOT_DIR)
        self.layer = os.path.join(snap, snapshot.LAYER)
        self.root = os.path.join(snap, 'bench-root')

    def take(self):
        started = time.monotonic()
        taken = snapshot.take(self.name)
        return dict(taken, seconds=time.monotonic() - started)

    def run(self, variant):
        if self.args.drop_caches:
            subprocess.run(['sync'])
            with open('/proc/sys/vm/drop_caches', 'w') as f:
                f.write('3')
        started = time.monotonic()
        if variant.startswith('ours'):
            _, sent = snapshot.send(self.name, drain,
                                    compress=variant == 'ours-zstd')
            size = sent['bytes']
        else:
            os.makedirs(self.root, exist_ok=True)
            size = plain_tar(self.layer, self.lower, self.root,
                             variant == 'tar|zstd')
        return time.monotonic() - started, size

    def close(self):
        snapshot.discard(self.name)
        self.driver.destroy(None, self.instance, None)


def rounds(bench, args):
    samples = {v: [] for v in VARIANTS}
    sizes = {}
    takes = []
    for i in range(args.warmup + args.runs):
        taken = bench.take()
        order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
        for variant in order:
            seconds, size = bench.run(variant)
            if i >= args.warmup:
                samples[variant].append(seconds)
                sizes[variant] = size
        if i >= args.warmup:
            takes.append(taken)
        snapshot.discard(bench.name)
    return samples, sizes, takes


def summary(values):
    return {'min': min(values), 'median': statistics.median(values),
            'max': max(values)}


def report(r):
    print('\n%d rounds; %.0f MB of files in the writable layer; merged '
          'tree %.0f MB as tar; %s' % (
              r['runs'], r['data_bytes'] / 1e6, r['tar_bytes'] / 1e6,
              r['storage']))
    print('%-11s %8s %8s %8s %10s %9s' % ('variant', 'min s', 'median s',
                                          'max s', 'MB/s tree', 'out MB'))
    for v, s in r['stream_s'].items():
        print('%-11s %8.3f %8.3f %8.3f %10.0f %9.1f' % (
            v, s['min'], s['median'], s['max'],
            r['tar_bytes'] / 1e6 / s['median'], r['out_bytes'][v] / 1e6))
    t = r['take']
    print('take (freeze, copy, thaw): median %.3f s; guest frozen: min '
          '%.3f, median %.3f, max %.3f s' % (
              t['take_s']['median'], t['frozen_s']['min'],
              t['frozen_s']['median'], t['frozen_s']['max']))
    for label, x in r['ratios'].items():
        print('%-44s %.2f' % (label, x))
    print('target: ours >= %.1fx tar -c (whole snapshot, zstd): %s' % (
        TARGET, 'met' if r['ratios']['tar / (take + ours-zstd)'] >= TARGET
        else 'MISSED'))
    print('load average before: %s; after: %s'
          % (r['loadavg_before'], r['loadavg_after']))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--size-mb', type=int, default=200,
                        help='MB of files put in the guest\'s writable layer')
    parser.add_argument('--root-gb', type=int, default=0,
                        help='the flavor\'s root_gb (0: no size limit)')
    parser.add_argument('--on-disk', metavar='DIR',
                        help='work in DIR instead of a tmpfs')
    parser.add_argument('--drop-caches', action='store_true',
                        help='drop the page cache before each stream')
    parser.add_argument('--output')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: a container is started for real')
    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-snapshot-',
                            dir=args.on_disk or '/var/tmp')
    tmpfs = not args.on_disk
    if tmpfs:
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%dm,mode=0755'
                        % (args.size_mb * 4 + 512 + (args.root_gb << 10)),
                        'tmpfs', base], check=True)
    os.chmod(base, 0o755)   # the guest's root must reach the image cache
    objects.register_all()
    CONF([], project='nova', default_config_files=[])
    CONF.set_override('instances_path', base)
    CONF.set_override('state_path', base)
    privsep.sys_admin_pctxt.client_mode = False
    bench = None
    try:
        bench = Bench(base, args)
        load_before = [round(x, 2) for x in os.getloadavg()]
        samples, sizes, takes = rounds(bench, args)
        load_after = [round(x, 2) for x in os.getloadavg()]
    finally:
        if bench is not None:
            bench.close()
        for name in os.listdir(CONF.lxc.container_path) \
                if os.path.isdir(CONF.lxc.container_path) else []:
            subprocess.run(['lxc-stop', '-k', '-n', name, '-P',
                            CONF.lxc.container_path], capture_output=True)
        if tmpfs:
            subprocess.run(['umount', '-l', base])
        shutil.rmtree(base, ignore_errors=True)

    stats = {v: summary(s) for v, s in samples.items()}
    take = {'take_s': summary([t['seconds'] for t in takes]),
            'recopied': [t['recopied'] for t in takes],
            'frozen_s': summary([t['frozen_seconds'] for t in takes])}
    med = {v: s['median'] for v, s in stats.items()}
    total = med['ours-zstd'] + take['take_s']['median']
    result = {
        'when': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'host': {'kernel': platform.release(), 'cpus': os.cpu_count(),
                 'liblxc': container.lxc_version(),
                 'python': platform.python_version()},
        'storage': 'tmpfs' if tmpfs else 'disk (%s)' % args.on_disk,
        'root_gb': args.root_gb, 'runs': args.runs,
        'data_bytes': bench.data_bytes, 'tar_bytes': sizes['tar'],
        'out_bytes': sizes, 'stream_s': stats, 'take': take,
        'ratios': {
            'tar / ours-plain (stream)': med['tar'] / med['ours-plain'],
            'tar / ours-zstd (stream)': med['tar'] / med['ours-zstd'],
            'tar|zstd / ours-zstd (stream, same work)':
                med['tar|zstd'] / med['ours-zstd'],
            'tar / (take + ours-plain)':
                med['tar'] / (med['ours-plain'] + take['take_s']['median']),
            'tar / (take + ours-zstd)': med['tar'] / total,
        },
        'loadavg_before': load_before, 'loadavg_after': load_after,
        'samples_s': samples,
        'takes': takes,
    }
    report(result)
    output = args.output or os.path.join(
        HERE, 'results', 'snapshot-%s.json' %
        datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
        json.dump(result, f, indent=2)
    print('JSON: %s' % output)


if __name__ == '__main__':
    main()
