"""Root-disk backends, chosen by ``[lxc] root_disk_backend``.

A backend turns a cached image root file system into the root of one
container. Its interface:

``create(container_dir, image_rootfs, uid, gid) -> str``
    Prepare the container's root and return the ``lxc.rootfs.path`` value.
    ``uid``/``gid`` are the host ids of the guest's root.
``writable_root(container_dir) -> str``
    Host directory where a file written before the first start shows in
    the guest's root (LXD templates are rendered there).
``destroy(container_dir)``
    Release anything ``create`` made outside ``container_dir`` (the
    directory itself is removed by the caller).
"""

from nova_lxd_py.storage.backends import overlay

BACKENDS = {overlay.OverlayBackend.name: overlay.OverlayBackend}


def get(name):
    return BACKENDS[name]()


def image_of(rootfs_path):
    """The cached image tree an ``lxc.rootfs.path`` value is built on.

    For overlay (``overlay:<image>:<upper>``) the lower layer; a container
    with a root of its own uses no cached tree (None).
    """
    if rootfs_path.startswith('overlay:'):
        return rootfs_path.split(':')[1]
    return None
