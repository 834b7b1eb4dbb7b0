"""Rescue and unrescue: a rescue system booted over an instance's root.

The rescue image (or the instance's own, as Nova chooses) boots under the
instance's name, id map and limits, with the instance's root read-write at
config.RESCUE_MOUNT; unrescue boots the instance on its own root again.
Part of LXCDriver (a mixin: it uses the driver's image cache, root-disk
backend, templates, power and start methods).
"""

import os

from nova import exception as nova_exception
from nova import objects
from oslo_log import log as logging
from oslo_utils import excutils

from nova_lxd_py import conf
from nova_lxd_py import exception
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import accounts
from nova_lxd_py.virt import config
from nova_lxd_py.virt import configdrive
from nova_lxd_py.virt import container
from nova_lxd_py.virt import templates

CONF = conf.CONF
LOG = logging.getLogger(__name__)


class RescueMixin:

    # The rescue container's own root, in the instance's container dir.
    RESCUE_DIR = 'rescue'

    def rescue(self, context, instance, network_info, image_meta,
               rescue_password, block_device_info, share_info):
        """Boot the rescue image under the instance's name, with the
        instance's root read-write at config.RESCUE_MOUNT (/mnt/rescue).

        The instance's root is left as it is and its config put aside
        (container.keep_config). The rescue container keeps everything of
        that config (name, id map, limits, console log) but the root: the
        backend makes one from the rescue image (or the instance's own
        image, as Nova chooses) in ``<container dir>/rescue``. If anything
        fails, the instance is left stopped on its own config.
        """
        if container.state(instance.uuid)[0] == 'UNDEFINED':
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        if not image_meta.obj_attr_is_set('id'):
            # No image named: the instance's own, as Nova's default.
            image_meta = objects.ImageMeta.from_dict(
                {'id': instance.image_ref})
        # The compute manager has already asked the guest to shut down.
        self.power_off(instance)
        # The rescue container keeps the instance's ports (its config's
        # network lines).
        self.plug_vifs(instance, network_info)
        own = container.keep_config(instance.uuid)
        try:
            self._start_rescue(context, instance, image_meta, own,
                               rescue_password)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._leave_rescue(instance)
        LOG.info('Rescue container started from image %(image)s, the '
                 'instance\'s root at %(path)s',
                 {'image': image_meta.id, 'path': config.RESCUE_MOUNT},
                 instance=instance)

    def _start_rescue(self, context, instance, image_meta, own, password):
        # The instance's id map, not today's: its files are owned by it.
        idmap = config.idmap_of(own)
        image = self._images.get(context, instance, image_meta, idmap,
                                 max_bytes=instance.flavor.root_gb << 30)
        rdir = self._rescue_dir(instance)
        self._remove_rescue_root(rdir)   # left by an attempt that failed
        owner = (idmap.uid_start, idmap.gid_start) if idmap else (0, 0)
        # The rescue system's own writes are held to the flavor's root
        # disk size as well (a disk of its own, gone with the rescue).
        rootfs = self._backend.create(rdir, image.rootfs, *owner,
                                      size_gb=instance.flavor.root_gb)
        hostname = (config.config_values(own, 'lxc.uts.name') or
                    [config.guest_hostname(instance.hostname, 'instance')])
        templates.render(self._backend.writable_root(rdir), image, owner,
                         hostname[0], instance)
        if password:
            self._set_rescue_password(instance, image, rdir, password)
        cdir = container.container_dir(instance.uuid)
        container.define(instance.uuid, config.rescue_config(
            own, rootfs, image.init_kind, cdir,
            staying=[configdrive.host_path(cdir)]))
        self._backend.activate(rdir)
        self._start(instance)

    def _set_rescue_password(self, instance, image, rdir, password):
        changed = accounts.set_password(
            image.rootfs, self._backend.writable_root(rdir), 'root',
            accounts.hash_password(password))
        if changed:
            LOG.info('Root password of the rescue guest set in %s', changed,
                     instance=instance)
        else:
            LOG.warning('The rescue image has no root account in '
                        '/etc/shadow or /etc/passwd: the rescue password '
                        'was not set', instance=instance)

    def unrescue(self, context, instance):
        """Stop the rescue container and start the instance on its own
        root, with whatever the rescue guest changed in it.

        The rescue guest is asked to shut down first (Nova's
        ``shutdown_timeout``). Safe to call again after a failure.
        """
        if container.state(instance.uuid)[0] == 'UNDEFINED':
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        if container.kept_config(instance.uuid):
            self.power_off(instance, CONF.shutdown_timeout,
                           CONF.compute.shutdown_retry_interval)
            self._leave_rescue(instance)
        else:
            self._remove_rescue_root(self._rescue_dir(instance))
        self.power_on(context, instance, None)
        LOG.info('Rescue ended: the instance runs on its own root again',
                 instance=instance)

    def _leave_rescue(self, instance):
        """Stop the container, give it back its own config and remove the
        rescue root; the instance's root is untouched."""
        if not container.stop(instance.uuid):
            raise exception.ContainerError(name=instance.uuid,
                                           reason='it did not stop')
        container.restore_config(instance.uuid)
        self._remove_rescue_root(self._rescue_dir(instance))

    def _rescue_dir(self, instance):
        return os.path.join(container.container_dir(instance.uuid),
                            self.RESCUE_DIR)

    def _remove_rescue_root(self, rdir):
        self._backend.destroy(rdir)
        fs.remove_tree(rdir)
