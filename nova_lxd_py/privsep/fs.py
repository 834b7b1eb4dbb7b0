"""Privileged file system work, confined to the directories we own."""

import os
import shutil
import subprocess

from oslo_config import cfg

from nova_lxd_py import privsep

CONF = cfg.CONF


def _owned(path):
    """``path`` if it lies strictly inside a directory this driver owns."""
    real = os.path.realpath(path)
    for root in (CONF.lxc.container_path, CONF.lxc.image_cache_path):
        root = os.path.realpath(root)
        if real.startswith(root + os.sep):
            return real
    raise ValueError('%s is outside the directories of nova-lxd-py' % path)


@privsep.sys_admin_pctxt.entrypoint
def make_dir(path: str, uid: int, gid: int, mode: int) -> None:
    """Create one directory owned by uid:gid (the guest's root)."""
    path = _owned(path)
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


@privsep.sys_admin_pctxt.entrypoint
def remove_tree(path: str) -> None:
    """Remove a container or cache directory; no error if it is gone."""
    path = _owned(path)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        raise OSError('could not remove %s' % path)


@privsep.sys_admin_pctxt.entrypoint
def rename(src: str, dst: str) -> None:
    os.rename(_owned(src), _owned(dst))


@privsep.sys_admin_pctxt.entrypoint
def write_file(path: str, data: bytes, uid: int, gid: int,
               mode: int) -> None:
    """Create or replace one regular file owned by uid:gid.

    The last component is never followed if it is a symlink (O_NOFOLLOW);
    ``_owned`` has resolved the others inside our directories.
    """
    _write(_owned(path), os.O_TRUNC, data, uid, gid, mode)


def _write(path, flags, data, uid, gid, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | flags,
                 mode & 0o7777)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode & 0o7777)   # whatever this daemon's umask is
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


@privsep.sys_admin_pctxt.entrypoint
def copy_tree(src: str, dst: str) -> None:
    """``cp -a --reflink=auto`` of a cached image into a container dir."""
    src, dst = _owned(src), _owned(dst)
    os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
    proc = subprocess.run(['cp', '-a', '--reflink=auto', '-T', src, dst],
                          capture_output=True, text=True)
    if proc.returncode:
        shutil.rmtree(dst, ignore_errors=True)
        raise OSError('copying %s failed: %s' % (src, proc.stderr.strip()))


def _checked_relative(rel):
    """``rel`` if it is a plain relative path that stays below its top."""
    parts = rel.split('/') if isinstance(rel, str) else ()
    if not parts or '\0' in rel or os.path.normpath(rel) != rel or \
            rel.startswith('/') or '..' in parts or '.' in parts:
        raise ValueError('not a relative path inside the tree: %r' % (rel,))
    return rel


@privsep.sys_admin_pctxt.entrypoint
def write_tree(path: str, files: dict) -> None:
    """Make directory ``path`` hold exactly ``files`` ({relative path:
    bytes}), owned by root: directories 0755, files 0644, so that an
    unprivileged guest's root, to which host root is nobody, can read them
    and not change them.

    Written next to ``path`` and renamed into place, replacing what was
    there: ``path`` is whole or absent, never half written.
    """
    path = _owned(path)
    for rel in files:
        _checked_relative(rel)
    tmp = path + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.mkdir(tmp)
        os.chmod(tmp, 0o755)
        for rel in sorted(files):
            parent = tmp
            for part in rel.split('/')[:-1]:
                parent = os.path.join(parent, part)
                if not os.path.isdir(parent):
                    os.mkdir(parent)
                    os.chmod(parent, 0o755)
            _write(os.path.join(tmp, rel), os.O_EXCL, files[rel], 0, 0,
                   0o644)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
