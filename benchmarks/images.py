"""Image conversion throughput: our unpack against the plain tool.

Run as root: ``python benchmarks/images.py [--runs N] [--size-mb M]``.

A reference root file system of about ``--size-mb`` MB is built from the
busybox guest plus files copied from this host's /usr (real libraries and
documentation, so sizes and counts look like a distribution's). It is packed
in every format the driver takes; then, each round, every format is
converted twice in an order rotating between rounds:

* ``ours``: ``formats.<fmt>.unpack`` into a Target for the default
  unprivileged id range (100000), as the image cache calls it;
* ``plain``: the tool an operator would use on the same bytes, as root, with
  no checks and no id shift: ``tar -x`` (with the matching decompressor),
  ``unsquashfs``, ``qemu-img convert -O raw`` for qcow2, and a read-only
  mount plus ``cp -a`` for a raw disk image, ``tar -x`` of each layer for
  OCI.

Both write to a tmpfs made for the run (``--on-disk DIR`` writes there
instead): a virtual disk's write-back stalls vary by seconds between runs
and would drown the difference being measured. The ratio reported is
plain time / our time (throughput relative to the plain tool; the target is
at least 0.8). Results go to benchmarks/results/images-<time>.json.
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

from nova_lxd_py.storage import formats
from nova_lxd_py.storage.formats import stream
from nova_lxd_py.tests import guest_image
from nova_lxd_py.tests.images import disk as disk_images
from nova_lxd_py.tests.images import lxd as lxd_images
from nova_lxd_py.tests.images import oci as oci_images

HERE = os.path.dirname(os.path.abspath(__file__))
UID = 100000
TARGET = 0.8
SOURCES = (('/usr/lib/x86_64-linux-gnu', 0.7),
           ('/usr/lib/aarch64-linux-gnu', 0.7),
           ('/usr/share', 0.3))


def copy_some(src, dest, budget):
    """Copy regular files and symlinks of ``src`` into ``dest`` until
    ``budget`` bytes; the bytes copied."""
    used = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, '/')
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not (os.path.islink(path) or os.path.isfile(path)):
                continue
            if used + st.st_size > budget:
                return used
            os.makedirs(os.path.join(dest, rel), exist_ok=True)
            if os.path.islink(path):
                os.symlink(os.readlink(path), os.path.join(dest, rel, name))
            else:
                shutil.copy2(path, os.path.join(dest, rel, name))
                used += st.st_size
    return used


def reference_tree(path, size_mb):
    guest_image.write_tree(path, marker='bench')
    budget = size_mb << 20
    for src, share in SOURCES:
        if os.path.isdir(src):
            copy_some(src, path, int(budget * share))
    out = subprocess.run(['du', '-sb', path], capture_output=True,
                         text=True, check=True).stdout
    files = sum(len(f) + len(d) for _, d, f in os.walk(path))
    return int(out.split()[0]), files


def sh(*argv, **kw):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)


def build_images(tree, out):
    """{label: (format name, path, plain argv maker)} for every format."""
    tar = os.path.join(out, 'rootfs.tar')
    sh('tar', '-C', tree, '--numeric-owner', '-cf', tar, '.')
    images = {'tar': ('tarball', tar, lambda d: ['tar', '-xf', tar, '-C', d])}
    for label, argv in (('tar.gz', ['gzip', '-6']),
                        ('tar.xz', ['xz', '-T0', '-6']),
                        ('tar.zst', ['zstd', '-q', '-3'])):
        path = os.path.join(out, 'rootfs.' + label)
        with open(tar, 'rb') as src, open(path, 'wb') as dst:
            subprocess.run(argv + ['-c'], stdin=src, stdout=dst, check=True)
        images[label] = ('tarball', path,
                         lambda d, p=path: ['tar', '-xf', p, '-C', d])
    sqfs = os.path.join(out, 'rootfs.squashfs')
    sh('mksquashfs', tree, sqfs, '-noappend', '-quiet', '-comp', 'zstd')
    images['squashfs'] = ('squashfs', sqfs, lambda d: [
        'unsquashfs', '-f', '-q', '-n', '-d', d, sqfs])
    lxd = lxd_images.write_unified_from_tree(
        os.path.join(out, 'lxd.tar.xz'), tree)
    images['lxd-unified'] = ('lxd', lxd, lambda d: [
        'tar', '-xf', lxd, '-C', d])
    raw = disk_images.write_gpt_disk_from_tree(
        os.path.join(out, 'disk.raw'), tree)
    qcow2 = os.path.join(out, 'disk.qcow2')
    sh('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2)
    images['qcow2'] = ('qcow2', qcow2, lambda d: [
        'qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', qcow2,
        os.path.join(d, 'disk.raw')])
    images['raw-gpt'] = ('raw', raw, lambda d: [
        'sh', '-c', 'set -e; off=$(sfdisk -J "$1" | python3 -c "import json,'
        'sys; p=json.load(sys.stdin)[\'partitiontable\']; print(p[\'partiti'
        'ons\'][-1][\'start\']*512)"); m=$(mktemp -d); mount -o ro,noload,'
        'loop,offset=$off "$1" "$m"; cp -a "$m/." "$2"; umount "$m"; rmdir '
        '"$m"', 'sh', raw, d])
    oci = oci_images.write_oci_layout_from_tree(
        os.path.join(out, 'oci.tar'), tree)
    images['oci'] = ('oci', oci, lambda d: [
        'sh', '-c', 'set -e; x=$(mktemp -d); tar -xf "$1" -C "$x"; '
        'for l in $(python3 -c "import json,sys; i=json.load(open(sys.argv[1]'
        '+\'/index.json\')); d=i[\'manifests\'][0][\'digest\'].split(\':\')'
        '[1]; m=json.load(open(sys.argv[1]+\'/blobs/sha256/\'+d)); print('
        '\' \'.join(l[\'digest\'].split(\':\')[1] for l in m[\'layers\']))" '
        '"$x"); do tar -xf "$x/blobs/sha256/$l" -C "$2"; done; rm -rf "$x"',
        'sh', oci, d])
    return images


def timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_ours(name, path, dest, work):
    target = stream.Target(dest=dest, uid=UID, gid=UID, label='bench')
    formats.by_name(name).unpack(path, target, work)


def clean(*paths):
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run(['sync'], check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--size-mb', type=int, default=200)
    parser.add_argument('--on-disk', metavar='DIR')
    parser.add_argument('--only', nargs='*', help='labels to run')
    parser.add_argument('--output')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: unpacking shifts owners and mounts images')

    base = tempfile.mkdtemp(prefix='nova-lxd-py-bench-', dir=args.on_disk or
                            '/var/tmp')
    os.chmod(base, 0o711)
    mounted = False
    try:
        if not args.on_disk:
            sh('mount', '-t', 'tmpfs', '-o',
               'size=%dm,mode=0711' % (args.size_mb * 12 + 1024),
               'nova-lxd-py-bench', base)
            mounted = True
        tree = os.path.join(base, 'tree')
        size, files = reference_tree(tree, args.size_mb)
        os.mkdir(os.path.join(base, 'images'))
        images = build_images(tree, os.path.join(base, 'images'))
        clean(tree)
        labels = [k for k in images if not args.only or k in args.only]
        samples = {label: {'ours': [], 'plain': []} for label in labels}
        for rnd in range(args.runs):
            for i, label in enumerate(labels):
                name, path, plain = images[label]
                order = ['ours', 'plain'] if (rnd + i) % 2 == 0 else \
                    ['plain', 'ours']
                for kind in order:
                    dest = os.path.join(base, 'dest')
                    work = os.path.join(base, 'work')
                    os.mkdir(work, 0o711)
                    if kind == 'ours':
                        took = timed(lambda: run_ours(name, path, dest, work))
                    else:
                        os.mkdir(dest)
                        took = timed(lambda: sh(*plain(dest)))
                    samples[label][kind].append(took)
                    clean(dest, work)
            print('round %d/%d done' % (rnd + 1, args.runs), flush=True)
        result = {'date': datetime.datetime.now().isoformat(),
                  'host': platform.node(), 'kernel': platform.release(),
                  'cpus': os.cpu_count(),
                  'storage': 'disk' if args.on_disk else 'tmpfs',
                  'tree_bytes': size, 'tree_files': files,
                  'runs': args.runs, 'target_ratio': TARGET, 'formats': {}}
        print('\n%-12s %10s %10s %8s %8s'
              % ('format', 'ours s', 'plain s', 'ratio', 'MB/s'))
        for label in labels:
            ours = statistics.median(samples[label]['ours'])
            plain = statistics.median(samples[label]['plain'])
            ratio = plain / ours
            result['formats'][label] = {
                'image_bytes': os.path.getsize(images[label][1]),
                'ours_s': samples[label]['ours'],
                'plain_s': samples[label]['plain'],
                'median_ours_s': round(ours, 3),
                'median_plain_s': round(plain, 3),
                'ratio': round(ratio, 3)}
            print('%-12s %10.2f %10.2f %8.2f %8.1f%s' % (
                label, ours, plain, ratio, size / ours / 1e6,
                '' if ratio >= TARGET else '  < target'))
        output = args.output or os.path.join(
            HERE, 'results', 'images-%s.json' %
            datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
        os.makedirs(os.path.dirname(output), exist_ok=True)
        with open(output, 'w') as f:
            json.dump(result, f, indent=2)
        print('\ntree: %.0f MB in %d files; JSON: %s'
              % (size / 1e6, files, output))
    finally:
        if mounted:
            subprocess.run(['umount', base], check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()
