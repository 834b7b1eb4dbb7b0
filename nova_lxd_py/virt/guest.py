"""A guest's definition on this host, from its instance and image.

LXCDriver holds one ``Guests`` and asks it for everything that turns an
instance into a defined (not yet started) container: the cached image
with the id map and security the flavor asks for, the root disk and
ephemeral disks, the first-boot templates and the liblxc config. Spawn
uses all of it; a cold move (``virt/migration.py``) reuses the image and
config parts for disks that arrived from another host.

What it may touch: the image cache, the root-disk backend and the
instance's own directory; never a running guest.
"""

import os

from oslo_log import log as logging

from nova_lxd_py import conf
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import ephemeral
from nova_lxd_py.virt import config
from nova_lxd_py.virt import configdrive
from nova_lxd_py.virt import container
from nova_lxd_py.virt import host
from nova_lxd_py.virt import templates

CONF = conf.CONF
LOG = logging.getLogger(__name__)


class Guests(object):

    def __init__(self, backend, image_cache):
        self._backend = backend
        self._images = image_cache
        # Set by the driver's host check; read from the host if unset.
        self.cgroup_version = None

    def setup(self, context, instance, image_meta):
        """(cached image, idmap or None, security) for the instance's
        flavor and image, fetching the image if this host lacks it."""
        security = config.security_from_flavor(
            instance.flavor.extra_specs, CONF.lxc.allow_privileged,
            CONF.lxc.allow_nesting)
        idmap = None if security.privileged else host.idmap()
        image = self._images.get(context, instance, image_meta, idmap,
                                 max_bytes=instance.flavor.root_gb << 30)
        return image, idmap, security

    def define(self, instance, image, idmap, security,
               block_device_info=None, network_info=(), drive=None):
        """Root disk, first-boot files, ephemeral disks and config."""
        cdir = container.container_dir(instance.uuid)
        owner = (idmap.uid_start, idmap.gid_start) if idmap else (0, 0)
        rootfs = self._backend.create(cdir, image.rootfs, *owner,
                                      size_gb=instance.flavor.root_gb)
        hostname = config.guest_hostname(instance.hostname, 'instance')
        templates.render(self._backend.writable_root(cdir), image, owner,
                         hostname, instance)
        mounts = ephemeral.create(
            cdir, ephemeral.wanted(instance, block_device_info), *owner)
        self.write_config(instance, image, idmap, security, rootfs, mounts,
                          network_info, drive)

    def write_config(self, instance, image, idmap, security, rootfs,
                     mounts, network_info=(), drive=None):
        """The container's liblxc config from the instance's flavor."""
        cdir = container.container_dir(instance.uuid)
        hostname = config.guest_hostname(instance.hostname, 'instance')
        limits = config.limits_from_flavor(
            instance.flavor, host.cpus(), CONF.lxc.pids_max, instance.uuid,
            swap_accounting=self._swap_accounting(instance))
        text = config.build(
            instance_name=instance.name,
            hostname=hostname, rootfs=rootfs, idmap=idmap,
            security=security, limits=limits,
            cgroup_version=self.cgroup_version or host.cgroup_version(),
            init_kind=image.init_kind,
            console_log=os.path.join(cdir, container.CONSOLE_LOG),
            console_size_kb=CONF.lxc.console_log_size_kb,
            lxcfs_path=CONF.lxc.lxcfs_path if host.lxcfs_active() else '',
            seccomp_profile=self._seccomp_profile(cdir), mounts=mounts,
            guest_nics=config.nics(network_info),
            readonly_mounts=configdrive.write(instance, cdir, drive),
            environment=[('product_name', configdrive.PRODUCT_NAME)])
        container.define(instance.uuid, text)

    def _seccomp_profile(self, cdir):
        """The seccomp policy file for a container ('' for none).

        ``[lxc] seccomp_profile``, plus the backend's own rules when it has
        some (in a copy in the container's directory).
        """
        base = CONF.lxc.seccomp_profile
        base = base if base and os.path.exists(base) else ''
        extra = getattr(self._backend, 'seccomp_rules', ())
        if not extra:
            return base
        text = '2\ndenylist\n'
        if base:
            with open(base) as f:
                text = f.read().rstrip('\n') + '\n'
        path = os.path.join(cdir, 'seccomp')
        fs.write_file(path, (text + '[all]\n' + '\n'.join(extra) +
                             '\n').encode(), 0, 0, 0o644)
        return path

    @staticmethod
    def _swap_accounting(instance):
        """Whether the flavor's swap can be enforced; logs what it means."""
        swap = host.swap_accounting()
        if instance.flavor.swap and swap:
            LOG.info('Flavor swap of %d MB: a container has no swap device; '
                     'it may use that much of the host\'s swap (memory+swap '
                     'cgroup limit).', instance.flavor.swap,
                     instance=instance)
        elif instance.flavor.swap:
            LOG.warning('Flavor swap of %d MB not enforced: this host\'s '
                        'memory cgroup does not account swap (boot with '
                        'swapaccount=1 on cgroup v1).', instance.flavor.swap,
                        instance=instance)
        return swap
