"""The metadata.yaml of an LXD or Incus image, and its templates' text.

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

    with each template's text in place of its file name;
    :func:`lxd_templates.render` turns one into the file's content at spawn
    time.

Nothing of the image is read through a symlink: ``metadata.yaml``,
``templates/`` and the template files are opened without following links,
and must be regular files (directories for ``templates/``).
"""

import errno
import os
import stat

import yaml

from nova_lxd_py.storage.formats import stream

METADATA = 'metadata.yaml'
METADATA_MAX = 1 << 20      # metadata.yaml
TEMPLATES_MAX = 1 << 20     # the text of all the templates kept
TEMPLATE_WHEN = ('create', 'start')

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


# -- reading the unpacked files, never through a link ------------------------

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
