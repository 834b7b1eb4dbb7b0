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
  ``unsquashfs``, a read-only mount plus ``cp -a`` for a raw disk image
  (after ``qemu-img convert -O raw`` for qcow2; ``qcow2-vs-convert``
  compares with the convert alone, which makes no tree), ``tar -x`` of the
  outer archive and of each layer for OCI.

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

# This checkout's code, not an installed copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from nova_lxd_py.storage import formats  # noqa: E402
from nova_lxd_py.storage.formats import stream  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402
from nova_lxd_py.tests.images import disk as disk_images  # noqa
from nova_lxd_py.tests.images import oci as oci_images  # noqa: E402

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
                continue
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


METADATA = """\
architecture: {arch}
creation_date: 1700000000
properties:
  description: nova-lxd-py benchmark
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
"""


def lxd_unified(path, tree, work):
    """metadata.yaml, templates/ and the tree as rootfs/, xz-compressed."""
    meta = os.path.join(work, 'lxd-meta')
    os.makedirs(os.path.join(meta, 'templates'))
    with open(os.path.join(meta, 'metadata.yaml'), 'w') as f:
        f.write(METADATA.format(arch=platform.machine()))
    with open(os.path.join(meta, 'templates', 'hostname.tpl'), 'w') as f:
        f.write('{{ container.name }}\n')
    plain = path[:-3]
    sh('tar', '-C', meta, '-cf', plain, 'metadata.yaml', 'templates')
    # Member names only (flags=rh): symlink targets stay as they are.
    sh('tar', '-C', tree, '--numeric-owner', '-rf', plain,
       '--transform=flags=rh;s,^\\.,rootfs,', '.')
    sh('xz', '-T0', '-6', plain)
    shutil.rmtree(meta)
    return path


def oci_layout(path, tree):
    """One gzip layer holding the tree, in an OCI layout packed as a tar."""
    layer = subprocess.run(['tar', '-C', tree, '--numeric-owner', '-cf', '-',
                            '.'], capture_output=True, check=True).stdout
    blobs = oci_images.Blobs()
    desc = blobs.add(oci_images.compress(layer, 'gzip'),
                     oci_images.LAYER_TYPES['gzip'])
    config = blobs.add_json(oci_images.image_config(
        oci_images.HOST_ARCH, [oci_images.sha256(layer)]),
        oci_images.CONFIG_TYPE)
    manifest = blobs.add_json({'schemaVersion': 2,
                               'mediaType': oci_images.MANIFEST_TYPE,
                               'config': config, 'layers': [desc]},
                              oci_images.MANIFEST_TYPE)
    return oci_images.write_archive(
        path, oci_images.layout_files(blobs, [manifest]))


def plain_oci(path, dest):
    """``tar -x`` of the outer archive, then of each layer in order."""
    outer = tempfile.mkdtemp(dir=os.path.dirname(dest))
    try:
        sh('tar', '-xf', path, '-C', outer)
        with open(os.path.join(outer, 'index.json')) as f:
            digest = json.load(f)['manifests'][0]['digest']
        with open(os.path.join(outer, 'blobs', *digest.split(':'))) as f:
            layers = json.load(f)['layers']
        for layer in layers:
            sh('tar', '-xf', os.path.join(outer, 'blobs',
                                          *layer['digest'].split(':')),
               '-C', dest)
    finally:
        shutil.rmtree(outer)


def plain_raw(path, dest):
    """Mount the root partition read-only, ``cp -a`` it out, unmount."""
    table = json.loads(subprocess.run(
        ['sfdisk', '-J', path], capture_output=True, check=True,
        text=True).stdout)['partitiontable']
    offset = table['partitions'][-1]['start'] * table.get('sectorsize', 512)
    mnt = tempfile.mkdtemp(dir=os.path.dirname(dest))
    try:
        sh('mount', '-o', 'ro,noload,loop,offset=%d' % offset, path, mnt)
        try:
            sh('cp', '-a', mnt + '/.', dest)
        finally:
            sh('umount', mnt)
    finally:
        os.rmdir(mnt)


def plain_qcow2(path, dest):
    """``qemu-img convert`` to raw, then as ``plain_raw``."""
    raw = os.path.join(os.path.dirname(dest), 'plain.raw')
    try:
        sh('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', path, raw)
        plain_raw(raw, dest)
    finally:
        os.unlink(raw)


def build_images(tree, out):
    """{label: (format name, path, plain(dest))} for every format."""
    tar = os.path.join(out, 'rootfs.tar')
    sh('tar', '-C', tree, '--numeric-owner', '-cf', tar, '.')
    images = {'tar': ('tarball', tar, lambda d: sh('tar', '-xf', tar, '-C',
                                                   d))}
    for label, argv in (('tar.gz', ['gzip', '-6']),
                        ('tar.xz', ['xz', '-T0', '-6']),
                        ('tar.zst', ['zstd', '-q', '-3'])):
        path = os.path.join(out, 'rootfs.' + label)
        with open(tar, 'rb') as src, open(path, 'wb') as dst:
            subprocess.run(argv + ['-c'], stdin=src, stdout=dst, check=True)
        images[label] = ('tarball', path,
                         lambda d, p=path: sh('tar', '-xf', p, '-C', d))
    sqfs = os.path.join(out, 'rootfs.squashfs')
    sh('mksquashfs', tree, sqfs, '-noappend', '-quiet')
    images['squashfs'] = ('squashfs', sqfs, lambda d: sh(
        'unsquashfs', '-f', '-q', '-n', '-d', d, sqfs))
    lxd = lxd_unified(os.path.join(out, 'lxd.tar.xz'), tree, out)
    images['lxd-unified'] = ('lxd', lxd, lambda d: sh('tar', '-xf', lxd,
                                                      '-C', d))
    raw = disk_images.write_gpt_disk_from_tree(
        os.path.join(out, 'disk.raw'), tree)
    qcow2 = disk_images.qcow2(os.path.join(out, 'disk.qcow2'), raw)
    images['qcow2'] = ('qcow2', qcow2, lambda d: plain_qcow2(qcow2, d))
    # qemu-img alone makes no tree; listed to show what the copy costs.
    images['qcow2-vs-convert'] = ('qcow2', qcow2, lambda d: sh(
        'qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', qcow2,
        os.path.join(d, 'disk.raw')))
    images['raw-gpt'] = ('raw', raw, lambda d: plain_raw(raw, d))
    oci = oci_layout(os.path.join(out, 'oci.tar'), tree)
    images['oci'] = ('oci', oci, lambda d: plain_oci(oci, d))
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
                        took = timed(lambda: plain(dest))
                    samples[label][kind].append(took)
                    clean(dest, work)
            print('round %d/%d done' % (rnd + 1, args.runs), flush=True)
        result = {'date': datetime.datetime.now().isoformat(),
                  'host': platform.node(), 'kernel': platform.release(),
                  'cpus': os.cpu_count(),
                  'storage': 'disk' if args.on_disk else 'tmpfs',
                  'tree_bytes': size, 'tree_files': files,
                  'runs': args.runs, 'target_ratio': TARGET, 'formats': {}}
        print('\n%-18s %10s %10s %8s %8s'
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
            print('%-18s %10.2f %10.2f %8.2f %8.1f%s' % (
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
