"""Spawn and delete: LXCDriver against raw ``lxc-start`` of the same rootfs.

Run as root: ``python benchmarks/spawn.py [--runs N]``. Each round runs
every variant once, in an order rotating between rounds: ``baseline``
(``lxc-start`` of a minimal config over the driver's cached rootfs),
``same-cfg`` (the same with the driver's config text), ``driver``
(``LXCDriver.spawn``/``destroy``, privsep entrypoints in this process) and
``driver-psd`` (through a real privsep daemon). Then, untimed, each step of
spawn and destroy is timed, and a few containers of each kind are kept up
to read their memory.

``--backend`` and ``--root-gb`` choose the driver's root disk (``[lxc]
root_disk_backend`` and the flavor's ``root_gb``); for ``btrfs`` the run
works on a loop-mounted btrfs made for it. ``--write-mb N`` then times a
guest writing N MB to its root (``dd ... conv=fsync``) with that root disk
and with ``root_gb`` 0. benchmarks/README.md has the details.
"""

import argparse
import collections
import datetime
import functools
import gc
import itertools
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')
from nova import monkey_patch  # noqa: E402,I100
monkey_patch.patch()

from nova import conf as nova_conf  # noqa: E402
from nova import objects  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.image import glance  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

from nova_lxd_py import privsep  # noqa: E402
from nova_lxd_py.privsep import fs  # noqa: E402
from nova_lxd_py.storage import backends  # noqa: E402
from nova_lxd_py.storage.backends import btrfs  # noqa: E402
from nova_lxd_py.storage.backends import disk  # noqa: E402
from nova_lxd_py.storage import images  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.virt import config  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import driver as lxc_driver  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402
from nova_lxd_py.virt import templates  # noqa: E402

import _btrfs  # noqa: E402

CONF = nova_conf.CONF
HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_ID = 'b3f1c0de-0000-4000-8000-00000000be0c'
TARGET_RATIO = 1.5
OPS = ('spawn', 'delete')
CDIR = '@CDIR@'
BACKENDS = tuple(backends.BACKENDS)
BTRFS_FS_MB = 2048   # plus the guests' writes; sparse
WRITE_ROUNDS = 3
# Busybox's time applet: "real\t0m 1.23s" on stderr (centiseconds).
WRITE_SCRIPT = ('time dd if=/dev/zero of=/var/write-test bs=1M count=%d '
                'conv=fsync 2>&1 && rm /var/write-test')
REAL_TIME = re.compile(r'real\s+(\d+)m\s*([0-9.]+)s')
MEMORY = {'payload': 'payload', 'monitor_rss': 'monitor RSS',
          'monitor_pss': 'PSS', 'monitor_uss': 'USS'}

BASELINE_CONFIG = """\
lxc.uts.name = bench
lxc.rootfs.path = overlay:{lower}:{cdir}/upper
lxc.idmap = u 0 {uid} {size}
lxc.idmap = g 0 {gid} {size}
lxc.autodev = 1
lxc.tty.max = 0
lxc.pty.max = 64
lxc.net.0.type = empty
lxc.mount.auto = cgroup:mixed proc:mixed sys:mixed
"""

# Modules whose functions the profile times, and helpers it leaves out.
PROFILED = ((container, ('_checked', 'container_dir')), (host, ()),
            (templates, ('_template_dirs',)),
            (config, ('_bool', '_spec')), (fs, ('_owned',)),
            (disk, ('_files', '_confined', '_run', 'image_path',
                    'mount_point', 'names')),
            (btrfs, ('fs_magic', 'fs_uuid', 'existing_ancestor', '_inside',
                     'qgroup_limit_arg', 'is_subvolume', '_subvolume_id')))


# -- the two ways to make a container ----------------------------------------

class Baseline:
    """Raw liblxc tools on a hand-made container directory."""

    def __init__(self, lxcpath, config, idmap, files=None):
        self.lxcpath = lxcpath
        self.config = config   # its text, CDIR standing for the container dir
        self.idmap = idmap
        self.files = files or {}   # other files the config reads: text
        os.makedirs(lxcpath, mode=0o711, exist_ok=True)

    def _lxc(self, tool, name, *args, check=True):
        return subprocess.run([tool, '-n', name, '-P', self.lxcpath, *args],
                              check=check, capture_output=True,
                              text=True).stdout.strip()

    def spawn(self, name):
        cdir = os.path.join(self.lxcpath, name)
        os.mkdir(cdir, 0o711)
        for sub in ('upper', 'work'):
            os.mkdir(os.path.join(cdir, sub), 0o755)
            os.chown(os.path.join(cdir, sub), self.idmap.uid_start,
                     self.idmap.gid_start)
        with open(os.path.join(cdir, 'config'), 'w') as f:
            f.write(self.config.replace(CDIR, cdir))
        for rel, text in self.files.items():
            with open(os.path.join(cdir, rel), 'w') as f:
                f.write(text)
        self._lxc('lxc-start', name, '-o', os.path.join(cdir, 'lxc.log'),
                  '-l', 'WARN')

    def state(self, name):
        return self._lxc('lxc-info', name, '-s', '-H', check=False)

    def delete(self, name):
        self._lxc('lxc-stop', name, '-k')
        shutil.rmtree(os.path.join(self.lxcpath, name))


class Driver:
    """LXCDriver called as the compute manager calls it; privsep
    entrypoints run in this process, or with ``daemon`` in privsep-helper."""

    def __init__(self, daemon=False, root_gb=0):
        self.daemon = daemon
        self.driver = lxc_driver.LXCDriver(fake.FakeVirtAPI())
        self.driver.init_host(host='bench')
        self.flavor = objects.Flavor(
            name='bench.tiny', flavorid='bench', memory_mb=256, vcpus=1,
            root_gb=root_gb, ephemeral_gb=0, swap=0, extra_specs={})
        self.image_meta = objects.ImageMeta.from_dict(
            {'id': IMAGE_ID, 'disk_format': 'raw',
             'container_format': 'bare'})
        self.instances, self.ids = {}, itertools.count(1)

    def _privsep_mode(self):
        # Both Driver variants share the one privsep context.
        privsep.sys_admin_pctxt.client_mode = self.daemon

    def spawn(self, name):
        self._privsep_mode()
        # An id, as a database-backed instance has, makes instance.name.
        instance = objects.Instance(
            id=next(self.ids), uuid=name, flavor=self.flavor,
            hostname='bench', trusted_certs=None, config_drive='',
            system_metadata={}, image_ref=IMAGE_ID)
        self.instances[name] = instance
        self.driver.spawn(None, instance, self.image_meta, injected_files=[],
                          admin_password=None, allocations={})

    def state(self, name):
        self._privsep_mode()
        return container.state(name)[0]

    def delete(self, name):
        self._privsep_mode()
        self.driver.destroy(None, self.instances.pop(name), network_info=[])


# -- timing ------------------------------------------------------------------

def summary(samples):
    ordered = sorted(samples)
    return {'n': len(ordered), 'min': ordered[0],
            'median': statistics.median(ordered),
            'p90': ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)],
            'max': ordered[-1]}


def timed(fn, name):
    gc.collect()
    start = time.perf_counter()
    fn(name)
    return (time.perf_counter() - start) * 1000.0


def host_facts():
    """What a result depends on besides the code: kernel, CPUs, liblxc,
    cgroups, lxcfs, Python, and the LXD or Incus measured against."""
    return {'kernel': platform.release(), 'cpus': os.cpu_count(),
            'liblxc': container.lxc_version(),
            'cgroup_version': host.cgroup_version(),
            'lxcfs': host.lxcfs_active(),
            'python': platform.python_version(),
            'lxd': shutil.which('lxd') or shutil.which('incus')}


def run_rounds(variants, rounds, warmup):
    """{label: {op: [ms]}} over ``rounds`` rounds after ``warmup`` more."""
    labels = list(variants)
    samples = {label: {op: [] for op in OPS} for label in labels}
    for i in range(warmup + rounds):
        shift = i % len(labels)
        for label in labels[shift:] + labels[:shift]:
            kind, name = variants[label], uuidutils.generate_uuid()
            spawn_ms = timed(kind.spawn, name)
            state = kind.state(name)
            if state != 'RUNNING':
                raise RuntimeError('%s: %s is %s after spawn'
                                   % (label, name, state))
            delete_ms = timed(kind.delete, name)
            if i >= warmup:
                samples[label]['spawn'].append(spawn_ms)
                samples[label]['delete'].append(delete_ms)
    return samples


def profile(drv, runs):
    """Median ms of each step of spawn and destroy over ``runs``.

    Steps are the functions of the PROFILED modules (privsep entrypoints
    included), the image cache, the root-disk backend and the driver's
    private methods; a step called within another is one level deeper.
    """
    totals = {}   # (depth, step) -> [ms within each run], first seen first
    counts, patched = collections.Counter(), []
    depth = run = 0

    def wrap(owner, attr, label):
        # As stored: a static method must stay one (called on an instance,
        # a plain function would get the instance too).
        raw = vars(owner).get(attr)
        kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) \
            else None
        original = raw.__func__ if kind else getattr(owner, attr)

        @functools.wraps(original)
        def timed_call(*args, **kwargs):
            nonlocal depth
            key = (depth, label)
            times = totals.setdefault(key, [0.0] * runs)
            counts[key] += 1
            depth += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth -= 1
                times[run] += (time.perf_counter() - start) * 1000.0

        setattr(owner, attr, kind(timed_call) if kind else timed_call)
        patched.append((owner, attr, raw))

    for module, skip in PROFILED:
        for attr, value in list(vars(module).items()):
            # A privsep entrypoint is a functools.partial of the function.
            func = value.args[-1] if isinstance(value, functools.partial) \
                else value
            if callable(func) and not isinstance(func, type) and \
                    getattr(func, '__module__', None) == module.__name__ \
                    and attr not in skip:
                wrap(module, attr, '%s.%s' % (
                    module.__name__.rsplit('.', 1)[-1], attr))
    cls = lxc_driver.LXCDriver
    methods = [(images.ImageCache, 'get')] + [
        (backend, attr) for backend in set(backends.BACKENDS.values())
        for attr in ('create', 'destroy')] + [
        (cls, attr) for attr in ['spawn', 'destroy'] + sorted(
            attr for attr, value in vars(cls).items()
            if attr.startswith('_') and not attr.startswith('__') and
            callable(value))]
    for owner, attr in methods:
        wrap(owner, attr, '%s.%s' % (owner.__name__, attr))
    try:
        for run in range(runs):
            name = uuidutils.generate_uuid()
            drv.spawn(name)
            drv.delete(name)
    finally:
        for owner, attr, raw in reversed(patched):
            if raw is None:   # inherited
                delattr(owner, attr)
            else:
                setattr(owner, attr, raw)
    return [{'depth': key[0], 'step': key[1],
             'median_ms': statistics.median(values),
             'calls_per_run': counts[key] / runs}
            for key, values in totals.items()]


# -- memory ------------------------------------------------------------------

def memory_of(name):
    """Bytes of one container's payload cgroup, and RSS, PSS and USS
    (private pages) of its ``[lxc monitor]``, an lxc-start process."""
    found = dict.fromkeys(MEMORY)
    path = 'memory/lxc.payload.%s/memory.usage_in_bytes' \
        if host.cgroup_version() == 1 else 'lxc.payload.%s/memory.current'
    try:
        with open(os.path.join(host.CGROUP_ROOT, path % name)) as f:
            found['payload'] = int(f.read())
    except OSError:   # no memory controller for it
        pass
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read()
            if not (cmd.startswith(b'[lxc monitor]') and
                    name.encode() in cmd):
                continue
            with open('/proc/%s/smaps_rollup' % pid) as f:
                kib = {line.split(':')[0]: int(line.split()[1])
                       for line in f if line.split()[-1] == 'kB'}
        except OSError:
            continue
        found.update(monitor_rss=kib['Rss'] * 1024,
                     monitor_pss=kib['Pss'] * 1024,
                     monitor_uss=(kib['Private_Clean'] +
                                  kib['Private_Dirty']) * 1024)
        break
    return found


def density(variants, count, settle=1.0):
    """Median memory per container with ``count`` of each kind up."""
    result = {}
    for label, kind in variants.items():
        names = [uuidutils.generate_uuid() for _ in range(count)]
        try:
            for name in names:
                kind.spawn(name)
            time.sleep(settle)
            readings = [memory_of(n) for n in names]
        finally:
            for name in names:
                if kind.state(name) not in ('', 'UNDEFINED'):
                    kind.delete(name)
        result[label] = {'containers': count}
        for key in readings[0]:
            values = [r[key] for r in readings if r[key] is not None]
            result[label][key] = statistics.median(values) if values else None
    return result


# -- guest writes ------------------------------------------------------------

def guest_write(drv, mb):
    """Seconds a fresh guest of ``drv`` takes to write ``mb`` MiB of zeros
    to its root and fsync them, by busybox's ``time`` in the guest (the
    attach is not counted)."""
    name = uuidutils.generate_uuid()
    drv.spawn(name)
    try:
        code, out = container.run_in_guest(
            name, ['sh', '-c', WRITE_SCRIPT % mb], 600)
    finally:
        drv.delete(name)
    found = REAL_TIME.search(out)
    if code or not found:
        raise RuntimeError('guest write failed (%d): %s' % (code, out))
    return int(found.group(1)) * 60 + float(found.group(2))


def write_throughput(drivers, mb):
    """MB/s (10^6 bytes) of guest writes for each root_gb in ``drivers``,
    a fresh guest per write, alternating between them."""
    seconds = {root_gb: [] for root_gb in drivers}
    for i in range(WRITE_ROUNDS):
        order = sorted(drivers, reverse=bool(i % 2))
        for root_gb in order:
            seconds[root_gb].append(guest_write(drivers[root_gb], mb))
    return {'mib': mb, 'rounds': WRITE_ROUNDS, 'by_root_gb': {
        root_gb: {'seconds': s, 'mb_per_s': [(mb << 20) / 1e6 / x
                                             for x in s],
                  'median_mb_per_s': (mb << 20) / 1e6 / statistics.median(s)}
        for root_gb, s in seconds.items()}}


# -- setup, report -----------------------------------------------------------

def configure(base, top, backend):
    """A nova.conf for this run, shared with the privsep daemon, with
    absolute paths: the daemon cannot expand '$instances_path/...'.
    The driver's directories are in ``top``: ``base`` or a btrfs there."""
    objects.register_all()
    path = os.path.join(base, 'nova.conf')
    with open(path, 'w') as f:
        f.write('[DEFAULT]\ninstances_path = %s\n'
                '[lxc]\ncontainer_path = %s/containers\n'
                'image_cache_path = %s/_base_lxc\n'
                'root_disk_backend = %s\n' % (top, top, top, backend))
    CONF(['--config-file', path], project='nova', default_config_files=[])
    CONF.set_override(
        'helper_command', '%s --config-file %s' % (
            os.path.join(os.path.dirname(sys.executable), 'privsep-helper'),
            path), group='nova_lxd_py_privileged')
    privsep.sys_admin_pctxt.client_mode = False


def kill_everything(base, top, fs):
    """Kill the containers left in this run's lxcpaths, unmount what is
    still mounted below ``base`` (root disks of killed guests, the btrfs;
    their loop devices go with them) and remove it all."""
    for lxcpath in ('containers', 'baseline'):
        _btrfs.stop_containers(os.path.join(top, lxcpath))
    if fs:
        fs.close()
    for point in sorted(_btrfs.mounts_under(base), reverse=True):
        _btrfs.unmount(point)
    shutil.rmtree(base, ignore_errors=True)


def _mib(value):
    return 'n/a' if value is None else '%.2f' % (value / 1048576.0)


def print_report(r, args):
    print('\nroot disk: backend %s, root_gb %d (%s)' % (
        r['backend'], r['root_gb'], r['storage']))
    print('ms over %d runs of each; last column: ratio to the baseline of '
          'the median (of the min)\n%-12s %-7s %8s %8s %8s' % (
              args.runs, 'variant', 'op', 'min', 'median', 'p90'))
    for label, ops in r['stats_ms'].items():
        for op, s in ops.items():
            x = r['ratios'].get('%s / baseline' % label, {}).get(op)
            print(('%-12s %-7s %8.1f %8.1f %8.1f  %s' % (
                label, op, s['min'], s['median'], s['p90'],
                '%.2fx (%.2fx)' % (x['median'], x['min']) if x else ''
            )).rstrip())
    x = r['ratios']['driver / same-cfg']
    print('driver / same-cfg: spawn %.2fx, delete %.2fx (median)' % (
        x['spawn']['median'], x['delete']['median']))
    spawn = r['ratios']['driver / baseline']['spawn']['median']
    print('target: driver spawn <= %.1fx baseline (median): %s' % (
        TARGET_RATIO, 'met' if spawn <= TARGET_RATIO else 'MISSED'))
    if r['driver_steps']:
        print('\ndriver steps, median ms over %d profiled runs (an '
              'indented step is part of the one above it):' %
              args.profile_runs)
        for s in r['driver_steps']:
            print('  %s%-*s %8.2f  x%.0f' % (
                '  ' * s['depth'], 44 - 2 * s['depth'], s['step'],
                s['median_ms'], s['calls_per_run']))
    if r['memory']:
        print('\nmemory per container, %d up at once, median MiB:\n  %12s'
              % (args.density, '') + ''.join('%12s' % t
                                             for t in MEMORY.values()))
        for label, m in r['memory'].items():
            print('  %-12s' % label + ''.join('%12s' % _mib(m[key])
                                              for key in MEMORY))
    if r['write']:
        print('\nguest writes of %d MiB (dd conv=fsync), a fresh guest each, '
              'MB/s:' % r['write']['mib'])
        for root_gb, w in r['write']['by_root_gb'].items():
            print('  root_gb %-3s median %7.1f   runs: %s' % (
                root_gb, w['median_mb_per_s'],
                ', '.join('%.1f' % x for x in w['mb_per_s'])))
    print('load average (1, 5, 15 min) before the timed rounds: %s; after: '
          '%s' % (r['loadavg_before'], r['loadavg_after']))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    for flag, default, text in (
            ('--runs', 30, 'timed spawn+delete rounds of each variant'),
            ('--warmup', 2, 'untimed rounds first'),
            ('--profile-runs', 10, 'driver rounds timing each step (0: off)'),
            ('--density', 5, 'containers of each kind kept up together to '
             'read memory (0: off)')):
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument('--backend', choices=BACKENDS, default='overlay',
                        help='[lxc] root_disk_backend of the driver; btrfs '
                             'runs on a loop-mounted btrfs made for the run')
    parser.add_argument('--root-gb', type=int, default=0,
                        help='the flavor\'s root_gb (0: no size limit)')
    parser.add_argument('--write-mb', type=int, default=0,
                        help='MiB a guest writes with dd, with this root '
                             'disk and with root_gb 0 (0: off)')
    parser.add_argument('--privsep-daemon', default=True,
                        action=argparse.BooleanOptionalAction,
                        help='also time the driver through a real privsep '
                             'daemon (variant "driver-psd")')
    parser.add_argument('--output', help='JSON file (default: '
                        'benchmarks/results/spawn-<time>.json)')
    parser.add_argument('--keep', action='store_true',
                        help='keep the scratch directory for inspection')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: containers are started for real')
    if args.backend == 'btrfs' and _btrfs.missing_tools():
        sys.exit(_btrfs.missing_tools())
    if args.root_gb and args.write_mb > args.root_gb * 1024 * 0.8:
        sys.exit('--write-mb must leave room in --root-gb (at most 80%%: '
                 '%d)' % (args.root_gb * 1024 * 0.8))
    # The daemon relays its own import warnings as "privsep log" lines.
    logging.getLogger('oslo.privsep').setLevel(logging.ERROR)
    # A kill runs the clean-up too (an interrupt does already).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(
        'killed: cleaning up'))

    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-')
    os.chmod(base, 0o755)   # guests' root must reach the image cache
    fs = _btrfs.LoopBtrfs(base) if args.backend == 'btrfs' else None
    top = fs.path if fs else base
    try:
        if fs:
            fs.make(BTRFS_FS_MB + 2 * args.write_mb)
        configure(base, top, args.backend)
        result = bench(base, top, args)
    finally:
        if not args.keep:
            kill_everything(base, top, fs)
    print_report(result, args)
    save(result, args.output, 'spawn')


def save(result, output, kind):
    """Write ``result`` as JSON to ``output``, by default a new file of
    ``kind`` under results/, and say where."""
    output = output or os.path.join(HERE, 'results', '%s-%s.json' % (
        kind, datetime.datetime.now().strftime('%Y%m%d-%H%M%S')))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
        json.dump(result, f, indent=2)
    print('\nJSON: %s' % output)


def baseline_root(text, lower):
    """The driver's config text on the baseline's root: an overlay over
    the cached image with a plain upper dir in the container dir (the
    driver's root disk, a file system image or a copy, is its own)."""
    root = 'lxc.rootfs.path = overlay:%s:%s/upper' % (lower, CDIR)
    text = re.sub(r'(?m)^lxc\.rootfs\.path\s*=.*$', lambda m: root, text)
    if not re.search(r'(?m)^lxc\.rootfs\.options\s*=', text):
        text = text.replace(root, '%s\nlxc.rootfs.options = %s' % (
            root, config.OVERLAY_USERNS_OPTIONS))
    return text


def files_read(text, cdir):
    """{name: text} of the files in the driver's container dir that its
    config reads (e.g. the seccomp policy of its own the btrfs backend
    writes), for the same-cfg containers; logs are left out."""
    found = {}
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition('='))
        if value.startswith(cdir + '/') and os.path.isfile(value) and \
                not key.endswith(('.logfile', '.log.file')):
            with open(value) as f:
                found[os.path.relpath(value, cdir)] = f.read()
    return found


def storage_of(top):
    found = subprocess.run(['findmnt', '-n', '-o', 'FSTYPE,SOURCE', '-T',
                            top], capture_output=True, text=True).stdout
    return '%s: %s' % (top, ' on '.join(found.split()) or '?')


def use_local_glance(base):
    """Glance's seam: downloads become a local copy of a busybox guest
    built in ``base`` (no hash to check). Returns the list of image ids
    downloaded, which grows with each download."""
    tarball = guest_image.write_tarball(os.path.join(base, 'busybox.tar.gz'),
                                        'bench')
    fetched = []

    class LocalGlance:
        def get(self, context, image_id):
            return {'id': image_id, 'disk_format': 'raw',
                    'container_format': 'bare'}

        def download(self, context, image_id, data=None, trusted_certs=None):
            fetched.append(image_id)
            with open(tarball, 'rb') as f:
                shutil.copyfileobj(f, data)

    glance.API = LocalGlance
    return fetched


def bench(base, top, args):
    fetched = use_local_glance(base)
    idmap = host.idmap()
    drv = Driver(root_gb=args.root_gb)

    # Warm the image cache; the baselines then use the very same tree.
    name = uuidutils.generate_uuid()
    drv.spawn(name)
    driver_cdir = container.container_dir(name)
    with open(os.path.join(driver_cdir, 'config')) as f:
        driver_config = f.read()
    files = files_read(driver_config, driver_cdir)
    drv.delete(name)
    cached, _ = drv.driver._images.ensure(None, IMAGE_ID, idmap, 0)
    configs = {
        'baseline': BASELINE_CONFIG.format(
            lower=cached.rootfs, cdir=CDIR, uid=idmap.uid_start,
            gid=idmap.gid_start, size=idmap.size),
        'same-cfg': baseline_root(driver_config.replace(driver_cdir, CDIR),
                                  cached.rootfs)}
    variants = {label: Baseline(os.path.join(top, 'baseline'), text, idmap,
                                files if label == 'same-cfg' else None)
                for label, text in configs.items()}
    variants['driver'] = drv
    if args.privsep_daemon:
        variants['driver-psd'] = Driver(daemon=True, root_gb=args.root_gb)
    load_before = [round(x, 2) for x in os.getloadavg()]
    samples = run_rounds(variants, args.runs, args.warmup)
    load_after = [round(x, 2) for x in os.getloadavg()]
    if len(fetched) != 1:
        raise RuntimeError('image fetched %d times: cache not warm' %
                           len(fetched))

    stats = {label: {op: summary(v) for op, v in ops.items()}
             for label, ops in samples.items()}
    pairs = [(label, 'baseline') for label in stats if label != 'baseline']
    ratios = {'%s / %s' % (a, b): {op: {
        key: stats[a][op][key] / stats[b][op][key]
        for key in ('median', 'min')} for op in OPS}
        for a, b in pairs + [('driver', 'same-cfg')]}
    return {
        'when': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'host': host_facts(),
        'loadavg_before': load_before, 'loadavg_after': load_after,
        'runs': args.runs, 'warmup': args.warmup,
        'stats_ms': stats, 'ratios': ratios, 'samples_ms': samples,
        'driver_steps': profile(drv, args.profile_runs)
        if args.profile_runs else [],
        'memory': density(variants, args.density) if args.density else {},
        'write': write_throughput(
            {gb: Driver(root_gb=gb) for gb in {0, args.root_gb}},
            args.write_mb) if args.write_mb else {},
        'backend': args.backend, 'root_gb': args.root_gb,
        'storage': storage_of(top),
        'driver_config': driver_config,
        'configs': configs, 'same_cfg_files': sorted(files),
        'image_cache_entry': cached.path,
    }


if __name__ == '__main__':
    main()
