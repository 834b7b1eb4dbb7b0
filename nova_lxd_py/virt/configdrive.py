"""Config drive: Nova's instance metadata as a directory tree the guest
reads at /config-drive.

A container has no block device to carry an ISO (and this driver's hosts
may lack iso9660): the files Nova's metadata builder gives a config drive
(what libvirt's ISO holds) are written to ``<container dir>/config-drive``
and bind mounted read-only at /config-drive, the directory cloud-init's
ConfigDrive datasource (and its ds-identify) looks at besides its seed.
Built at spawn, as libvirt builds its drive; removed with the container
directory.
"""

import os

from nova.api.metadata import base as instance_metadata
from nova.virt import configdrive as nova_configdrive
from oslo_log import log as logging

from nova_lxd_py import exception
from nova_lxd_py.privsep import fs

LOG = logging.getLogger(__name__)

DIR_NAME = 'config-drive'
GUEST_PATH = '/config-drive'
# What a guest's init finds as product_name in its environment: cloud-init
# takes an init with exactly this value for an OpenStack guest (its
# OpenStack datasource then asks the metadata service), as it takes the
# SMBIOS product name libvirt gives a VM.
PRODUCT_NAME = 'OpenStack Nova'


def host_path(instance_dir):
    return os.path.join(instance_dir, DIR_NAME)


def build(instance, injected_files, admin_password, network_info):
    """The config drive's files ({path: bytes}), or None when the instance
    needs none (``configdrive.required_by``: the server's config_drive,
    ``force_config_drive`` or the image's ``img_config_drive``).

    Touches nothing on the host: spawn calls it before making anything.
    Injected files go into the drive (openstack/content), as Nova's
    metadata lays them out, never into the guest's root.
    """
    if not nova_configdrive.required_by(instance):
        return None
    extra_md = {'admin_pass': admin_password} if admin_password else {}
    try:
        metadata = instance_metadata.InstanceMetadata(
            instance, content=injected_files or [], extra_md=extra_md,
            network_info=network_info)
        files = {path: data.encode() if isinstance(data, str) else data
                 for path, data in metadata.metadata_for_config_drive()}
    except (ValueError, TypeError) as e:   # undecodable user data, files
        raise exception.ConfigDriveInvalid(instance_uuid=instance.uuid,
                                           reason=e)
    LOG.info('Config drive: %(count)d files, %(size)d bytes (%(injected)d '
             'injected files)', {'count': len(files),
                                 'size': sum(len(d) for d in files.values()),
                                 'injected': len(injected_files or ())},
             instance=instance)
    return files


def write(instance, instance_dir, files):
    """Write ``files`` (from build) under the container directory; return
    the (host directory, guest path) mounts for the container's config:
    one, or none when ``files`` is None.
    """
    if files is None:
        return []
    path = host_path(instance_dir)
    try:
        fs.write_tree(path, files)
    except (OSError, ValueError) as e:
        raise exception.ConfigDriveBuildFailed(instance_uuid=instance.uuid,
                                               path=path, reason=e)
    LOG.info('Config drive written to %(path)s; the guest sees it read-only '
             'at %(guest)s', {'path': path, 'guest': GUEST_PATH},
             instance=instance)
    return [(path, GUEST_PATH)]
