"""dir: a full copy of the cached image per instance.

With a root disk size the copy is made by mkfs.ext4 itself into the
instance's size-limited file system (see :mod:`disk`), owners and modes
kept, and liblxc uses its mount point as the root directory. Without one
(``root_gb`` 0) the tree is copied with ``cp -a --reflink=auto``, which
shares the data blocks on a file system that can (btrfs, xfs with reflink)
and copies them elsewhere.

Costs a copy per instance, but the instance no longer depends on the cache
entry: it can be removed, and the guest may change anything in place.
"""

import os

from nova_lxd_py.privsep import fs
from nova_lxd_py.storage.backends import disk


class DirBackend:
    name = 'dir'

    def _root(self, container_dir):
        if os.path.exists(disk.image_path(container_dir)):
            return disk.mount_point(container_dir)
        return os.path.join(container_dir, 'rootfs')

    def create(self, container_dir, image_rootfs, uid, gid, size_gb=0):
        if size_gb:
            disk.make(container_dir, size_gb, uid, gid, image_rootfs)
            disk.mount(container_dir)
        else:
            fs.copy_tree(image_rootfs, self._root(container_dir))
        return self._root(container_dir)

    def activate(self, container_dir):
        if os.path.exists(disk.image_path(container_dir)):
            disk.mount(container_dir)

    def writable_root(self, container_dir):
        return self._root(container_dir)

    def moved_entries(self, container_dir):
        if os.path.exists(disk.image_path(container_dir)):
            return [os.path.basename(disk.image_path(container_dir))]
        return [os.path.basename(self._root(container_dir))]

    def adopt(self, container_dir, image_rootfs, uid, gid, size_gb=0):
        if os.path.exists(disk.image_path(container_dir)):
            if size_gb:
                disk.grow(container_dir, size_gb)
            disk.mount(container_dir)
        return self._root(container_dir)

    def deactivate(self, container_dir):
        disk.unmount(container_dir)

    def destroy(self, container_dir):
        disk.unmount(container_dir)
