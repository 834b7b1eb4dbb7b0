"""OCI image layers flattened, in order, into one root file system.

Each layer is streamed through the member checker into its own scratch
directory in the guest's user namespace (owners land shifted), then moved
onto the root file system with renames: whiteouts (``.wh.<name>``) first
delete from the lower layers, and an opaque marker (``.wh..wh..opq``)
empties the lower directory; then the layer's entries replace or merge
into theirs. No step follows a symlink, so a layer cannot reach out of the
tree through a link an earlier layer made.
"""

import os
import shutil
import stat
import tarfile

from nova_lxd_py.storage.formats import stream

UnsafeImage = stream.UnsafeImage

WHITEOUT = '.wh.'
OPAQUE = '.wh..wh..opq'


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


def flatten(image, target, workdir):
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
