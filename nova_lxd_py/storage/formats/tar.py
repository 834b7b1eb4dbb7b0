"""Root file system tarballs (tar, tar.gz, tar.xz, tar.bz2).

Members are checked before anything is written: no absolute names, no
``..``, no links that leave the tree, no device nodes (liblxc provides
/dev). Owners are shifted into the guest's id range while unpacking, so the
cached tree needs no chown afterwards and no container start needs one.
"""

import os
import tarfile

from nova_lxd_py import privsep

NAME = 'tar'
# gzip, xz, bzip2 magic numbers; a plain tar has 'ustar' at offset 257.
_COMPRESSED = (b'\x1f\x8b', b'\xfd7zXZ\x00', b'BZh')


def detect(head):
    """True if the first 512 bytes look like a (compressed) tarball."""
    return head.startswith(_COMPRESSED) or head[257:262] == b'ustar'


class UnsafeMember(ValueError):
    pass


def _through_symlink(path, symlinks):
    parts = path.split('/')
    return any('/'.join(parts[:i]) in symlinks for i in range(1, len(parts)))


def _check(member, symlinks):
    """True to unpack ``member``, False to skip it; UnsafeMember to refuse.

    Symlinks stay as they are (they resolve inside the guest), but nothing
    is ever written or hard-linked through one, so the host never follows a
    link that the image chose.
    """
    name = member.name
    if name.startswith('/') or '..' in name.split('/'):
        raise UnsafeMember('unsafe path %r' % name)
    if _through_symlink(name, symlinks) or (
            name in symlinks and not member.issym()):
        raise UnsafeMember('%r is written through a symlink' % name)
    if member.isdev():
        return False
    if member.islnk():
        # _normalise, not lstrip('./'): that turned '../x' into 'x' and
        # '.profile' into 'profile'.
        target = _normalise(member.linkname)
        if (target.startswith('/') or '..' in target.split('/')
                or _through_symlink(target, symlinks) or target in symlinks):
            raise UnsafeMember('hard link %r leaves the tree' % name)
        member.linkname = target
    if member.issym():
        symlinks.add(name)
    return True


# Every member is checked above. Python before 3.11.4 (Debian 12 has 3.11.2)
# knows no extraction filters; later ones warn unless told to trust them.
TRUSTED = ({'filter': 'fully_trusted'}
           if hasattr(tarfile, 'fully_trusted_filter') else {})


def _normalise(name):
    while name.startswith('./'):
        name = name[2:]
    return name.rstrip('/') or '.'


@privsep.sys_admin_pctxt.entrypoint
def unpack(archive: str, dest: str, uid_shift: int, gid_shift: int) -> None:
    """Unpack ``archive`` into the empty directory ``dest``."""
    with tarfile.open(archive, 'r:*') as tar:
        members, symlinks = [], set()
        for member in tar:
            member.name = _normalise(member.name)
            if _check(member, symlinks):
                member.uid += uid_shift
                member.gid += gid_shift
                members.append(member)
        tar.extractall(dest, members=members, numeric_owner=True,
                       **TRUSTED)
    root = os.lstat(dest)
    if root.st_uid == 0 and uid_shift:
        os.chown(dest, uid_shift, gid_shift)
