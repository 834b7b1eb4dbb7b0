"""A guest account's password, set in a new root before its first start.

Nova gives ``rescue`` a root password for the rescue guest. It is written
into the layer the guest sees over its image before the guest boots, not
set by a tool run inside it: this works for any image with an
``/etc/passwd``, whatever tools it has (Debian's static busybox, for one,
has no ``chpasswd``), and there is no moment when the guest runs with the
image's password. The hash is SHA-512 crypt, which glibc and musl guests
both verify; only the hash crosses into the privileged daemon.
"""

import os
import stat
import time

from oslo_utils import secretutils

from nova_lxd_py import privsep
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import rootfs as rootfs_tree

MAX_FILE_BYTES = 1 << 20
# (guest file, True if it is a shadow file): the first with the user wins.
FILES = (('/etc/shadow', True), ('/etc/passwd', False))


def hash_password(password):
    return secretutils.crypt_password(
        password, secretutils.crypt_mksalt('SHA-512'))


def with_password(text, user, hashed, shadow, today):
    """``text`` of a passwd or shadow file with ``user``'s password set;
    None if the file has no line for ``user``.

    In a shadow file the date of the last change becomes ``today`` (days
    since 1970): 0 there would force a change at the next login.
    """
    lines = text.split('\n')
    for i, line in enumerate(lines):
        fields = line.split(':')
        if fields[0] != user or len(fields) < (9 if shadow else 7):
            continue
        fields[1] = hashed
        if shadow:
            fields[2] = str(today)
        lines[i] = ':'.join(fields)
        return '\n'.join(lines)
    return None


def _guest_file(image_rootfs, guest_path):
    """(host path in the image, path relative to its root) of a regular
    file, links followed inside the image; None if there is none."""
    path = rootfs_tree.resolve_in_root(image_rootfs, guest_path)
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
        return None
    return path, os.path.relpath(path, image_rootfs)


def _mirror_dirs(image_rootfs, top, relative):
    """The directories above ``relative`` in ``top``, as in the image;
    False if one of them is something else than a directory in ``top``."""
    parts = relative.split(os.sep)[:-1]
    for i in range(1, len(parts) + 1):
        mine = os.path.join(top, *parts[:i])
        if os.path.lexists(mine):
            if os.path.islink(mine) or not os.path.isdir(mine):
                return False
            continue
        st = os.lstat(os.path.join(image_rootfs, *parts[:i]))
        fs.make_dir(mine, st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return True


@privsep.sys_admin_pctxt.entrypoint
def set_password(image_rootfs: str, top: str, user: str,
                 hashed: str) -> str:
    """Set ``user``'s password hash in a root built on ``image_rootfs``.

    ``top`` is the new root's writable layer (an overlay upper directory,
    or the root itself for a copy), fresh from the image: the image's file
    is read and the changed copy written into ``top`` with the same owner
    and mode. Returns the guest file changed, '' if the image has no line
    for ``user`` in either file.
    """
    image_rootfs, top = fs._owned(image_rootfs), fs._owned(top)
    today = int(time.time() // 86400)
    for guest_path, shadow in FILES:
        found = _guest_file(image_rootfs, guest_path)
        if found is None:
            continue
        path, relative = found
        with open(path, 'rb') as f:
            text = f.read(MAX_FILE_BYTES).decode('utf-8', 'surrogateescape')
        changed = with_password(text, user, hashed, shadow, today)
        if changed is None or not _mirror_dirs(image_rootfs, top, relative):
            continue
        st = os.lstat(path)
        fs.write_file(os.path.join(top, relative),
                      changed.encode('utf-8', 'surrogateescape'),
                      st.st_uid, st.st_gid, st.st_mode & 0o7777)
        return '/' + relative
    return ''
