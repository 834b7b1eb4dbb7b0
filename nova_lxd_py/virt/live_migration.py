"""Live migration: a running guest checkpointed here, restored there.

LXCDriver holds one ``LiveMigrations`` and hands Nova's live migration
calls to it. A move, in the order Nova makes the calls:

- ``check_destination`` (destination): this host can restore a guest
  (a working CRIU) and uses the same root-disk backend; the answer (a
  ``LibvirtLiveMigrateData``, the object Nova's conductor and compute
  managers carry for any driver that copies disks) names this host's
  address for the transfer and says that nothing is shared, so Nova
  rolls back the destination and cleans the source as for a block
  migration.
- ``check_source`` (source): the guest is running, not paused, and this
  host can checkpoint it.
- ``pre_live_migration`` (destination): the image is in this host's cache
  (its path must be the source's, the guest's config names it), the
  ports are plugged (Nova waits for Neutron's vif-plugged events of the
  destination's port bindings); nothing else: the guest's directory
  arrives whole.
- ``live_migration`` (source): CRIU checkpoints the guest (frozen, then
  stopped), its disks are unmounted, its directory is set aside as
  ``<container_path>/.live/<uuid>`` and sent over ssh to
  ``nova_lxd_py.virt.arrive`` on the destination, which unpacks and
  restores it (``transfer.arrival_*``; started and ready before the
  checkpoint, so its start-up is not downtime). Then Nova's
  ``post_method`` moves the instance to the destination. Any failure
  restores the guest here from the checkpoint (the same processes; a
  fresh start only if that fails too), and Nova's ``recover_method``
  rolls back the destination.
- ``cleanup_source`` (source, from ``cleanup`` after the move): the
  directory set aside goes. ``rollback_destination`` (destination): a
  guest that did not start here is removed, its ports unplugged.

The guest is down from its checkpoint to its restore: a copy of its root
while it runs and post-copy of its memory are not done yet.

What a method here may touch: the instance's directory and the one set
aside on this host, the destination through ``transfer``, the guest
through ``checkpoint`` and ``container``, the root-disk backend, and the
guest's start only through the driver's ``start``.
"""

import os
import time

from nova import exception as nova_exception
from nova import objects
from nova.objects import migrate_data as migrate_data_obj
from oslo_log import log as logging

from nova_lxd_py import conf
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import backends
from nova_lxd_py.storage.backends import disk
from nova_lxd_py.storage import ephemeral
from nova_lxd_py.storage import transfer
from nova_lxd_py.vif import driver as vifs
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import config as lxc_config
from nova_lxd_py.virt import container

CONF = conf.CONF
LOG = logging.getLogger(__name__)

ASIDE = '.live'


def aside_dir(name):
    return os.path.join(CONF.lxc.container_path, ASIDE,
                        os.path.basename(container.container_dir(name)))


def _field(data, name, default=None):
    """A field of a migrate data object, or ``default`` while unset."""
    return getattr(data, name) if data.obj_attr_is_set(name) else default


def _precheck(reason):
    return nova_exception.MigrationPreCheckError(reason=reason)


class LiveMigrations:

    def __init__(self, backend, checkpoints, guest_setup, start):
        """``guest_setup(context, instance, image_meta)`` -> (image, idmap,
        security), as a spawn prepares the image; ``start(instance)``."""
        self._backend = backend
        self._checkpoints = checkpoints
        self._guest_setup = guest_setup
        self._start = start

    # -- checks --------------------------------------------------------

    def check_destination(self, context, instance):
        if not self._checkpoints.available:
            raise _precheck('the destination %s cannot restore guests: %s'
                            % (CONF.host, self._checkpoints.reason))
        data = migrate_data_obj.LibvirtLiveMigrateData()
        data.target_connect_addr = CONF.my_ip
        data.image_type = self._backend.name
        data.is_shared_instance_path = False
        data.is_shared_block_storage = False
        return data

    def check_source(self, context, instance, dest_check_data):
        name = instance.uuid
        lxc_state = container.state(name)[0]
        if lxc_state != 'RUNNING':
            raise _precheck('the guest is %s; only a running guest moves '
                            'live (unpause it first)' % lxc_state.lower())
        if not self._checkpoints.available:
            raise _precheck('the source %s cannot checkpoint guests: %s'
                            % (CONF.host, self._checkpoints.reason))
        backend = _field(dest_check_data, 'image_type', self._backend.name)
        if backend != self._backend.name:
            raise _precheck('the destination keeps roots with the %s '
                            'backend, this host with %s' % (
                                backend, self._backend.name))
        if os.path.lexists(aside_dir(name)):
            raise _precheck('%s is still there from an earlier move' %
                            aside_dir(name))
        return dest_check_data

    # -- at the destination --------------------------------------------

    def pre_live_migration(self, context, instance, network_info,
                           migrate_data):
        network_info = network_info or []
        vifs.check_all(instance, network_info)
        image, _idmap, _security = self._guest_setup(
            context, instance, objects.ImageMeta.from_instance(instance))
        migrate_data.filename = image.rootfs
        vifs.plug_all(instance, network_info)
        return migrate_data

    def rollback_destination(self, instance, network_info, remove):
        """Nova's rollback here: the guest did not start on this host."""
        name = instance.uuid
        try:
            vifs.unplug_all(instance, network_info or [])
        except Exception:
            LOG.exception('Could not unplug the ports', instance=instance)
        transfer_inc = transfer.incoming_dir(name)
        if os.path.lexists(transfer_inc):
            fs.remove_tree(transfer_inc)
        if container.state(name)[0] != 'STOPPED':
            # Not arrived (UNDEFINED), or running: the source's own guest
            # where both services share a file system.
            return
        if remove:
            remove(name)
            LOG.info('Live migration rolled back: the copy that arrived '
                     'here is removed', instance=instance)

    # -- at the source -------------------------------------------------

    def live_migration(self, context, instance, dest, post_method,
                       recover_method, block_migration, migrate_data):
        name = instance.uuid
        address = _field(migrate_data, 'target_connect_addr') or dest
        problem = self._image_problem(name, migrate_data)
        if problem:
            LOG.error('Live migration to %s refused: %s', dest, problem,
                      instance=instance)
            recover_method(context, instance, dest, migrate_data)
            return
        try:
            transfer.arrival_start(address, name)
        except Exception as e:
            LOG.error('Live migration to %s failed before it began (the '
                      'guest runs on here): %s', dest, e, instance=instance)
            recover_method(context, instance, dest, migrate_data)
            return
        started = time.monotonic()
        why = checkpoint.dump(name, CONF.lxc.checkpoint_timeout)
        if why:
            transfer.arrival_cancel(name)
            LOG.error('Live migration to %s failed: CRIU could not '
                      'checkpoint the guest (it runs on here): %s', dest,
                      why, instance=instance)
            recover_method(context, instance, dest, migrate_data)
            return
        dumped = time.monotonic()
        cdir, aside = container.container_dir(name), aside_dir(name)
        images = self._images_bytes(name)
        sent = 0
        stage = 'set aside'
        try:
            self._backend.deactivate(cdir)
            ephemeral.destroy(cdir)
            self._wait_released(cdir)
            fs.make_dir(os.path.dirname(aside), 0, 0, 0o711)
            fs.rename(cdir, aside)
            stage = 'sent and restored there'
            moved = transfer.arrival_finish(
                aside, transfer.entries_of(aside), name)
            sent = moved['sent']
            if moved['error']:
                raise OSError(moved['error'])
        except Exception as e:
            transfer.arrival_cancel(name)
            LOG.error('Live migration to %(dest)s failed (the guest could '
                      'not be %(stage)s): %(err)s; it runs on here again',
                      {'dest': dest, 'stage': stage, 'err': e},
                      instance=instance)
            if stage != 'set aside':
                self._remove_partial(address, name)
            self._put_back(instance)
            recover_method(context, instance, dest, migrate_data)
            return
        done = time.monotonic()
        LOG.info('Live migration to %(dest)s: checkpoint %(dump).2f s, '
                 '%(mb).1f MB sent and restored there in %(move).2f s; the '
                 'guest was down %(down).2f s',
                 {'dest': dest, 'dump': dumped - started, 'mb': sent / 1e6,
                  'move': done - dumped, 'down': done - started},
                 instance=instance)
        self._report(migrate_data, images, sent)
        post_method(context, instance, dest, block_migration, migrate_data)

    def _image_problem(self, name, migrate_data):
        """Why the destination's cached image cannot serve as the guest's
        lower layer ('' if it can)."""
        text = container.read_config(name)
        rootfs = (lxc_config.config_values(text, 'lxc.rootfs.path') or
                  [''])[-1]
        ours = backends.image_of(rootfs)
        theirs = _field(migrate_data, 'filename')
        if ours and theirs and ours != theirs:
            return ('the destination caches the guest\'s image as %s, this '
                    'host as %s (hosts need the same [lxc] '
                    'image_cache_path and id ranges)' % (theirs, ours))
        return ''

    @staticmethod
    def _images_bytes(name):
        directory = checkpoint.images_dir(name)
        total = 0
        for top, _dirs, files in os.walk(directory):
            for n in files:
                if n.startswith('pages-'):
                    total += os.path.getsize(os.path.join(top, n))
        return total

    @staticmethod
    def _report(migrate_data, memory, sent):
        migration = _field(migrate_data, 'migration')
        if migration is None:
            return
        migration.memory_total = migration.memory_processed = memory
        migration.memory_remaining = 0
        migration.disk_total = migration.disk_processed = sent
        migration.disk_remaining = 0
        migration.save()

    @staticmethod
    def _remove_partial(address, name):
        try:
            transfer.remove_remote_incoming(address, name)
        except Exception as e:
            LOG.warning('Could not remove the partial copy on %(dest)s (its '
                        'compute service removes it when it starts): '
                        '%(err)s', {'dest': address, 'err': e})

    def _put_back(self, instance):
        """The guest running here again: restored from its checkpoint, or
        started afresh if that fails."""
        name = instance.uuid
        cdir, aside = container.container_dir(name), aside_dir(name)
        if os.path.lexists(aside):
            if os.path.lexists(cdir):
                # The copy that arrived, where source and destination share
                # a file system (never between two machines).
                container.stop(name)
                self._remove_tree(cdir)
            fs.rename(aside, cdir)
        self._backend.activate(cdir)
        ephemeral.activate(cdir)
        why = checkpoint.restore(name, CONF.lxc.checkpoint_timeout)
        if not why:
            fs.remove_tree(checkpoint.images_dir(name))
            return
        LOG.error('The guest could not be restored here either (%s); '
                  'starting it afresh', why, instance=instance)
        fs.remove_tree(checkpoint.images_dir(name))
        self._start(instance)

    def cleanup_source(self, instance):
        """After the move: the directory set aside here goes."""
        aside = aside_dir(instance.uuid)
        if not os.path.lexists(aside):
            return
        self._remove_tree(aside)
        LOG.info('Live migration done: the source copy is removed',
                 instance=instance)

    @staticmethod
    def _wait_released(cdir):
        """The checkpointed guest's disks no longer held (disk.py)."""
        for name in [disk.ROOT] + disk.names(cdir):
            if os.path.exists(disk.image_path(cdir, name)) and \
                    not disk.wait_released(cdir, name):
                LOG.warning('Disk %s is still in use %d s after the '
                            'checkpoint', name, disk.DETACH_SECONDS)

    def _remove_tree(self, path):
        ephemeral.destroy(path)
        self._backend.destroy(path)
        fs.remove_tree(path)
