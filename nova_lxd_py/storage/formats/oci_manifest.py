"""Which image of an OCI layout or ``docker save`` archive to unpack.

The archive is unpacked (by :mod:`oci`) into a scratch directory; this
module reads it there: the index (nested indexes too) or manifest.json,
the manifest and config of the image for this host's architecture, and
the layers that image uses. Every blob is checked against its digest (and
its size, where a descriptor gives one) before anything parses it or reads
it as a tar, and every path is resolved inside the scratch directory,
never through a link out of it.
"""

import hashlib
import json
import os
import platform
import re
import stat

from nova_lxd_py.storage.formats import stream
from nova_lxd_py.storage import rootfs

UnsafeImage = stream.UnsafeImage

_DIGEST = re.compile(r'(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})\Z')
_HEX_NAME = re.compile(r'(?:.*/)?(?:blobs/sha256/)?([0-9a-f]{64})'
                       r'(?:\.json|\.tar)?\Z')

MAX_JSON = 8 << 20              # index, manifest or config
MAX_NESTING = 4                 # image indexes inside image indexes

INDEX_TYPES = ('application/vnd.oci.image.index.v1+json',
               'application/vnd.docker.distribution.manifest.list.v2+json')
MANIFEST_TYPES = ('application/vnd.oci.image.manifest.v1+json',
                  'application/vnd.docker.distribution.manifest.v2+json')
CONFIG_TYPES = ('application/vnd.oci.image.config.v1+json',
                'application/vnd.docker.container.image.v1+json')
RECORDED_CONFIG = ('Entrypoint', 'Cmd', 'Env', 'WorkingDir', 'User')

# platform.machine() -> GOARCH, the names images use.
ARCHITECTURES = {'x86_64': 'amd64', 'aarch64': 'arm64', 'armv7l': 'arm',
                 'armv6l': 'arm', 'i686': '386', 'i386': '386',
                 'ppc64le': 'ppc64le', 's390x': 's390x',
                 'riscv64': 'riscv64'}


def host_architecture():
    machine = platform.machine()
    return ARCHITECTURES.get(machine, machine)


# -- reading the archive ---------------------------------------------------

def _file(root, rel, what):
    """Host path of regular file ``rel`` of the unpacked archive."""
    path = rootfs.resolve_in_root(root, rel)
    try:
        if path is not None and stat.S_ISREG(os.lstat(path).st_mode):
            return path
    except FileNotFoundError:
        pass
    raise UnsafeImage('%s (%s) is missing from the archive' % (what, rel))


def _check_size(path, size, what):
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        raise UnsafeImage('%s is %d bytes but its descriptor says %d'
                          % (what, actual, size))
    return actual


def _check_digest(digest, actual, what):
    if actual != digest:
        raise UnsafeImage('%s does not match its digest %s (it is %s)'
                          % (what, digest, actual))


def _json(path, what, digest=None, size=None, kind=dict):
    """Parse a small JSON file; its digest is checked first if given."""
    if _check_size(path, size, what) > MAX_JSON:
        raise UnsafeImage('%s is larger than %d MiB' % (what,
                                                        MAX_JSON >> 20))
    with open(path, 'rb') as f:
        data = f.read()
    if digest:
        alg = digest.split(':', 1)[0]
        _check_digest(digest, '%s:%s' % (alg, hashlib.new(alg, data)
                                         .hexdigest()), what)
    try:
        value = json.loads(data)
    except ValueError:
        raise UnsafeImage('%s is not valid JSON' % what)
    if not isinstance(value, kind):
        raise UnsafeImage('%s is not a JSON %s' % (
            what, 'object' if kind is dict else 'array'))
    return value


def _descriptor(desc, what):
    """(digest, size, media type) of a content descriptor, validated."""
    if not isinstance(desc, dict):
        raise UnsafeImage('%s is not a descriptor' % what)
    digest, size = desc.get('digest'), desc.get('size')
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise UnsafeImage('%s has an unsupported digest %r (sha256 or sha512 '
                          'expected)' % (what, digest))
    if type(size) is not int or size < 0:
        raise UnsafeImage('%s has an invalid size %r' % (what, size))
    return digest, size, desc.get('mediaType')


def _blob_rel(digest):
    return 'blobs/%s/%s' % tuple(digest.split(':', 1))


def _hash_file(path, alg):
    with open(path, 'rb') as f:
        return '%s:%s' % (alg, hashlib.file_digest(f, alg).hexdigest())


class _Image:
    """The chosen image: its config and its layers, all verified."""

    def __init__(self, source, config, layers, manifest=None):
        self.source = source          # 'oci-layout' or 'docker-save'
        self.config = config          # parsed image config
        self.layers = layers          # host paths of the layer blobs
        self.manifest = manifest      # digest of the OCI manifest

    def facts(self):
        runtime = self.config.get('config') or {}
        if not isinstance(runtime, dict):
            runtime = {}
        return {'source': self.source,
                'architecture': self.config.get('architecture'),
                'os': self.config.get('os'),
                'manifest': self.manifest,
                'layers': len(self.layers),
                'config': {key: runtime[key] for key in RECORDED_CONFIG
                           if key in runtime}}


def _platform_of(config):
    return (config.get('architecture'), config.get('os'))


def _no_match(found):
    raise UnsafeImage('it has no image for this host (linux/%s); it has %s'
                      % (host_architecture(),
                         ', '.join(sorted('%s/%s' % (o or '?', a or '?')
                                          for a, o in set(found)))
                         or 'no image at all'))


def _matches(arch, os_name):
    return arch == host_architecture() and os_name in (None, 'linux')


class _Layout:
    """An OCI image layout (docker 25 and later save as one too)."""

    def __init__(self, root):
        self.root = root

    def blob(self, desc, what):
        digest, size, media = _descriptor(desc, what)
        return _file(self.root, _blob_rel(digest), what), digest, size, media

    def manifests(self, index, what, depth=0):
        """Descriptors of the image manifests of an index, depth first."""
        descs = index.get('manifests')
        if not isinstance(descs, list):
            raise UnsafeImage('%s lists no manifests' % what)
        for i, desc in enumerate(descs):
            path, digest, size, media = self.blob(
                desc, '%s manifest #%d' % (what, i + 1))
            if media in INDEX_TYPES:
                if depth >= MAX_NESTING:
                    raise UnsafeImage('its image indexes nest more than %d '
                                      'deep' % MAX_NESTING)
                nested = _json(path, 'image index %s' % digest, digest,
                               size)
                yield from self.manifests(nested, 'image index %s' % digest,
                                          depth + 1)
            elif media in MANIFEST_TYPES or media is None:
                yield desc

    def image(self):
        if os.path.lexists(os.path.join(self.root, 'oci-layout')):
            layout = _json(_file(self.root, 'oci-layout', 'oci-layout'),
                           'oci-layout')
            version = str(layout.get('imageLayoutVersion', ''))
            if version.split('.')[0] != '1':
                raise UnsafeImage('its OCI layout version %r is not 1.x'
                                  % version)
        index = _json(_file(self.root, 'index.json', 'index.json'),
                      'index.json')
        found = []
        for desc in self.manifests(index, 'index.json'):
            plat = desc.get('platform')
            if isinstance(plat, dict) and plat.get('architecture'):
                # An index says which platform each manifest is for.
                found.append((plat.get('architecture'), plat.get('os')))
                if not _matches(*found[-1]):
                    continue
            digest, manifest, config = self._load_manifest(desc)
            if _matches(*_platform_of(config)):
                return self._image(digest, manifest, config)
            found.append(_platform_of(config))
        _no_match([f for f in found if f[0] != 'unknown'])

    def _load_manifest(self, desc):
        path, digest, size, _ = self.blob(desc, 'a manifest')
        what = 'manifest %s' % digest
        manifest = _json(path, what, digest, size)
        if manifest.get('schemaVersion') != 2:
            raise UnsafeImage('%s has schemaVersion %r; only 2 is supported'
                              % (what, manifest.get('schemaVersion')))
        config_desc = manifest.get('config')
        cpath, cdigest, csize, cmedia = self.blob(config_desc,
                                                  '%s config' % what)
        if cmedia not in CONFIG_TYPES:
            raise UnsafeImage('%s is not a container image (its config is '
                              '%r)' % (what, cmedia))
        config = _json(cpath, 'image config %s' % cdigest, cdigest, csize)
        return digest, manifest, config

    def _image(self, digest, manifest, config):
        """The _Image of a manifest for this host, its layers verified."""
        layers = manifest.get('layers')
        if not isinstance(layers, list):
            raise UnsafeImage('manifest %s lists no layers' % digest)
        paths = []
        for i, layer in enumerate(layers):
            what = 'layer #%d' % (i + 1)
            path, ldigest, size, media = self.blob(layer, what)
            if not isinstance(media, str) or 'tar' not in media or (
                    'encrypted' in media):
                raise UnsafeImage('%s has media type %r, not a tar layer'
                                  % (what, media))
            what = '%s (%s)' % (what, ldigest)
            _check_size(path, size, what)
            _check_digest(ldigest, _hash_file(path, ldigest.split(':')[0]),
                          what)
            paths.append(path)
        return _Image('oci-layout', config, paths, digest)


class _DockerSave:
    """A classic ``docker save`` archive: manifest.json, <id>/layer.tar."""

    def __init__(self, root):
        self.root = root

    def image(self):
        entries = _json(_file(self.root, 'manifest.json', 'manifest.json'),
                        'manifest.json', kind=list)
        found = []
        for i, entry in enumerate(entries):
            what = 'manifest.json entry #%d' % (i + 1)
            if not isinstance(entry, dict) or not isinstance(
                    entry.get('Config'), str) or not isinstance(
                    entry.get('Layers'), list):
                raise UnsafeImage('%s has no Config and Layers' % what)
            config = self._config(entry['Config'])
            found.append(_platform_of(config))
            if _matches(*_platform_of(config)):
                return _Image('docker-save', config,
                              self._layers(entry['Layers'], config))
        _no_match(found)

    def _config(self, rel):
        name = _HEX_NAME.match(rel)
        if not name:
            raise UnsafeImage('its config %r is not named by its digest, so '
                              'it cannot be verified' % rel)
        digest = 'sha256:' + name.group(1)
        return _json(_file(self.root, rel, 'its config'),
                     'image config %s' % digest, digest)

    def _layers(self, rels, config):
        diff_ids = (config.get('rootfs') or {}).get('diff_ids')
        if not isinstance(diff_ids, list) or len(diff_ids) != len(rels):
            raise UnsafeImage('its config lists %s layer digests for %d '
                              'layers' % (len(diff_ids) if isinstance(
                                  diff_ids, list) else 'no', len(rels)))
        paths = []
        for i, (rel, diff_id) in enumerate(zip(rels, diff_ids)):
            what = 'layer #%d (%s)' % (i + 1, rel)
            if not isinstance(rel, str) or not isinstance(
                    diff_id, str) or not _DIGEST.match(diff_id):
                raise UnsafeImage('%s has no valid digest' % what)
            path = _file(self.root, rel, what)
            actual = _hash_file(path, diff_id.split(':')[0])
            # Layers are stored uncompressed (their diff_id); a compressed
            # one must then be named by the digest of its bytes.
            named = _HEX_NAME.match(rel)
            if actual != diff_id and not (
                    named and actual == 'sha256:' + named.group(1)):
                _check_digest(diff_id, actual, what)
            paths.append(path)
        return paths


def choose(root):
    """The _Image of the unpacked archive at ``root`` for this host."""
    if os.path.lexists(os.path.join(root, 'index.json')):
        return _Layout(root).image()
    if os.path.lexists(os.path.join(root, 'manifest.json')):
        return _DockerSave(root).image()
    raise UnsafeImage('it has neither an index.json (OCI layout) nor a '
                      'manifest.json (docker save)')
