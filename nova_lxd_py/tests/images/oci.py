"""OCI image layouts and ``docker save`` archives, built locally.

Made with tarfile, json and hashlib (and the zstd tool for zstd layers):
nothing is downloaded, no skopeo or docker. The good images have two
layers over the busybox guest of :mod:`guest_image`:

layer 1
    the busybox rootfs, ``/etc/remove-me``, ``/opt/app/`` with old files,
    ``/users/u1000`` owned by 1000, ``/srv`` (0700) with a ``replaced/`` dir,
    ``/etc/motd`` saying "layer 1";
layer 2
    ``/etc/image-marker`` (the marker), a whiteout of ``/etc/remove-me``,
    ``/opt/app/`` made opaque (mode 0750) with only ``new-file``,
    ``/srv/replaced`` turned into a file, ``/etc/motd`` saying "layer 2".

Each writer returns the path it wrote.
"""

import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile

from nova_lxd_py.tests import guest_image

MTIME = 1700000000
HOST_ARCH = {'x86_64': 'amd64', 'aarch64': 'arm64'}.get(
    platform.machine(), platform.machine())
OTHER_ARCHES = tuple(a for a in ('arm64', 's390x', 'amd64')
                     if a != HOST_ARCH)[:2]

LAYER_TYPES = {'': 'application/vnd.oci.image.layer.v1.tar',
               'gzip': 'application/vnd.oci.image.layer.v1.tar+gzip',
               'zstd': 'application/vnd.oci.image.layer.v1.tar+zstd'}
MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json'
INDEX_TYPE = 'application/vnd.oci.image.index.v1+json'
CONFIG_TYPE = 'application/vnd.oci.image.config.v1+json'

RUNTIME = {'Entrypoint': ['/bin/sh', '-c'], 'Cmd': ['echo hello'],
           'Env': ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'],
           'WorkingDir': '/root', 'User': '0:0'}


def entry(name, data=None, kind=None, mode=None, uid=0, gid=0, link=''):
    """(TarInfo, bytes or None) of one layer member."""
    info = tarfile.TarInfo(name)
    info.type = kind or (tarfile.DIRTYPE if data is None and not link
                         else tarfile.REGTYPE)
    info.mode = mode if mode is not None else (
        0o755 if info.type == tarfile.DIRTYPE else 0o644)
    info.uid, info.gid, info.linkname, info.mtime = uid, gid, link, MTIME
    if data is not None:
        info.size = len(data)
    return info, data


def tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(data, how):
    if how == 'gzip':
        return gzip.compress(data, compresslevel=1, mtime=0)
    if how == 'zstd':
        return subprocess.run(['zstd', '-q', '-c'], input=data, check=True,
                              capture_output=True).stdout
    return data


def sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def base_members(with_init=True):
    """Layer 1: the busybox guest and what layer 2 changes."""
    return guest_image.busybox_members(None, with_init) + [
        entry('etc/remove-me', b'whited out by layer 2\n'),
        entry('etc/motd', b'layer 1\n'),
        entry('opt'), entry('opt/app'),
        entry('opt/app/old-file', b'hidden by the opaque dir\n'),
        entry('opt/app/old-dir'),
        entry('opt/app/old-dir/old-nested', b'hidden too\n'),
        entry('users'),
        entry('users/u1000', uid=1000, gid=1000),
        entry('users/u1000/notes', b'mine\n', mode=0o600, uid=1000, gid=1000),
        entry('srv', mode=0o700),
        entry('srv/replaced'),
        entry('srv/replaced/inner', b'gone with its dir\n'),
        entry('var/lib'),
        entry('var/lib/kept', b'untouched\n'),
    ]


def upper_members(marker):
    """Layer 2: the marker, a whiteout, an opaque dir, replacements."""
    return [
        entry('etc'),
        entry('etc/image-marker', marker.encode()),
        entry('etc/.wh.remove-me', b''),
        entry('etc/motd', b'layer 2\n'),
        entry('root/.wh.never-existed', b''),
        entry('opt/app', mode=0o750),
        entry('opt/app/.wh..wh..opq', b''),
        entry('opt/app/new-file', b'from layer 2\n'),
        # No srv/ member: tar makes it as a parent only, so the lower
        # srv/ keeps its mode.
        entry('srv/replaced', b'now a file\n'),
    ]


def two_layers(marker, with_init=True, compressions=('gzip', 'zstd')):
    return [(base_members(with_init), compressions[0]),
            (upper_members(marker), compressions[1])]


class Blobs:
    """Content-addressed blobs, as in blobs/sha256/."""

    def __init__(self):
        self.data = {}

    def add(self, data, media_type, **extra):
        digest = sha256(data)
        self.data[digest] = data
        return dict(mediaType=media_type, digest=digest, size=len(data),
                    **extra)

    def add_json(self, value, media_type, **extra):
        return self.add(json.dumps(value).encode(), media_type, **extra)

    def files(self):
        return [('blobs/%s/%s' % tuple(digest.split(':')), data)
                for digest, data in sorted(self.data.items())]


def image_config(arch, diff_ids, runtime=RUNTIME):
    return {'architecture': arch, 'os': 'linux', 'config': runtime,
            'rootfs': {'type': 'layers', 'diff_ids': diff_ids},
            'history': [{'created_by': 'nova-lxd-py tests'}
                        for _ in diff_ids]}


def add_image(blobs, layers, arch=HOST_ARCH, platform_in_index=False):
    """Blobs of one image; its manifest's descriptor."""
    descs, diff_ids = [], []
    for members, how in layers:
        raw = tar_bytes(members)
        diff_ids.append(sha256(raw))
        descs.append(blobs.add(compress(raw, how), LAYER_TYPES[how]))
    config = blobs.add_json(image_config(arch, diff_ids), CONFIG_TYPE)
    extra = ({'platform': {'architecture': arch, 'os': 'linux'}}
             if platform_in_index else {})
    return blobs.add_json({'schemaVersion': 2, 'mediaType': MANIFEST_TYPE,
                           'config': config, 'layers': descs},
                          MANIFEST_TYPE, **extra)


def layout_files(blobs, manifests):
    index = {'schemaVersion': 2, 'mediaType': INDEX_TYPE,
             'manifests': manifests}
    return ([('oci-layout', b'{"imageLayoutVersion": "1.0.0"}'),
             ('index.json', json.dumps(index).encode())] + blobs.files())


def write_archive(path, files, compression=''):
    """The outer tar (``compression``: '', 'gz', 'xz' or 'zst')."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as t:
        made = set()
        for name, data in files:
            parts = name.split('/')
            for i in range(1, len(parts)):
                parent = '/'.join(parts[:i])
                if parent not in made:
                    made.add(parent)
                    t.addfile(entry(parent)[0])
            info, _ = entry(name, data)
            t.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    with open(path, 'wb') as f:
        if compression == 'zst':
            f.write(compress(data, 'zstd'))
        elif compression:
            f.write(subprocess.run([{'gz': 'gzip', 'xz': 'xz'}[compression],
                                    '-c'], input=data, check=True,
                                   capture_output=True).stdout)
        else:
            f.write(data)
    return path


def write_oci_layout(path, marker, compression='', with_init=True,
                     layer_compressions=('gzip', 'zstd'), other_arches=()):
    """The two-layer image; with ``other_arches`` an index (nested in
    index.json, as registries serve them) also lists images for those."""
    blobs = Blobs()
    manifest = add_image(blobs, two_layers(marker, with_init,
                                           layer_compressions),
                         platform_in_index=bool(other_arches))
    if other_arches:
        manifests = [add_image(blobs, [(upper_members('wrong arch'), '')],
                               arch, platform_in_index=True)
                     for arch in other_arches] + [manifest]
        manifest = blobs.add_json({'schemaVersion': 2,
                                   'mediaType': INDEX_TYPE,
                                   'manifests': manifests}, INDEX_TYPE)
    return write_archive(path, layout_files(blobs, [manifest]), compression)


def write_oci_without_init(path, marker):
    return write_oci_layout(path, marker, with_init=False)


def write_multiarch_index(path, arches=OTHER_ARCHES):
    """An index of images for ``arches`` only (not this host's)."""
    blobs = Blobs()
    manifests = [add_image(blobs, two_layers(arch), arch,
                           platform_in_index=True) for arch in arches]
    return write_archive(path, layout_files(blobs, manifests))


def write_bad_digest(path, marker):
    """Layer 2's blob has one byte changed; its descriptor is the same."""
    blobs = Blobs()
    manifest = add_image(blobs, two_layers(marker,
                                           compressions=('gzip', '')))
    layer = json.loads(blobs.data[manifest['digest']])['layers'][1]
    data = bytearray(blobs.data[layer['digest']])
    data[data.index(marker.encode())] ^= 0x20      # the marker's case
    blobs.data[layer['digest']] = bytes(data)
    return write_archive(path, layout_files(blobs, [manifest]))


def write_dotdot_layer(path):
    """Digests all good, but layer 2 writes ``../evil``."""
    blobs = Blobs()
    manifest = add_image(blobs, [
        (base_members(), 'gzip'),
        ([entry('etc'), entry('../evil', b'outside the tree\n')], '')])
    return write_archive(path, layout_files(blobs, [manifest]))


def write_docker_save(path, marker, with_init=True):
    """The classic ``docker save`` shape: <id>/layer.tar (uncompressed),
    <config digest>.json, manifest.json and repositories."""
    files, layer_paths, diff_ids, parent = [], [], [], ''
    for members, _ in two_layers(marker, with_init):
        raw = tar_bytes(members)
        diff_ids.append(sha256(raw))
        layer_id = hashlib.sha256((parent + diff_ids[-1]).encode()
                                  ).hexdigest()
        files += [('%s/VERSION' % layer_id, b'1.0'),
                  ('%s/json' % layer_id, json.dumps(
                      {'id': layer_id, 'parent': parent}).encode()),
                  ('%s/layer.tar' % layer_id, raw)]
        layer_paths.append('%s/layer.tar' % layer_id)
        parent = layer_id
    config = json.dumps(image_config(HOST_ARCH, diff_ids)).encode()
    config_name = '%s.json' % hashlib.sha256(config).hexdigest()
    files += [(config_name, config),
              ('manifest.json', json.dumps([{
                  'Config': config_name,
                  'RepoTags': ['nova-lxd-py/test:latest'],
                  'Layers': layer_paths}]).encode()),
              ('repositories', json.dumps(
                  {'nova-lxd-py/test': {'latest': parent}}).encode())]
    return write_archive(path, files)


def write_docker25_save(path, marker, with_index=True):
    """``docker save`` of docker 25 and later: an OCI layout (layers
    uncompressed, an empty one between the two) whose manifest.json names
    the blobs; ``with_index=False`` drops index.json and oci-layout, as
    tools that write only the docker-save side do."""
    layers = two_layers(marker, compressions=('', ''))
    layers.insert(1, ([], ''))
    blobs = Blobs()
    manifest = add_image(blobs, layers)
    body = json.loads(blobs.data[manifest['digest']])
    files = layout_files(blobs, [manifest]) if with_index else blobs.files()
    files.append(('manifest.json', json.dumps([{
        'Config': 'blobs/sha256/' + body['config']['digest'][7:],
        'RepoTags': ['nova-lxd-py/test:latest'],
        'Layers': ['blobs/sha256/' + layer['digest'][7:]
                   for layer in body['layers']]}]).encode()))
    return write_archive(path, files)
