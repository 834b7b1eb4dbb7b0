"""overlayfs: a writable upper layer per instance over the cached image.

liblxc mounts the overlay inside the container's own mount namespace at
start (``overlay:<lower>:<upper>``), so no mount is ever left on the host,
not even after a crash. The cached image is already shifted to the guest's
id range, so the overlay needs no idmapped mount.
"""

import os

from nova_lxd_py.privsep import fs


class OverlayBackend:
    name = 'overlay'

    def create(self, container_dir, image_rootfs, uid, gid):
        for path in (container_dir, image_rootfs):
            if ':' in path:
                raise ValueError('overlay paths cannot contain ":": %s' % path)
        upper = os.path.join(container_dir, 'upper')
        # liblxc puts the overlay work dir next to the upper dir.
        for sub in (upper, os.path.join(container_dir, 'work')):
            fs.make_dir(sub, uid, gid, 0o755)
        return 'overlay:%s:%s' % (image_rootfs, upper)

    def writable_root(self, container_dir):
        """Host directory whose files the guest sees over the image's."""
        return os.path.join(container_dir, 'upper')

    def destroy(self, container_dir):
        pass
