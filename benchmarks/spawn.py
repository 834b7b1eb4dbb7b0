"""Spawn and delete: LXCDriver against raw ``lxc-start`` of the same rootfs.

Run as root: ``python benchmarks/spawn.py [--runs N]``. Each round runs
every variant once, in an order rotating between rounds: ``baseline``
(``lxc-start`` of a minimal config over the driver's cached rootfs),
``same-cfg`` (the same with the driver's config text), ``driver``
(``LXCDriver.spawn``/``destroy``, privsep entrypoints in this process) and
``driver-psd`` (through a real privsep daemon). Then, untimed, each step of
spawn and destroy is timed, and a few containers of each kind are kept up
to read their memory. benchmarks/README.md has the details.
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
import shutil
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
from nova_lxd_py.storage import images  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.virt import config  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import driver as lxc_driver  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402

CONF = nova_conf.CONF
HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_ID = 'b3f1c0de-0000-4000-8000-00000000be0c'
TARGET_RATIO = 1.5
OPS = ('spawn', 'delete')
CDIR = '@CDIR@'
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
            (config, ('_bool', '_spec')), (fs, ('_owned',)))


# -- the two ways to make a container ----------------------------------------

class Baseline:
    """Raw liblxc tools on a hand-made container directory."""

    def __init__(self, lxcpath, config, idmap):
        self.lxcpath = lxcpath
        self.config = config   # its text, CDIR standing for the container dir
        self.idmap = idmap
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

    def __init__(self, daemon=False):
        self.daemon = daemon
        self.driver = lxc_driver.LXCDriver(fake.FakeVirtAPI())
        self.driver.init_host(host='bench')
        self.flavor = objects.Flavor(
            name='bench.tiny', flavorid='bench', memory_mb=256, vcpus=1,
            root_gb=1, ephemeral_gb=0, swap=0, extra_specs={})
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
            hostname='bench', trusted_certs=None)
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
        original = getattr(owner, attr)

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

        setattr(owner, attr, timed_call)
        patched.append((owner, attr, original))

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
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)
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


# -- setup, report -----------------------------------------------------------

def configure(base):
    """A nova.conf for this run, shared with the privsep daemon, with
    absolute paths: the daemon cannot expand '$instances_path/...'."""
    objects.register_all()
    path = os.path.join(base, 'nova.conf')
    with open(path, 'w') as f:
        f.write('[DEFAULT]\ninstances_path = %s\n'
                '[lxc]\ncontainer_path = %s/containers\n'
                'image_cache_path = %s/_base_lxc\n' % (base, base, base))
    CONF(['--config-file', path], project='nova', default_config_files=[])
    CONF.set_override(
        'helper_command', '%s --config-file %s' % (
            os.path.join(os.path.dirname(sys.executable), 'privsep-helper'),
            path), group='nova_lxd_py_privileged')
    privsep.sys_admin_pctxt.client_mode = False


def kill_everything(base):
    for lxcpath in (CONF.lxc.container_path, os.path.join(base, 'baseline')):
        if os.path.isdir(lxcpath):
            for name in os.listdir(lxcpath):
                subprocess.run(['lxc-stop', '-k', '-n', name, '-P', lxcpath],
                               capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def _mib(value):
    return 'n/a' if value is None else '%.2f' % (value / 1048576.0)


def print_report(r, args):
    print('\nms over %d runs of each; last column: ratio to the baseline of '
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
    # The daemon relays its own import warnings as "privsep log" lines.
    logging.getLogger('oslo.privsep').setLevel(logging.ERROR)

    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-')
    os.chmod(base, 0o755)   # guests' root must reach the image cache
    configure(base)
    try:
        result = bench(base, args)
    finally:
        if not args.keep:
            kill_everything(base)
    print_report(result, args)
    output = args.output or os.path.join(
        HERE, 'results', 'spawn-%s.json' %
        datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
        json.dump(result, f, indent=2)
    print('\nJSON: %s' % output)


def bench(base, args):
    tarball = guest_image.write_tarball(os.path.join(base, 'busybox.tar.gz'),
                                        'bench')
    fetched = []

    class LocalGlance:
        # The Glance seam: downloads become a local copy (no hash to check).
        def get(self, context, image_id):
            return {'id': image_id, 'disk_format': 'raw',
                    'container_format': 'bare'}

        def download(self, context, image_id, data=None, trusted_certs=None):
            fetched.append(image_id)
            with open(tarball, 'rb') as f:
                shutil.copyfileobj(f, data)

    glance.API = LocalGlance
    idmap = host.idmap()
    drv = Driver()

    # Warm the image cache; the baselines then use the very same tree.
    name = uuidutils.generate_uuid()
    drv.spawn(name)
    driver_cdir = container.container_dir(name)
    with open(os.path.join(driver_cdir, 'config')) as f:
        driver_config = f.read()
    drv.delete(name)
    cached, _ = drv.driver._images.ensure(None, IMAGE_ID, idmap, 0)
    configs = {
        'baseline': BASELINE_CONFIG.format(
            lower=cached.rootfs, cdir=CDIR, uid=idmap.uid_start,
            gid=idmap.gid_start, size=idmap.size),
        'same-cfg': driver_config.replace(driver_cdir, CDIR)}
    variants = {label: Baseline(os.path.join(base, 'baseline'), text, idmap)
                for label, text in configs.items()}
    variants['driver'] = drv
    if args.privsep_daemon:
        variants['driver-psd'] = Driver(daemon=True)
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
        'host': {'kernel': platform.release(), 'cpus': os.cpu_count(),
                 'liblxc': container.lxc_version(),
                 'cgroup_version': host.cgroup_version(),
                 'lxcfs': host.lxcfs_active(),
                 'python': platform.python_version()},
        'loadavg_before': load_before, 'loadavg_after': load_after,
        'runs': args.runs, 'warmup': args.warmup,
        'stats_ms': stats, 'ratios': ratios, 'samples_ms': samples,
        'driver_steps': profile(drv, args.profile_runs)
        if args.profile_runs else [],
        'memory': density(variants, args.density) if args.density else {},
        'configs': configs,
        'image_cache_entry': cached.path,
    }


if __name__ == '__main__':
    main()
