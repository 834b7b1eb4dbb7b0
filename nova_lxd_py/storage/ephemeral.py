"""Ephemeral disks: the flavor's ``ephemeral_gb`` and ephemeral block
device mappings, as file systems mounted in the guest.

Each is an ext4 file system of its size in a sparse file of the container's
directory (see :mod:`backends.disk`), loop-mounted on the host while the
instance exists and bind-mounted into the guest: the first at /mnt (where
cloud-init mounts ``ephemeral0``), the others at ``/media/ephemeral<N>``
(beside the first rather than inside it). They are made with the instance
and removed with it.
"""

import os

from nova.virt import driver as nova_driver
from oslo_log import log as logging

from nova_lxd_py.storage.backends import disk

LOG = logging.getLogger(__name__)
FIRST_PATH = '/mnt'
OTHER_PATH = '/media/ephemeral%d'


def wanted(instance, block_device_info):
    """[(name, size_gb)] of the instance's ephemeral disks, in order.

    Nova's block device mappings when it passed them, else the flavor's
    ephemeral_gb as one disk (a driver called without mappings).
    """
    ephemerals = nova_driver.block_device_info_get_ephemerals(
        block_device_info)
    if ephemerals:
        disks = []
        for i, eph in enumerate(ephemerals):
            fmt = eph.get('guest_format')
            if fmt and fmt not in ('ext4', 'ext3', 'ext2'):
                LOG.warning('Ephemeral disk %(i)d asks for %(fmt)s; '
                            'containers get ext4', {'i': i, 'fmt': fmt},
                            instance=instance)
            disks.append(('ephemeral%d' % i, int(eph.get('size') or 0)))
        return [d for d in disks if d[1] > 0]
    size = instance.flavor.ephemeral_gb or 0
    return [('ephemeral0', size)] if size else []


def guest_path(name):
    index = int(name[len('ephemeral'):])
    return FIRST_PATH if index == 0 else OTHER_PATH % index


def create(container_dir, disks, uid, gid):
    """Make and mount the disks; [(host dir, guest path)] to bind-mount."""
    for name, size_gb in disks:
        disk.make(container_dir, size_gb, uid, gid, '', name)
        disk.mount(container_dir, name)
    return mounts(container_dir)


def mounts(container_dir):
    return [(disk.mount_point(container_dir, name), guest_path(name))
            for name in disk.names(container_dir)]


def activate(container_dir):
    for name in disk.names(container_dir):
        disk.mount(container_dir, name)


def moved_entries(container_dir):
    """The disk images a move to another host takes."""
    return [os.path.basename(disk.image_path(container_dir, name))
            for name in disk.names(container_dir)]


def adopt(container_dir, disks, uid, gid):
    """After a move: the disks that arrived, grown to their new sizes (a
    resize), and those the new flavor adds, made; all mounted."""
    for name, size_gb in disks:
        if os.path.exists(disk.image_path(container_dir, name)):
            disk.grow(container_dir, size_gb, name)
        else:
            disk.make(container_dir, size_gb, uid, gid, '', name)
    activate(container_dir)
    return mounts(container_dir)


def destroy(container_dir):
    for name in disk.names(container_dir):
        disk.unmount(container_dir, name)
