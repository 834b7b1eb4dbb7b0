"""Live migration: the driver's move of a running guest against a raw
``lxc-checkpoint`` dump + copy + restore of the same memory, same run.

Run as root: ``python benchmarks/live_migration.py [--mem-mb 64,256,1024]
[--runs N]``.

Two "hosts" share this machine, as in the e2e tests and
benchmarks/migration.py: the destination is a private sshd on 127.0.0.1
(``[lxc] migration_ssh_*`` pointed at it) and both use one ``[lxc]
container_path`` (the source sets the guest's directory aside before it
arrives under the same path).

For each ``--mem-mb`` size, a guest spawned by LXCDriver (busybox, root
disk of ``--root-gb``) runs a holder process, compiled here with gcc
(static): it fills that many MiB with pseudo-random bytes (nothing for
CRIU or tar to skip or compress) and sleeps. ``--runs`` times each, in
alternating order:

* **driver**: ``LXCDriver.live_migration`` to the sshd, as Nova calls it
  (the destination's side, ``nova_lxd_py.virt.arrive``, started over ssh
  first). *downtime*: from the checkpoint's start to the guest running
  again on the destination (the end of ``transfer.arrival_finish``);
  *total*: the whole call.
* **raw**: a container on the same cached image tree (a copy, as a dir
  root: stock liblxc's restore cannot mount an overlay root) with the same
  idmap, no console (stock liblxc's restore refuses one) and the same
  holder, moved by hand: ``lxc-checkpoint -s``, its images chowned to the
  guest's root, the directory set aside, ``tar -c | ssh 'tar -x && mv &&
  lxc-checkpoint -r'``. *downtime* = *total*: dump start to restore end.

Figures are medians of the rounds, with the ratio driver / raw of each.
The JSON goes to benchmarks/results/live-migration-<time>.json.
"""

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import spawn   # noqa: I100  (before the driver's imports: monkey patching)
import migration as cold   # noqa: I100

from nova import objects  # noqa: E402,I100
from nova.objects import migrate_data as migrate_data_obj  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

from nova_lxd_py import privsep  # noqa: E402
from nova_lxd_py.storage import backends  # noqa: E402
from nova_lxd_py.storage import transfer  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.virt import checkpoint  # noqa: E402
from nova_lxd_py.virt import config as lxc_config  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402

CONF = spawn.CONF
DEST = lxc_fixtures.SshServer.ADDRESS
HOLDER_C = r'''
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]) << 20;
    unsigned char *p = malloc(n);
    unsigned long x = 88172645463325252UL;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        *(unsigned long *)(p + i) = x;
    }
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    write(fd, "ready\n", 6);
    close(fd);
    for (;;)
        pause();
}
'''
GUEST_HOLDER = 'usr/local/bin/hold'
VARIANTS = ('driver', 'raw')


def run(argv, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        raise RuntimeError('%s failed (%d): %s' % (
            ' '.join(argv), proc.returncode,
            (proc.stderr or proc.stdout).strip()[-800:]))
    return proc.stdout


def build_holder(base):
    src, binary = os.path.join(base, 'hold.c'), os.path.join(base, 'hold')
    with open(src, 'w') as f:
        f.write(HOLDER_C)
    run(['gcc', '-O2', '-static', '-o', binary, src])
    return binary


def put_holder(root, binary, idmap):
    path = os.path.join(root, GUEST_HOLDER)
    top = root
    # Directories of the guest's root, as the guest's own root made them.
    for part in os.path.dirname(GUEST_HOLDER).split('/'):
        top = os.path.join(top, part)
        if not os.path.isdir(top):
            os.mkdir(top)
            os.chmod(top, 0o755)
            if idmap:
                os.chown(top, idmap.uid_start, idmap.gid_start)
    shutil.copy(binary, path)
    os.chmod(path, 0o755)
    if idmap:
        os.chown(path, idmap.uid_start, idmap.gid_start)


def wait_ready(check, what, seconds=60):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError('%s: not ready after %d s' % (what, seconds))
        time.sleep(0.1)


class DriverGuest:
    """A guest of LXCDriver holding ``mem_mb`` MiB, moved live."""

    def __init__(self, drv, mem_mb, binary, root_gb):
        self.drv, self.mem_mb = drv, mem_mb
        flavor = objects.Flavor(
            name='bench.live', flavorid='bench-live',
            memory_mb=mem_mb + 256, vcpus=1, root_gb=root_gb,
            ephemeral_gb=0, swap=0, extra_specs={})
        self.instance = objects.Instance(
            id=mem_mb, uuid=uuidutils.generate_uuid(), flavor=flavor,
            hostname='bench', trusted_certs=None, config_drive='',
            system_metadata={}, image_ref=spawn.IMAGE_ID,
            migration_context=None)
        image_meta = objects.ImageMeta.from_dict(
            {'id': spawn.IMAGE_ID, 'disk_format': 'raw',
             'container_format': 'bare'})
        self.driver = drv.driver
        self.driver.spawn(None, self.instance, image_meta, injected_files=[],
                          admin_password=None, allocations={},
                          power_on=False)
        cdir = container.container_dir(self.instance.uuid)
        backend = backends.get(CONF.lxc.root_disk_backend)
        put_holder(backend.writable_root(cdir), binary, host.idmap())
        self.driver.power_on(None, self.instance, [])
        name = self.instance.uuid
        container.run_in_guest(name, ['sh', '-c', (
            "setsid /%s %d /tmp/held </dev/null >/dev/null 2>&1 &"
            % (GUEST_HOLDER, mem_mb))], 10)
        try:
            wait_ready(lambda: container.run_in_guest(
                name, ['test', '-e', '/tmp/held'], 10)[0] == 0,
                'the driver guest\'s holder')
        except RuntimeError as e:
            raise RuntimeError('%s: %s' % (e, container.run_in_guest(
                name, ['sh', '-c', 'ls -l /%s; /%s 1 /tmp/try & sleep 1; '
                       'cat /tmp/try' % (GUEST_HOLDER, GUEST_HOLDER)], 10)))

    def lower(self):
        text = container.read_config(self.instance.uuid)
        return backends.image_of(
            lxc_config.config_values(text, 'lxc.rootfs.path')[-1])

    def move(self):
        marks = {}
        real_dump, real_finish = checkpoint.dump, transfer.arrival_finish

        def dump(*args):
            marks['frozen'] = time.perf_counter()
            return real_dump(*args)

        def finish(*args):
            try:
                return real_finish(*args)
            finally:
                marks['running'] = time.perf_counter()

        outcome = []
        data = migrate_data_obj.LibvirtLiveMigrateData(
            target_connect_addr=DEST, is_shared_instance_path=False,
            is_shared_block_storage=False)
        checkpoint.dump, transfer.arrival_finish = dump, finish
        try:
            started = time.perf_counter()
            self.driver.live_migration(
                None, self.instance, 'bench-dest',
                lambda *a, **k: outcome.append('done'),
                lambda *a, **k: outcome.append('rolled back'),
                False, data)
            ended = time.perf_counter()
        finally:
            checkpoint.dump, transfer.arrival_finish = real_dump, real_finish
        if outcome != ['done']:
            raise RuntimeError('the driver\'s live migration: %s' % outcome)
        self.driver.cleanup(None, self.instance, [], migrate_data=data)
        if container.state(self.instance.uuid)[0] != 'RUNNING':
            raise RuntimeError('the driver guest does not run after its move')
        return {'downtime': marks['running'] - marks['frozen'],
                'total': ended - started}


class RawGuest:
    """The same memory in a container of the same image tree, moved with
    lxc-checkpoint, tar and ssh by hand."""

    def __init__(self, base, lower, mem_mb, binary, sshd):
        self.sshd = sshd
        self.lxcpath = os.path.join(base, 'raw')
        self.name = uuidutils.generate_uuid()
        self.cdir = os.path.join(self.lxcpath, self.name)
        self.aside = os.path.join(self.lxcpath, '.aside', self.name)
        os.makedirs(self.cdir, mode=0o711)
        os.makedirs(os.path.dirname(self.aside), mode=0o711, exist_ok=True)
        rootfs = os.path.join(self.cdir, 'rootfs')
        run(['cp', '-a', lower, rootfs])
        idmap = host.idmap()
        put_holder(rootfs, binary, idmap)
        self.owner = '%d:%d' % (idmap.uid_start, idmap.gid_start)
        with open(os.path.join(self.cdir, 'config'), 'w') as f:
            f.write('\n'.join([
                'lxc.uts.name = raw',
                'lxc.rootfs.path = dir:%s' % rootfs,
                'lxc.idmap = u 0 %d %d' % (idmap.uid_start, idmap.size),
                'lxc.idmap = g 0 %d %d' % (idmap.gid_start, idmap.size),
                'lxc.net.0.type = empty',
                'lxc.console.path = none',
                'lxc.tty.max = 0',
                'lxc.mount.auto = proc:mixed sys:ro',
                'lxc.autodev = 1',
                'lxc.cgroup2.memory.max = %d' % ((mem_mb + 256) << 20),
                # liblxc splits the command on blanks, without quoting.
                'lxc.init.cmd = /bin/sleep 2147483647',
                '']))
        self.lxc('lxc-start', '-d')
        self.lxc('lxc-wait', '-s', 'RUNNING', '-t', '30')
        self.lxc('lxc-attach', '--', 'sh', '-c', (
            'setsid /%s %d /tmp/held </dev/null >/dev/null 2>&1 &'
            % (GUEST_HOLDER, mem_mb)))
        wait_ready(lambda: subprocess.run(
            ['lxc-attach', '-n', self.name, '-P', self.lxcpath, '--',
             'test', '-e', '/tmp/held']).returncode == 0,
            'the raw guest\'s holder')

    def lxc(self, tool, *args):
        with tempfile.TemporaryFile() as out:
            # A file, not a pipe: the monitor a restore leaves keeps it.
            proc = subprocess.run([tool, '-n', self.name, '-P', self.lxcpath]
                                  + list(args), stdout=out,
                                  stderr=subprocess.STDOUT)
            out.seek(0)
            if proc.returncode:
                raise RuntimeError('%s failed: %s' % (
                    tool, out.read().decode(errors='replace')[-800:]))

    def move(self):
        images = os.path.join(self.cdir, 'ckpt')
        started = time.perf_counter()
        self.lxc('lxc-checkpoint', '-s', '-D', images)
        run(['chown', '-R', self.owner, images])
        os.rename(self.cdir, self.aside)
        incoming = os.path.join(self.lxcpath, '.in')
        receive = ('rm -rf {inc} && mkdir -p {inc} && tar -C {inc} -x -f - '
                   '&& mv -T {inc}/{n} {cdir} && rmdir {inc} && '
                   'lxc-checkpoint -n {n} -P {p} -r -D {cdir}/ckpt '
                   '>/dev/null 2>&1').format(
                       inc=shlex.quote(incoming), n=self.name,
                       cdir=shlex.quote(self.cdir),
                       p=shlex.quote(self.lxcpath))
        tar = subprocess.Popen(
            ['tar', '-C', os.path.dirname(self.aside), '-c', '-f', '-',
             '--numeric-owner', self.name], stdout=subprocess.PIPE)
        ssh = subprocess.run(transfer.ssh_argv(DEST) + [receive],
                             stdin=tar.stdout, capture_output=True)
        tar.stdout.close()
        tar.wait()
        ended = time.perf_counter()
        if ssh.returncode:
            raise RuntimeError('raw restore failed: %s' % ssh.stderr[-500:])
        shutil.rmtree(self.aside)
        shutil.rmtree(images, ignore_errors=True)
        return {'downtime': ended - started, 'total': ended - started}

    def stop(self):
        subprocess.run(['lxc-stop', '-k', '-n', self.name, '-P',
                        self.lxcpath], capture_output=True)


def bench(base, sshd, args):
    spawn.use_local_glance(base)
    binary = build_holder(base)
    drv = spawn.Driver(daemon=args.privsep_daemon, root_gb=args.root_gb)
    results = {}
    for mem in args.mem_mb:
        guest = DriverGuest(drv, mem, binary, args.root_gb)
        raw = RawGuest(base, guest.lower(), mem, binary, sshd)
        samples = {v: [] for v in VARIANTS}
        try:
            for i in range(args.runs):
                order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
                for v in order:
                    samples[v].append((guest if v == 'driver' else raw)
                                      .move())
        finally:
            raw.stop()
        stats = {v: {k: spawn.summary([s[k] for s in samples[v]])
                     for k in ('downtime', 'total')} for v in VARIANTS}
        results[mem] = {
            'samples': samples, 'stats': stats,
            'ratios': {k: stats['driver'][k]['median'] /
                       stats['raw'][k]['median']
                       for k in ('downtime', 'total')}}
    return {'host': spawn.host_facts(), 'args': vars(args),
            'storage': spawn.storage_of(base), 'sizes': results,
            'loadavg': [round(x, 2) for x in os.getloadavg()]}


def report(r):
    print('\nlive migration to a loopback sshd, %d rounds each; %s' % (
        r['args']['runs'], r['storage']))
    print('%8s %-7s %20s %20s' % ('MiB', 'variant', 'downtime s (min-max)',
                                  'total s (min-max)'))
    for mem, m in r['sizes'].items():
        for v in VARIANTS:
            d, t = m['stats'][v]['downtime'], m['stats'][v]['total']
            print('%8s %-7s %6.3f (%.3f-%.3f) %6.3f (%.3f-%.3f)' % (
                mem, v, d['median'], d['min'], d['max'], t['median'],
                t['min'], t['max']))
        print('%8s ratio driver / raw: downtime %.2f, total %.2f' % (
            '', m['ratios']['downtime'], m['ratios']['total']))
    print('load average at the end: %s' % r['loadavg'])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mem-mb', default='64,256,1024',
                        type=lambda v: [int(x) for x in v.split(',')],
                        help='resident MiB of the guests, comma-separated')
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--root-gb', type=int, default=1)
    parser.add_argument('--privsep-daemon', default=True,
                        action=argparse.BooleanOptionalAction)
    parser.add_argument('--output')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: containers are started for real')
    signal.signal(signal.SIGTERM, cold.terminated)
    # Not in /tmp: CRIU's restore of the raw baseline cannot read its
    # images there (seen on Debian 12, kernel 6.18).
    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-live-', dir='/var/tmp')
    os.chmod(base, 0o755)
    sshd = lxc_fixtures.SshServer()
    try:
        sshd.setUp()
        cold.configure(base, sshd, 'overlay')
        privsep.sys_admin_pctxt.client_mode = args.privsep_daemon
        result = bench(base, sshd, args)
    finally:
        for lxcpath in ('containers', 'raw'):
            spawn._btrfs.stop_containers(os.path.join(base, lxcpath))
        spawn.kill_everything(base, base, None)
        sshd.cleanUp()
    report(result)
    spawn.save(result, args.output, 'live-migration')


if __name__ == '__main__':
    main()
