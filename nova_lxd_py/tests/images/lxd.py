"""LXD/Incus images and squashfs root file systems, built locally.

The guest is :mod:`nova_lxd_py.tests.guest_image`'s busybox rootfs; nothing
is downloaded. Needs squashfs-tools (mksquashfs) and xz-utils, as the
driver itself does. Each builder writes ``path`` and returns it; the
hostile ones are what the format modules must refuse.
"""

import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile

import yaml

from nova_lxd_py.tests import guest_image

HOSTNAME_TPL = '{{ container.name }}\n'
# As in the images of images.linuxcontainers.org.
HOSTS_TPL = """\
127.0.0.1   localhost
127.0.1.1   {{ container.name }}

# The following lines are desirable for IPv6 capable hosts
::1     ip6-localhost ip6-loopback
fe00::0 ip6-localnet
ff00::0 ip6-mcastprefix
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""
# Real images' cloud-init template: skipped (only applied on copy here)
# and an "if" the renderer supports.
NETWORK_TPL = (
    '{% if config_get("user.network-config", "") == "" %}version: 1\n'
    'config:\n'
    '  - type: physical\n'
    '    name: eth0\n'
    '    subnets:\n'
    '      - type: dhcp\n'
    '        control: auto'
    '{% else %}{{ config_get("user.network-config", "") }}{% endif %}\n')
TEMPLATES = {'hostname.tpl': HOSTNAME_TPL, 'hosts.tpl': HOSTS_TPL,
             'network.tpl': NETWORK_TPL}

# Standard /dev nodes as real images may hold them (mksquashfs pseudo
# definitions: name type mode uid gid major minor).
STANDARD_DEVICES = ('dev/null c 666 0 0 1 3', 'dev/zero c 666 0 0 1 5',
                    'dev/console c 600 0 0 5 1')
MTIME = 1700000000


def host_architecture():
    return os.uname().machine


def other_architecture():
    """An architecture this host is not (for the foreign-image test)."""
    return 'aarch64' if host_architecture() != 'aarch64' else 'x86_64'


def metadata_yaml(architecture=None):
    """metadata.yaml as LXD writes it (distrobuilder's layout)."""
    meta = {
        'architecture': architecture or host_architecture(),
        'creation_date': MTIME,
        'properties': {
            'architecture': architecture or host_architecture(),
            'description': 'Busybox test guest',
            'os': 'busybox',
            'release': '1',
            'serial': '20231114_22:13',
            'variant': 'default',
        },
        'templates': {
            '/etc/hostname': {'when': ['create', 'copy'],
                              'create_only': False,
                              'template': 'hostname.tpl',
                              'properties': {}},
            '/etc/hosts': {'when': ['create', 'copy'],
                           'create_only': False,
                           'template': 'hosts.tpl',
                           'properties': {}},
            '/var/lib/cloud/seed/nocloud-net/network-config': {
                'when': ['copy'], 'create_only': False,
                'template': 'network.tpl',
                'properties': {'default': 'none'}},
        },
    }
    return yaml.safe_dump(meta, default_flow_style=False).encode()


def _open_tar(path, compression):
    # xz's fastest preset: the tests build many images, LXD reads any.
    if compression == 'xz':
        return tarfile.open(path, 'w:xz', preset=1)
    return tarfile.open(path, 'w:' + compression)


def _add(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, MTIME
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _add_metadata(tar, metadata):
    # LXD writes metadata.yaml first: that is how the image is recognised.
    _add(tar, 'metadata.yaml', metadata)
    _add(tar, 'templates', mode=0o755, kind=tarfile.DIRTYPE)
    for name, text in sorted(TEMPLATES.items()):
        _add(tar, 'templates/' + name, text.encode())


def write_unified(path, marker='lxd-unified', architecture=None,
                  metadata=None, compression='xz'):
    """A unified LXD image: metadata.yaml, templates/, rootfs/."""
    metadata = metadata_yaml(architecture) if metadata is None else metadata
    with _open_tar(path, compression) as tar:
        _add_metadata(tar, metadata)
        _add(tar, 'rootfs', mode=0o755, kind=tarfile.DIRTYPE)
        for info, data in guest_image.busybox_members(marker):
            info.name = 'rootfs/' + info.name
            tar.addfile(info, io.BytesIO(data) if data is not None
                        else None)
    return path


def write_metadata_tarball(path, architecture=None, metadata=None):
    """The metadata half of a split image (``<fingerprint>.tar.xz``)."""
    metadata = metadata_yaml(architecture) if metadata is None else metadata
    with _open_tar(path, 'xz') as tar:
        _add_metadata(tar, metadata)
    return path


def write_squashfs(path, marker='squashfs', pseudo=STANDARD_DEVICES,
                   extra=()):
    """A squashfs of the busybox rootfs; ``pseudo`` adds mksquashfs pseudo
    file definitions (no privileges needed for device nodes)."""
    work = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)))
    try:
        tree = guest_image.write_tree(os.path.join(work, 'rootfs'), marker)
        argv = ['mksquashfs', tree, path, '-noappend', '-quiet',
                '-no-progress', '-all-time', str(MTIME)]
        for definition in pseudo:
            argv += ['-p', definition]
        subprocess.run(argv + list(extra), check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(work)
    return path


def write_split(path, marker='lxd-split', compression='', squashfs_first=False,
                architecture=None, extra=()):
    """A split image bundle: a tar of ``<fp>.tar.xz`` and ``<fp>.squashfs``
    (plain, or compressed with ``compression``: gz, xz, bz2 or zst).
    ``extra``: (name, path) of more files to put in (a hostile bundle)."""
    work = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)))
    fp = 'c0ffee' * 10 + 'abcd'
    try:
        meta = write_metadata_tarball(os.path.join(work, fp + '.tar.xz'),
                                      architecture)
        rootfs = write_squashfs(os.path.join(work, fp + '.squashfs'), marker)
        parts = [(fp + '.tar.xz', meta), (fp + '.squashfs', rootfs)]
        if squashfs_first:
            parts.reverse()
        plain = os.path.join(work, 'bundle.tar')
        native = compression in ('gz', 'xz', 'bz2')
        mode = 'w:' + compression if native else 'w'
        with tarfile.open(path if mode != 'w' else plain, mode) as tar:
            for name, part in parts + list(extra):
                tar.add(part, arcname=name)
        if mode == 'w' and compression == 'zst':
            subprocess.run(['zstd', '-q', '-f', plain, '-o', path],
                           check=True)
        elif mode == 'w':
            os.rename(plain, path)
    finally:
        shutil.rmtree(work)
    return path


# -- hostile images ---------------------------------------------------------

def write_squashfs_block_device(path):
    return write_squashfs(path, 'hostile', pseudo=STANDARD_DEVICES + (
        'dev/sda b 0640 0 0 8 0',))


def write_squashfs_foreign_uid(path, uid=70000):
    """A squashfs with a directory owned by an id the guest does not map."""
    return write_squashfs(path, 'hostile', pseudo=(
        'home d 0755 %d %d' % (uid, uid),))


def write_truncated_squashfs(path):
    write_squashfs(path, 'hostile')
    with open(path, 'r+b') as f:
        f.truncate(os.fstat(f.fileno()).st_size // 2)
    return path


def write_corrupt_squashfs(path):
    """A squashfs whose inode table is garbage (its length is right)."""
    write_squashfs(path, 'hostile')
    with open(path, 'r+b') as f:
        inode_table = struct.unpack_from('<Q', f.read(96), 64)[0]
        f.seek(inode_table + 2)
        f.write(b'\xff' * 64)
    return path


def write_split_extra_file(path):
    """A bundle with a second squashfs besides the two expected files."""
    extra = write_squashfs(path + '.extra', 'hostile')
    try:
        return write_split(path, 'hostile',
                           extra=[('extra.squashfs', extra)])
    finally:
        os.unlink(extra)


def write_truncated_split(path):
    """A gzip bundle cut in the middle of its squashfs."""
    write_split(path, 'hostile', compression='gz')
    with open(path, 'r+b') as f:
        f.truncate(os.fstat(f.fileno()).st_size // 2)
    return path


def write_split_without_squashfs(path):
    """A bundle holding the metadata tarball alone (a VM image's would add
    a disk image, not a squashfs)."""
    meta = write_metadata_tarball(path + '.meta.tar.xz')
    try:
        with tarfile.open(path, 'w') as tar:
            tar.add(meta, arcname='meta.tar.xz')
    finally:
        os.unlink(meta)
    return path


def write_unified_without_rootfs(path):
    with _open_tar(path, 'xz') as tar:
        _add_metadata(tar, metadata_yaml())
    return path


def write_unified_rootfs_symlink(path):
    """rootfs is a symlink to the host's /etc: must not become the root."""
    with _open_tar(path, 'xz') as tar:
        _add_metadata(tar, metadata_yaml())
        info = tarfile.TarInfo('rootfs')
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, '/etc', 0o777
        tar.addfile(info)
    return path


def write_foreign_architecture(path):
    return write_unified(path, 'hostile', architecture=other_architecture())


def write_metadata_not_yaml(path):
    return write_unified(path, 'hostile',
                         metadata=b'architecture: [x86_64\n  - : {bad\n')
