"""Root-disk backends, chosen by ``[lxc] root_disk_backend``.

A backend turns a cached image root file system into the root of one
container. Its interface:

``create(container_dir, image_rootfs, uid, gid, size_gb=0) -> str``
    Prepare the container's root and return the ``lxc.rootfs.path`` value.
    ``uid``/``gid`` are the host ids of the guest's root; ``size_gb`` (the
    flavor's root_gb, 0: none) limits what the guest can write.
``activate(container_dir)``
    Before every start: whatever the root needs on the host is in place
    (e.g. its file system mounted again after a host reboot).
``writable_root(container_dir) -> str``
    Host directory where a file written before the first start shows in
    the guest's root (LXD templates are rendered there).
``deactivate(container_dir)``
    Before the instance's files move to another host (resize, migration):
    nothing of the root stays mounted on the host.
``moved_entries(container_dir) -> [str]``
    The names in ``container_dir`` that hold the root (disk image or tree)
    and must move with the instance.
``adopt(container_dir, image_rootfs, uid, gid, size_gb=0) -> str``
    After a move: the ``lxc.rootfs.path`` of the root that arrived in
    ``container_dir``, grown to ``size_gb`` (a resize's new root_gb).
``destroy(container_dir)``
    Release anything ``create`` made outside ``container_dir`` (the
    directory itself is removed by the caller).
"""

from nova_lxd_py.storage.backends import btrfs
from nova_lxd_py.storage.backends import dir as dir_backend
from nova_lxd_py.storage.backends import overlay

BACKENDS = {overlay.OverlayBackend.name: overlay.OverlayBackend,
            dir_backend.DirBackend.name: dir_backend.DirBackend,
            btrfs.BtrfsBackend.name: btrfs.BtrfsBackend}


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
