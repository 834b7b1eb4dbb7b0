"""overlayfs: a writable upper layer per instance over the cached image.

liblxc mounts the overlay inside the container's own mount namespace at
start (``overlay:<lower>:<upper>``). The cached image is already shifted to
the guest's id range, so the overlay needs no idmapped mount.

With a root disk size (the flavor's ``root_gb``), the upper and work
directories live on the instance's size-limited file system (see
:mod:`disk`): the guest can change or add at most that much. Without one
(``root_gb`` 0) they are plain directories in the container's directory.
"""

import os

from nova_lxd_py.privsep import fs
from nova_lxd_py.storage.backends import disk


class OverlayBackend:
    name = 'overlay'

    def _top(self, container_dir):
        if os.path.exists(disk.image_path(container_dir)):
            return disk.mount_point(container_dir)
        return container_dir

    def create(self, container_dir, image_rootfs, uid, gid, size_gb=0):
        for path in (container_dir, image_rootfs):
            if ':' in path:
                raise ValueError('overlay paths cannot contain ":": %s' % path)
        if size_gb:
            disk.make(container_dir, size_gb, uid, gid, '')
            disk.mount(container_dir)
        top = self._top(container_dir)
        upper = os.path.join(top, 'upper')
        # liblxc puts the overlay work dir next to the upper dir.
        for sub in (upper, os.path.join(top, 'work')):
            fs.make_dir(sub, uid, gid, 0o755)
        return 'overlay:%s:%s' % (image_rootfs, upper)

    def activate(self, container_dir):
        """Before a start: the instance's file system is mounted."""
        if os.path.exists(disk.image_path(container_dir)):
            disk.mount(container_dir)

    def writable_root(self, container_dir):
        """Host directory whose files the guest sees over the image's."""
        return os.path.join(self._top(container_dir), 'upper')

    def moved_entries(self, container_dir):
        """What a move to another host takes: the disk, or the layer."""
        if os.path.exists(disk.image_path(container_dir)):
            return [os.path.basename(disk.image_path(container_dir))]
        return ['upper', 'work']

    def adopt(self, container_dir, image_rootfs, uid, gid, size_gb=0):
        """The root of an instance whose files were moved here (resize,
        migration): its disk grown to ``size_gb`` and mounted."""
        if os.path.exists(disk.image_path(container_dir)):
            if size_gb:
                disk.grow(container_dir, size_gb)
            disk.mount(container_dir)
        return 'overlay:%s:%s' % (image_rootfs,
                                  self.writable_root(container_dir))

    def deactivate(self, container_dir):
        """Before a move: nothing of the root stays mounted."""
        disk.unmount(container_dir)

    def destroy(self, container_dir):
        disk.unmount(container_dir)
