"""LXD and Incus images: unified tarballs and split image bundles.

Unified image
    one tarball, plain or compressed with anything :mod:`stream` knows
    (gzip, xz, zstd, bzip2), holding ``metadata.yaml``, ``rootfs/`` (the
    guest's root) and optionally ``templates/``. LXD, Incus and
    distrobuilder write ``metadata.yaml`` first; it must be among the
    first few members, as that is how the image is recognised without
    decompressing all of it. The tarball is streamed through the member
    checker into a scratch directory in the guest's user namespace, then
    ``rootfs/`` is renamed into place.

Split image bundle
    LXD keeps most images as two files, a metadata tarball
    (``<fingerprint>.tar.xz``: ``metadata.yaml`` and ``templates/``) and a
    squashfs root file system (``<fingerprint>.squashfs``), which is what
    ``lxc image export`` writes. A Glance image is one file, so the two are
    uploaded tarred together::

        tar -cf bundle.tar <fingerprint>.tar.xz <fingerprint>.squashfs

    The bundle's top level holds exactly these two regular files, in
    either order, under any names: which is which is read from their
    bytes. A plain (uncompressed) bundle is best: the squashfs is already
    compressed, and it is then unpacked in place from the bundle, with no
    copy. A compressed bundle works too; its two files are copied out to
    the work directory first. The squashfs is checked and unpacked as in
    :mod:`squashfs`, the metadata tarball goes through the checker like a
    unified image.

metadata.yaml
    read with ``yaml.safe_load``; its ``architecture`` must be this host's
    (LXD's aliases accepted, e.g. amd64 for x86_64, arm64 for aarch64);
    ``properties`` and the ``templates`` that LXD applies when an instance
    is created or started come back in the facts::

        {'architecture': 'x86_64', 'properties': {'os': 'debian', ...},
         'templates': {'/etc/hostname': {'when': ['create', 'copy'],
                                         'create_only': False,
                                         'template': '{{ container.name }}',
                                         'properties': {}}}}

    with each template's text in place of its file name; :func:`render`
    turns one into the file's content at spawn time.

Nothing of the image is read through a symlink: ``metadata.yaml``,
``templates/`` and the template files are opened without following links,
and must be regular files (directories for ``templates/``).
"""

import errno
import io
import os
import re
import stat
import subprocess
import tarfile
import threading

from oslo_log import log as logging
import yaml

from nova_lxd_py.storage.formats import squashfs
from nova_lxd_py.storage.formats import stream

LOG = logging.getLogger(__name__)

NAME = 'lxd'
DISK_FORMATS = ('raw',)
CONTAINER_FORMATS = ('bare', 'compressed')

HEAD_BYTES = 1 << 20        # decompressed bytes read to recognise an image
HEAD_MEMBERS = 8            # tar members looked at to recognise one
METADATA_MAX = 1 << 20      # metadata.yaml
METADATA_TARBALL_MAX = 64 << 20
TEMPLATES_MAX = 1 << 20     # the text of all the templates kept
TEMPLATE_WHEN = ('create', 'start')
SQUASHFS_SLACK = 64 << 20   # a squashfs may outgrow the tree it holds

METADATA = 'metadata.yaml'
UNIFIED = 'unified'
SPLIT = 'split'

# LXD's architecture names and the aliases images use for them.
_ARCHITECTURES = {
    'x86_64': ('amd64', 'x64'),
    'i686': ('i386', 'i486', 'i586', '386', 'x86'),
    'aarch64': ('arm64', 'arm64v8', 'armv8', 'armv8l'),
    'armv7l': ('armhf', 'armel', 'arm', 'armhfp', 'armv7', 'armv7a',
               'armv7hl'),
    'armv6l': ('armv6', 'armv6hl'),
    'ppc64le': ('ppc64el', 'powerpc64le'),
    'ppc64': ('powerpc64',),
    'ppc': ('powerpc',),
    's390x': (),
    'riscv64': (),
    'loongarch64': ('loong64',),
    'mips64': ('mips64el', 'mips64le'),
}
_CANONICAL = {alias: name for name, aliases in _ARCHITECTURES.items()
              for alias in aliases + (name,)}


def canonical_architecture(name):
    """LXD's name for an architecture or one of its aliases."""
    name = str(name).strip().lower()
    return _CANONICAL.get(name, name)


def host_architecture():
    return canonical_architecture(os.uname().machine)


# -- recognising an image ---------------------------------------------------

def detect(head, path):
    return kind(head, path) is not None


def kind(head, path):
    """UNIFIED, SPLIT or None, from the start of the (decompressed) tar."""
    if not (_is_tar(head) or stream.compression(head)[0]):
        return None
    members = _head_members(_decompressed_head(path, head))
    for info, _ in members:
        if stream.normalise(info.name) == METADATA and info.isreg():
            return UNIFIED
    files = [(i, d) for i, d in members if stream.normalise(i.name) != '.']
    if not files:
        return None
    info, data = files[0]
    if not info.isreg() or '/' in stream.normalise(info.name):
        return None
    if data.startswith(squashfs.MAGIC) or _is_metadata_tarball(data):
        return SPLIT
    return None


def _is_tar(data):
    return len(data) >= 512 and data[257:262] == b'ustar'


def _decompressed_head(path, head, limit=HEAD_BYTES):
    """The first ``limit`` bytes of the file, decompressed if it is."""
    argv, _ = stream.compression(head)
    with open(path, 'rb') as f:
        if argv is None:
            return f.read(limit)
        return _head_of_output(argv, f, limit)


def _head_of_output(argv, source, limit):
    """The first ``limit`` bytes ``argv`` writes, fed ``source`` (a file
    or bytes); a truncated or corrupt input just gives fewer bytes."""
    feed = source if not isinstance(source, bytes) else subprocess.PIPE
    proc = subprocess.Popen(argv, stdin=feed, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    writer = None
    if feed is subprocess.PIPE:
        def write():
            try:
                proc.stdin.write(source)
                proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
    try:
        return proc.stdout.read(limit)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if writer is not None:
            writer.join()


def _head_members(data, count=HEAD_MEMBERS):
    """[(TarInfo, the part of its data in ``data``)] for the first members
    of the tar that ``data`` starts; fewer if ``data`` ends before."""
    if not _is_tar(data):
        return []
    found = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as tar:
            for info in tar:
                found.append((info, data[info.offset_data:
                                         info.offset_data + info.size]))
                if len(found) >= count:
                    break
    except (tarfile.TarError, EOFError, ValueError):
        pass
    return found


def _is_metadata_tarball(data):
    """True if ``data`` starts a (compressed) tar with metadata.yaml."""
    argv, _ = stream.compression(data)
    if argv is not None:
        data = _head_of_output(argv, data, HEAD_BYTES)
    return any(stream.normalise(i.name) == METADATA and i.isreg()
               for i, _ in _head_members(data))


# -- unpacking --------------------------------------------------------------

def unpack(archive, target, workdir):
    with open(archive, 'rb') as f:
        head = f.read(stream.HEAD_BYTES)
    found = kind(head, archive)
    if found == UNIFIED:
        return _unpack_unified(archive, head, target, workdir)
    if found == SPLIT:
        return _unpack_split(archive, target, workdir)
    raise stream.UnsafeImage('it is neither an LXD image tarball with '
                             'metadata.yaml first nor a split LXD image '
                             'bundle')


def _unpack_unified(archive, head, target, workdir):
    # metadata.yaml is near the start: refuse another architecture before
    # unpacking gigabytes. The one unpacked is read again: it is the last
    # of its name in the tarball, the one that counts.
    for info, data in _head_members(_decompressed_head(archive, head)):
        if (stream.normalise(info.name) == METADATA and info.isreg()
                and len(data) == info.size):
            parse_metadata(data)
            break
    scratch = target.replace(dest=stream.scratch(workdir, 'lxd-image'))
    checker = stream.extract(scratch, archive=archive, prefix='rootfs/')
    facts = read_metadata(scratch.dest)
    _move_rootfs(os.path.join(scratch.dest, 'rootfs'), target.dest)
    facts.update(members=checker.members, tree_bytes=checker.bytes)
    return facts


def _move_rootfs(rootfs, dest):
    """Rename the unpacked rootfs/ to ``dest`` (absent or empty)."""
    try:
        st = os.lstat(rootfs)
    except FileNotFoundError:
        raise stream.UnsafeImage('the LXD image has no rootfs/ directory '
                                 '(LXD virtual-machine images are not '
                                 'supported)')
    if not stat.S_ISDIR(st.st_mode):
        raise stream.UnsafeImage("the LXD image's rootfs is not a "
                                 'directory')
    if os.path.lexists(dest):
        os.rmdir(dest)
    os.rename(rootfs, dest)


def _unpack_split(archive, target, workdir):
    rootfs, metadata = _bundle_parts(archive, target, workdir)
    scratch = target.replace(dest=stream.scratch(workdir, 'lxd-metadata'))
    stream.extract(scratch, archive=metadata)
    facts = read_metadata(scratch.dest)
    path, offset, length = rootfs
    facts.update(squashfs.unpack_image(path, target, workdir, offset,
                                       length))
    return facts


def _bundle_parts(archive, target, workdir):
    """((squashfs path, offset, length), metadata tarball path).

    A plain bundle's squashfs is read in place; a compressed bundle is
    streamed and its two files copied out into ``workdir``.
    """
    with open(archive, 'rb') as f:
        argv, name = stream.compression(f.read(8))
    if argv is None:
        try:
            with tarfile.open(archive, 'r:') as tar:
                return _split_members(tar, target, workdir,
                                      in_place=archive)
        except (tarfile.TarError, EOFError) as e:
            raise stream.UnsafeImage('the bundle is corrupt or truncated '
                                     '(%s)' % e)
    with open(archive, 'rb') as f:
        proc = subprocess.Popen(argv, stdin=f, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode='r|') as tar:
            parts = _split_members(tar, target, workdir)
        # To the end, so that the decompressor checks its trailer.
        while proc.stdout.read(stream.CHUNK):
            pass
    except (tarfile.TarError, EOFError) as e:
        proc.kill()
        proc.wait()
        raise stream.UnsafeImage('the bundle is corrupt or truncated (%s)'
                                 % e)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    err = proc.stderr.read().decode(errors='replace').strip()
    proc.stderr.close()
    if proc.wait() != 0:
        raise stream.UnsafeImage('the %s data is corrupt or truncated (%s)'
                                 % (name, err.splitlines()[-1] if err
                                    else 'exit status %d'
                                    % proc.returncode))
    return parts


def _split_members(tar, target, workdir, in_place=None):
    """Walk the bundle's members, refusing anything but the two files."""
    rootfs = metadata = None
    try:
        for info in tar:
            member = stream.normalise(info.name)
            if member == '.' and info.isdir():
                continue
            if not info.isreg() or '/' in member or info.issparse():
                raise stream.UnsafeImage(
                    'a split LXD image bundle holds only a metadata tarball '
                    'and a squashfs, at its top level; %r is not one'
                    % info.name)
            data = tar.extractfile(info)
            start = data.read(4)
            if start == squashfs.MAGIC and rootfs is None:
                rootfs = _squashfs_part(info, data, target, workdir,
                                        in_place)
            elif metadata is None:
                metadata = _copy_out(data, info, start, workdir, 'metadata',
                                     METADATA_TARBALL_MAX)
            else:
                raise stream.UnsafeImage(
                    'a split LXD image bundle holds one metadata tarball '
                    'and one squashfs; %r is a third file' % info.name)
    except (tarfile.TarError, EOFError) as e:
        raise stream.UnsafeImage('the bundle is corrupt or truncated (%s)'
                                 % e)
    if rootfs is None or metadata is None:
        raise stream.UnsafeImage(
            'the split LXD image bundle has no %s'
            % ('squashfs (LXD virtual-machine images are not supported)'
               if rootfs is None else 'metadata tarball'))
    return rootfs, metadata


def _squashfs_part(info, data, target, workdir, in_place):
    if in_place:
        return in_place, info.offset_data, info.size
    cap = target.max_bytes and target.max_bytes + SQUASHFS_SLACK
    path = _copy_out(data, info, squashfs.MAGIC, workdir, 'rootfs.squashfs',
                     cap)
    return path, 0, None


def _copy_out(data, info, start, workdir, name, cap):
    """Copy a member's data (``start`` already read) into ``workdir``."""
    if cap and info.size > cap:
        raise stream.UnsafeImage('%r in the bundle is %d MiB, more than '
                                 'the %d MiB allowed'
                                 % (info.name, info.size >> 20, cap >> 20))
    path = os.path.join(workdir, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, 'wb') as out:
        out.write(start)
        while True:
            chunk = data.read(stream.CHUNK)
            if not chunk:
                break
            out.write(chunk)
    return path


# -- metadata.yaml and templates --------------------------------------------

def read_metadata(root):
    """Facts from the unpacked ``root``'s metadata.yaml and templates."""
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            text = _read_file(dirfd, METADATA, METADATA_MAX)
        except FileNotFoundError:
            raise stream.UnsafeImage('the LXD image has no metadata.yaml')
        facts = parse_metadata(text)
        if facts['templates']:
            _read_templates(dirfd, facts['templates'])
    finally:
        os.close(dirfd)
    return facts


def _open_nofollow(name, dirfd, directory=False):
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if directory:
        flags |= os.O_DIRECTORY
    try:
        return os.open(name, flags, dir_fd=dirfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):   # ELOOP: a link
            raise stream.UnsafeImage('%s in the LXD image is not a %s'
                                     % (name, 'directory' if directory
                                        else 'regular file'))
        raise


def _read_file(dirfd, name, cap):
    """Bytes of the regular file ``name`` (a path relative to ``dirfd``
    whose every part is opened without following symlinks)."""
    parts = name.split('/')
    fds = []
    try:
        at = dirfd
        for part in parts[:-1]:
            at = _open_nofollow(part, at, directory=True)
            fds.append(at)
        fd = _open_nofollow(parts[-1], at)
        fds.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise stream.UnsafeImage('%s in the LXD image is not a regular '
                                     'file' % name)
        if st.st_size > cap:
            raise stream.UnsafeImage('%s in the LXD image is larger than '
                                     '%d KiB' % (name, cap >> 10))
        with os.fdopen(os.dup(fd), 'rb') as f:
            return f.read(cap + 1)[:cap]
    finally:
        for fd in fds:
            os.close(fd)


def _read_templates(dirfd, templates):
    """Replace each template's file name by its text (capped in total)."""
    try:
        tdir = _open_nofollow('templates', dirfd, directory=True)
    except FileNotFoundError:
        raise stream.UnsafeImage('metadata.yaml names templates but the '
                                 'LXD image has no templates/ directory')
    total = 0
    try:
        for guest_path, spec in templates.items():
            try:
                data = _read_file(tdir, spec['template'], TEMPLATES_MAX)
            except FileNotFoundError:
                raise stream.UnsafeImage(
                    'metadata.yaml names template %r for %s, which is not '
                    'in templates/' % (spec['template'], guest_path))
            total += len(data)
            if total > TEMPLATES_MAX:
                raise stream.UnsafeImage(
                    'the LXD image has more than %d KiB of templates'
                    % (TEMPLATES_MAX >> 10))
            try:
                spec['template'] = data.decode('utf-8')
            except UnicodeDecodeError:
                raise stream.UnsafeImage('template %r is not UTF-8 text'
                                         % spec['template'])
    finally:
        os.close(tdir)


def parse_metadata(text):
    """Facts from metadata.yaml's text; templates still name their files.

    UnsafeImage if it is not YAML, not for this host's architecture, or
    names templates outside the image.
    """
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise stream.UnsafeImage('its metadata.yaml is not valid YAML (%s)'
                                 % _yaml_error(e))
    if not isinstance(meta, dict):
        raise stream.UnsafeImage('its metadata.yaml is not a mapping')
    arch = meta.get('architecture')
    if not arch or not isinstance(arch, str):
        raise stream.UnsafeImage('its metadata.yaml names no architecture')
    host = host_architecture()
    if canonical_architecture(arch) != host:
        raise stream.UnsafeImage(
            'it is an LXD image for %s (metadata.yaml says %r) and this '
            'host is %s' % (canonical_architecture(arch), arch, host))
    return {'architecture': canonical_architecture(arch),
            'properties': _strings(meta.get('properties'), 'properties'),
            'templates': _templates(meta.get('templates'))}


def _yaml_error(error):
    mark = getattr(error, 'problem_mark', None)
    if mark is None or not getattr(error, 'problem', None):
        return str(error).replace('\n', ' ')
    return '%s at line %d, column %d' % (error.problem, mark.line + 1,
                                         mark.column + 1)


def _string(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return '' if value is None else str(value)


def _strings(mapping, what):
    """A {str: str} copy of a YAML mapping of scalars."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise stream.UnsafeImage('metadata.yaml: %s is not a mapping' % what)
    found = {}
    for key, value in mapping.items():
        if isinstance(value, (dict, list)):
            raise stream.UnsafeImage('metadata.yaml: %s %r is not a string'
                                     % (what, key))
        found[_string(key)] = _string(value)
    return found


def _templates(templates):
    """{guest path: spec} of the templates applied on create or start."""
    if templates is None:
        return {}
    if not isinstance(templates, dict):
        raise stream.UnsafeImage('metadata.yaml: templates is not a mapping')
    found = {}
    for path, spec in templates.items():
        if not isinstance(path, str) or not isinstance(spec, dict):
            raise stream.UnsafeImage('metadata.yaml: template %r is not a '
                                     'path with a mapping' % (path,))
        when = spec.get('when') or []
        if isinstance(when, str):
            when = [when]
        if not isinstance(when, list):
            raise stream.UnsafeImage('metadata.yaml: "when" of template '
                                     '%s is not a list' % path)
        when = [_string(w) for w in when]
        if not set(when) & set(TEMPLATE_WHEN):
            continue
        found[_guest_path(path)] = {
            'when': when,
            'create_only': bool(spec.get('create_only', False)),
            'template': _template_name(spec.get('template'), path),
            'properties': _strings(spec.get('properties'),
                                   'properties of template %s' % path),
        }
    return found


def _guest_path(path):
    parts = [p for p in path.split('/') if p not in ('', '.')]
    if not path.startswith('/') or '..' in parts or not parts:
        raise stream.UnsafeImage('metadata.yaml: template target %r is not '
                                 'an absolute path inside the guest' % path)
    return '/' + '/'.join(parts)


def _template_name(name, path):
    parts = name.split('/') if isinstance(name, str) else []
    if not parts or name.startswith('/') or any(
            p in ('', '.', '..') for p in parts):
        raise stream.UnsafeImage('metadata.yaml: template file %r for %s is '
                                 'not a file under templates/' % (name, path))
    return name


# -- rendering templates ----------------------------------------------------

class TemplateError(ValueError):
    """A template uses what :func:`render` does not support."""


_TAG = re.compile(r'\{\{(-?)(.*?)(-?)\}\}|\{%(-?)(.*?)(-?)%\}|\{#.*?#\}',
                  re.S)
_TOKEN = re.compile(r'''\s*(?:
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<op>==|!=|&&|\|\||[()!,|:.])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
)''', re.X | re.S)
_ESCAPE = re.compile(r'\\(.)', re.S)
_ESCAPES = {'n': '\n', 't': '\t', '\\': '\\', '"': '"', "'": "'"}


def _unescape(match):
    return _ESCAPES.get(match.group(1), match.group(0))


def render(text, context):
    """Render an LXD (pongo2) template with ``context``.

    Supported, which is what the templates of the images on
    images.linuxcontainers.org use (hostname, hosts, cloud-init):

    * ``{{ expr }}``; ``{# comments #}``; ``-`` whitespace control;
    * ``{% if expr %}`` ... ``{% elif expr %}`` ... ``{% else %}`` ...
      ``{% endif %}``, nested;
    * expressions: "strings", numbers, true/false, dotted names looked up
      in ``context`` (``container.name``, ``instance.name``,
      ``properties.default``; a missing one is empty),
      ``config_get("key", default)`` (from ``context['config']``, else
      the default), ``==``, ``!=``, ``and``/``&&``, ``or``/``||``,
      ``not``/``!``, parentheses and the ``default:"x"`` filter.

    Anything else (``{% for %}``, other functions or filters) raises
    TemplateError; the caller should then leave that file alone.
    """
    out = []
    frames = []   # per open if: [parent emits, branch emits, taken, else]
    pos, strip_next = 0, False
    for match in _TAG.finditer(text):
        literal = text[pos:match.start()]
        if strip_next:
            literal = literal.lstrip()
        if match.group(1) == '-' or match.group(4) == '-':
            literal = literal.rstrip()
        emitting = all(f[1] for f in frames)
        if emitting:
            out.append(literal)
        pos = match.end()
        strip_next = match.group(3) == '-' or match.group(6) == '-'
        if match.group(2) is not None:
            if emitting:
                out.append(_display(_evaluate(match.group(2), context)))
        elif match.group(5) is not None:
            _statement(match.group(5).strip(), context, frames, emitting)
    if frames:
        raise TemplateError('{% if %} without {% endif %}')
    literal = text[pos:]
    out.append(literal.lstrip() if strip_next else literal)
    return ''.join(out)


def _statement(body, context, frames, emitting):
    word, rest = (body.split(None, 1) + [''])[:2]
    if word == 'if':
        value = emitting and _true(_evaluate(rest, context))
        frames.append([emitting, value, value, False])
    elif word in ('elif', 'else', 'endif') and not frames:
        raise TemplateError('{%% %s %%} without {%% if %%}' % word)
    elif word == 'elif':
        frame = frames[-1]
        if frame[3]:
            raise TemplateError('{% elif %} after {% else %}')
        value = (frame[0] and not frame[2]
                 and _true(_evaluate(rest, context)))
        frame[1], frame[2] = value, frame[2] or value
    elif word == 'else':
        frame = frames[-1]
        frame[1], frame[2], frame[3] = frame[0] and not frame[2], True, True
    elif word == 'endif':
        frames.pop()
    else:
        raise TemplateError('unsupported tag {%% %s %%}' % word)


def _display(value):
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'True' if value else 'False'
    return str(value)


def _true(value):
    return bool(value)


def _tokens(expr):
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match or match.end() == pos:
            raise TemplateError('cannot parse %r' % expr)
        pos = match.end()
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
    return tokens


def _evaluate(expr, context):
    parser = _Expression(_tokens(expr), context)
    value = parser.parse_or()
    if parser.pos != len(parser.tokens):
        raise TemplateError('cannot parse %r' % expr)
    return value


class _Expression:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, tokens, context):
        self.tokens, self.pos, self.context = tokens, 0, context

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (
            None, None)

    def take(self, *values):
        kind, value = self.peek()
        if value in values and kind in ('op', 'name'):
            self.pos += 1
            return value
        return None

    def expect(self, value):
        if not self.take(value):
            raise TemplateError('expected %r' % value)

    def parse_or(self):
        value = self.parse_and()
        while self.take('or', '||'):
            right = self.parse_and()
            value = value if _true(value) else right
        return value

    def parse_and(self):
        value = self.parse_not()
        while self.take('and', '&&'):
            right = self.parse_not()
            value = right if _true(value) else value
        return value

    def parse_not(self):
        if self.take('not', '!'):
            return not _true(self.parse_not())
        return self.parse_compare()

    def parse_compare(self):
        value = self.parse_filtered()
        op = self.take('==', '!=')
        if op:
            right = self.parse_filtered()
            same = _comparable(value) == _comparable(right)
            return same if op == '==' else not same
        return value

    def parse_filtered(self):
        value = self.parse_primary()
        while self.take('|'):
            kind, name = self.peek()
            if kind != 'name' or name != 'default':
                raise TemplateError('unsupported filter %r' % name)
            self.pos += 1
            self.expect(':')
            fallback = self.parse_primary()
            value = value if _true(value) else fallback
        return value

    def parse_primary(self):
        kind, value = self.peek()
        self.pos += 1
        if kind == 'string':
            return _ESCAPE.sub(_unescape, value[1:-1])
        if kind == 'number':
            return float(value) if '.' in value else int(value)
        if kind == 'op' and value == '(':
            inner = self.parse_or()
            self.expect(')')
            return inner
        if kind == 'name':
            if value in ('true', 'True', 'false', 'False'):
                return value.lower() == 'true'
            if value in ('nil', 'None', 'none'):
                return None
            if self.take('('):
                return self.call(value)
            return self.lookup(value)
        raise TemplateError('unexpected %r' % (value,))

    def lookup(self, name):
        value = self.context.get(name)
        while self.take('.'):
            kind, attr = self.peek()
            if kind not in ('name', 'number'):
                raise TemplateError('expected a name after "."')
            self.pos += 1
            value = value.get(attr) if isinstance(value, dict) else None
        return value

    def call(self, name):
        args = []
        if not self.take(')'):
            args.append(self.parse_or())
            while self.take(','):
                args.append(self.parse_or())
            self.expect(')')
        if name != 'config_get' or not 1 <= len(args) <= 2:
            raise TemplateError('unsupported function %s/%d'
                                % (name, len(args)))
        config = self.context.get('config') or {}
        default = args[1] if len(args) == 2 else ''
        return config.get(str(args[0]), default)


def _comparable(value):
    return '' if value is None else value
