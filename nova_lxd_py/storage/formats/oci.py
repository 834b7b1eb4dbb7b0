"""OCI image layouts and ``docker save`` archives, flattened into a rootfs.

The Glance blob is one tar (plain or compressed) holding either an OCI
image layout (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``) or a
``docker save`` archive (``manifest.json`` naming a config and layer tars;
docker 25 and later write both). Unpacking goes:

1. the outer tar is streamed through the member checker into a scratch
   directory (as root: nothing in it is ever run, only read);
2. the image for this host's architecture is chosen and every blob it uses
   is checked against its digest before anything reads it as a tar;
3. each layer is streamed through the checker into its own scratch
   directory in the guest's user namespace (owners land shifted), then
   moved onto the root file system with renames: whiteouts first delete
   from the lower layers, then the layer's entries replace or merge into
   theirs. No step follows a symlink, so a layer cannot reach out of the
   tree through a link an earlier layer made.

An application image rarely has an init; a system container needs one, so
``[lxc] oci_init`` (a static binary, e.g. busybox) is copied in as its
/sbin/init when it has none. The image's own entrypoint is recorded in the
facts, not run.
"""

import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import tarfile
import time

from oslo_log import log as logging

from nova_lxd_py import conf
from nova_lxd_py.storage.formats import stream
from nova_lxd_py.storage.formats import tar as tarball
from nova_lxd_py.storage import rootfs

LOG = logging.getLogger(__name__)

NAME = 'oci'
DISK_FORMATS = ('raw',)
CONTAINER_FORMATS = ('docker', 'oci')

UnsafeImage = stream.UnsafeImage

# What may sit at the top of a layout or a docker-save archive (layers and
# configs named by digest: <hex>/layer.tar, <hex>.json, podman's <hex>.tar).
_TOP = re.compile(r'(oci-layout|index\.json|manifest\.json|repositories|'
                  r'blobs|[0-9a-f]{64}(\.json|\.tar)?)\Z')
_BLOB_NAME = re.compile(r'(blobs/sha(256|512)/[0-9a-f]+|[0-9a-f]{64}/layer'
                        r'\.tar|[0-9a-f]{64}\.tar)\Z')
_DIGEST = re.compile(r'(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})\Z')
_HEX_NAME = re.compile(r'(?:.*/)?(?:blobs/sha256/)?([0-9a-f]{64})'
                       r'(?:\.json|\.tar)?\Z')

DETECT_MEMBERS = 10000          # a layout has a handful of members
DETECT_BYTES = 64 << 20         # of a compressed archive, at most
MAX_JSON = 8 << 20              # index, manifest or config
MAX_NESTING = 4                 # image indexes inside image indexes

INDEX_TYPES = ('application/vnd.oci.image.index.v1+json',
               'application/vnd.docker.distribution.manifest.list.v2+json')
MANIFEST_TYPES = ('application/vnd.oci.image.manifest.v1+json',
                  'application/vnd.docker.distribution.manifest.v2+json')
CONFIG_TYPES = ('application/vnd.oci.image.config.v1+json',
                'application/vnd.docker.container.image.v1+json')
RECORDED_CONFIG = ('Entrypoint', 'Cmd', 'Env', 'WorkingDir', 'User')

WHITEOUT = '.wh.'
OPAQUE = '.wh..wh..opq'

# platform.machine() -> GOARCH, the names images use.
ARCHITECTURES = {'x86_64': 'amd64', 'aarch64': 'arm64', 'armv7l': 'arm',
                 'armv6l': 'arm', 'i686': '386', 'i386': '386',
                 'ppc64le': 'ppc64le', 's390x': 's390x',
                 'riscv64': 'riscv64'}


def host_architecture():
    machine = platform.machine()
    return ARCHITECTURES.get(machine, machine)


# -- detect ----------------------------------------------------------------

class _Enough(Exception):
    """Detection read as far as it may."""


class _CappedReader:
    """A pipe that ends (as far as tarfile knows) after ``limit`` bytes."""

    def __init__(self, raw, limit):
        self.raw, self.left = raw, limit

    def read(self, size=-1):
        if self.left <= 0:
            raise _Enough()
        data = self.raw.read(min(size, self.left) if size >= 0 else
                             self.left)
        self.left -= len(data)
        return data


def _judge(members):
    """True if the member names are a layout's or a docker-save archive's.

    Any top-level name a layout does not have (a rootfs's ``etc``, an LXD
    image's ``metadata.yaml``) ends it at once. At the cap, blobs named by
    digest under an all-layout top level are enough.
    """
    keys, blobs = set(), False
    try:
        for count, member in enumerate(members):
            name = stream.normalise(member.name)
            if name == '.':
                continue
            if not _TOP.match(name.split('/', 1)[0]):
                return False
            if name in ('oci-layout', 'index.json', 'manifest.json'):
                keys.add(name)
            blobs = blobs or bool(_BLOB_NAME.match(name))
            if count >= DETECT_MEMBERS:
                raise _Enough()
    except _Enough:
        return bool(keys or blobs)
    except (tarfile.TarError, EOFError, ValueError, UnicodeError, OSError):
        return False
    return 'manifest.json' in keys or {'oci-layout', 'index.json'} <= keys


def detect(head, path):
    if tarball.is_tar(head):
        # Headers only: tarfile seeks over the members' data.
        try:
            with tarfile.open(path, 'r:') as tar:
                return _judge(iter(tar.next, None))
        except (tarfile.TarError, EOFError, ValueError, OSError):
            return False
    argv, _ = stream.compression(head)
    if argv is None:
        return False
    with open(path, 'rb') as f:
        proc = subprocess.Popen(argv, stdin=f, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        reader = _CappedReader(proc.stdout, DETECT_BYTES)
        try:
            tar = tarfile.open(fileobj=reader, mode='r|')
        except (tarfile.TarError, EOFError, _Enough):
            return False
        return _judge(tar)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


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


def _choose(root):
    if os.path.lexists(os.path.join(root, 'index.json')):
        return _Layout(root).image()
    if os.path.lexists(os.path.join(root, 'manifest.json')):
        return _DockerSave(root).image()
    raise UnsafeImage('it has neither an index.json (OCI layout) nor a '
                      'manifest.json (docker save)')


# -- flattening ------------------------------------------------------------

class _LayerChecker(stream.Checker):
    """The member checker, also noting the whiteouts and directories.

    The names come from the tar stream, so the merge needs no walk of the
    layer's tree. ``counted`` carries the earlier layers' bytes into the
    cap, so all layers together stay under it.
    """

    def __init__(self, target, counted):
        super().__init__(target)
        self.bytes = counted
        self.whiteouts = []
        self.dirs = set()

    def check(self, member):
        super().check(member)
        name = stream.normalise(member.name)
        if name.rpartition('/')[2].startswith(WHITEOUT):
            self.whiteouts.append(name)
        elif member.type == tarfile.DIRTYPE:
            self.dirs.add(name)


def _real_dir(root, rel):
    """Host path of directory ``rel`` under root if no part of it is a
    symlink or a non-directory; else None (there is nothing below it)."""
    path = root
    for part in filter(None, rel.split('/')):
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        except FileNotFoundError:
            return None
    return path


def _remove(path, st=None):
    st = st or os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)        # fd-based: never follows a symlink
    else:
        os.unlink(path)


def _apply_whiteouts(layer, dest, whiteouts):
    """Delete what the layer's whiteouts hide from ``dest``; drop them."""
    for name in whiteouts:
        parent, _, marker = name.rpartition('/')
        upper = _real_dir(layer, parent)
        if upper is None or not os.path.lexists(
                os.path.join(upper, marker)):
            continue               # listed twice, or under a replaced dir
        st = os.lstat(upper)       # the layer's times, for the merge
        _remove(os.path.join(upper, marker))
        os.utime(upper, ns=(st.st_atime_ns, st.st_mtime_ns))
        lower = _real_dir(dest, parent)
        if marker == OPAQUE:
            if lower is not None:
                for entry in os.scandir(lower):
                    _remove(entry.path)
            continue
        if marker.startswith(WHITEOUT + WHITEOUT):
            continue               # aufs bookkeeping, not a whiteout
        hidden = marker[len(WHITEOUT):]
        if hidden in ('', '.', '..'):
            raise UnsafeImage('whiteout %r names no file' % name)
        if lower is not None and os.path.lexists(os.path.join(lower,
                                                              hidden)):
            _remove(os.path.join(lower, hidden))


def _copy_dir_meta(st, path):
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns),
             follow_symlinks=False)


def _merge(layer, dest, dirs):
    """Move the layer's entries onto ``dest``.

    A new name is renamed in whole; a directory over a directory is merged
    (and takes the layer's owner and mode if the layer has it as a member,
    not if tar made it only as a parent); anything else replaces the lower
    entry. Post-order through an explicit stack: any depth is fine.
    """
    stack = [('', None)]
    while stack:
        rel, st = stack.pop()
        if st is not None:
            _copy_dir_meta(st, os.path.join(dest, rel))
            continue
        upper_dir = os.path.join(layer, rel)
        with os.scandir(upper_dir) as it:
            names = [entry.name for entry in it]
        for name in names:
            sub = os.path.join(rel, name)
            upper, lower = os.path.join(layer, sub), os.path.join(dest, sub)
            ust = os.lstat(upper)
            try:
                lst = os.lstat(lower)
            except FileNotFoundError:
                os.rename(upper, lower)
                continue
            if stat.S_ISDIR(ust.st_mode) and stat.S_ISDIR(lst.st_mode):
                if sub in dirs:
                    stack.append((sub, ust))     # after its children
                stack.append((sub, None))
                continue
            _remove(lower, lst)
            os.rename(upper, lower)


def _flatten(image, target, workdir):
    """Unpack the layers in order onto ``target.dest``; (members, bytes)."""
    target.prepare()
    counted = members = 0
    last_use = {path: i for i, path in enumerate(image.layers)}
    for i, blob in enumerate(image.layers):
        what = 'layer #%d of %d' % (i + 1, len(image.layers))
        layer = stream.scratch(workdir, 'layer-%d' % (i + 1))
        ltarget = target.replace(dest=layer,
                                 label='%s %s' % (target.label, what))
        checker = _LayerChecker(ltarget, counted)
        try:
            stream.extract(ltarget, archive=blob, checker=checker)
        except UnsafeImage as e:
            raise UnsafeImage('%s: %s' % (what, e))
        counted, members = checker.bytes, members + checker.members
        if last_use[blob] == i:
            os.unlink(blob)        # room on the disk for the next one
        try:
            _apply_whiteouts(layer, target.dest, checker.whiteouts)
            _merge(layer, target.dest, checker.dirs)
        except OSError as e:
            raise UnsafeImage('%s could not be merged onto the ones below '
                              'it: %s' % (what, e))
        shutil.rmtree(layer)
    return members, counted


def _guest_dir(root, guest_path, uid, gid):
    """Host path of a guest directory, made (guest-owned) if missing."""
    path = rootfs.resolve_in_root(root, guest_path)
    if path is None:
        raise UnsafeImage('its %s is a symlink loop' % guest_path)
    here = root
    for part in filter(None, os.path.relpath(path, root).split('/')):
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here, 0o755)
            os.chown(here, uid, gid, follow_symlinks=False)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeImage('its %s is not a directory' % guest_path)
    return path


def _ensure_init(target):
    """False if the image has an init; True once [lxc] oci_init is in.

    An absolute link such as /sbin/init -> /bin/busybox resolves inside the
    guest's tree. A copy goes in as a file of the guest's root, never
    through a link; a dangling /sbin/init link is replaced.
    """
    init = rootfs.resolve_in_root(target.dest, '/sbin/init')
    if init is not None and os.path.isfile(init):
        return False
    source = conf.CONF.lxc.oci_init
    if not source:
        raise UnsafeImage('it has no /sbin/init and [lxc] oci_init is not '
                          'set, so it cannot boot as a system container')
    path = os.path.join(
        _guest_dir(target.dest, '/sbin', target.uid, target.gid), 'init')
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.lexists(path):
        raise UnsafeImage('its /sbin/init is not a file')
    try:
        src = open(source, 'rb')
    except OSError as e:
        raise UnsafeImage('it has no /sbin/init and [lxc] oci_init (%s) '
                          'cannot be read: %s' % (source, e.strerror))
    with src:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700)
        with os.fdopen(fd, 'wb') as dst:
            shutil.copyfileobj(src, dst, stream.CHUNK)
            os.fchown(fd, target.uid, target.gid)
            os.fchmod(fd, 0o755)
    LOG.info('%(label)s has no /sbin/init: %(init)s copied in as one',
             {'label': target.label, 'init': source})
    return True


def unpack(archive, target, workdir):
    started = time.monotonic()
    outer = stream.scratch(workdir, 'archive')
    # Uncompressed layers carry a header and padding per file on top of the
    # tree they hold; the cap on the tree itself applies when flattening.
    cap = target.max_bytes + target.max_bytes // 4
    stream.extract(stream.Target(dest=outer, max_bytes=cap,
                                 label='%s archive' % target.label),
                   archive=archive)
    image = _choose(outer)
    members, tree_bytes = _flatten(image, target, workdir)
    shutil.rmtree(outer)
    facts = image.facts()
    facts.update(members=members, tree_bytes=tree_bytes,
                 injected_init=_ensure_init(target))
    LOG.info('%(label)s: %(source)s image with %(n)d layers flattened in '
             '%(s).1f s', {'label': target.label, 'source': image.source,
                           'n': len(image.layers),
                           's': time.monotonic() - started})
    return facts
