"""Resize and cold migration: a stopped instance's files move between hosts.

LXCDriver holds one ``ColdMigrations`` and hands Nova's four calls to it:

- ``migrate_disk_and_power_off`` (source): refuse what cannot be done
  before touching anything (a smaller root or ephemeral disk, a root size
  appearing or disappearing); stop the guest, unplug its ports, unmount its
  disks, keep its directory aside as ``<container_path>/.resize/<uuid>``
  and send the root and ephemeral disks and the console log to the
  destination (:mod:`nova_lxd_py.storage.transfer`: ssh, or a local copy
  for a resize on the same host). Any failure puts the guest back as it
  was and raises InstanceFaultRollback, so Nova keeps it on the source.
- ``finish_migration`` (destination): the disks that arrived are grown to
  the new flavor's sizes, the config drive is built again, the container
  config is written from the new flavor (CPU, memory, pids, bandwidth),
  the ports plugged and the guest started if it ran before.
- ``confirm_migration`` (source): the kept directory goes.
- ``finish_revert_migration`` (source, after the destination destroyed
  its copy): the kept directory comes back unchanged (the old config, old
  flavor, old config drive) and the guest starts if it ran.

What a method here may touch: the instance's directory and its kept copy
on this host, the destination through ``transfer``, the root-disk
backend, and the guest only through the driver's ``GuestOps``.
"""

import collections
import os
import time

from nova import exception as nova_exception
from nova import objects
from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import excutils

from nova_lxd_py import conf
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import ephemeral
from nova_lxd_py.storage import transfer
from nova_lxd_py.vif import driver as vifs
from nova_lxd_py.vif import events as vif_events
from nova_lxd_py.virt import configdrive
from nova_lxd_py.virt import container

CONF = conf.CONF
LOG = logging.getLogger(__name__)

KEPT = '.resize'
RUNNING_STATES = ('RUNNING', 'FROZEN', 'FREEZING', 'THAWED', 'STARTING')

# What the driver lets a move do to a guest.
GuestOps = collections.namedtuple('GuestOps', [
    'power_off',      # (instance, timeout, retry_interval)
    'start',          # (instance)
    'guest_setup',    # (context, instance, image_meta)
                      #  -> (image, idmap, security)
    'write_config',   # (instance, image, idmap, security, rootfs, mounts,
                      #  network_info, drive)
])


def kept_dir(name):
    return os.path.join(CONF.lxc.container_path, KEPT,
                        os.path.basename(container.container_dir(name)))


def kept_rootfs_paths():
    """``lxc.rootfs.path`` of every guest kept here for a revert: their
    cached images must outlive the image cache's pass like a guest's."""
    top = os.path.join(CONF.lxc.container_path, KEPT)
    try:
        names = os.listdir(top)
    except FileNotFoundError:
        return []
    paths = []
    for name in names:
        try:
            with open(os.path.join(top, name, container.CONFIG_FILE)) as f:
                paths += [line.split('=', 1)[1].strip() for line in f
                          if line.split('=', 1)[0].strip() ==
                          'lxc.rootfs.path']
        except (OSError, IndexError):
            continue
    return paths


def _rollback(reason):
    return nova_exception.InstanceFaultRollback(
        nova_exception.ResizeError(reason=reason))


def check_sizes(old, new):
    """Why a move from flavor ``old`` to ``new`` cannot be done, or None.

    Disks only grow: ext4 and a guest's data cannot be shrunk safely, as
    with libvirt. A root without a size (root_gb 0) has no disk of its
    own to grow, and a sized one cannot become unlimited.
    """
    if new.root_gb < old.root_gb:
        return ('the new flavor\'s root disk (%d GB) is smaller than the '
                'instance\'s (%d GB); root disks cannot shrink' %
                (new.root_gb, old.root_gb))
    if bool(new.root_gb) != bool(old.root_gb):
        return ('the root disk would change between no size limit '
                '(root_gb 0) and %d GB; resize to a flavor of the same '
                'kind' % max(new.root_gb, old.root_gb))
    if (new.ephemeral_gb or 0) < (old.ephemeral_gb or 0):
        return ('the new flavor\'s ephemeral disk (%d GB) is smaller than '
                'the instance\'s (%d GB); ephemeral disks cannot shrink' %
                (new.ephemeral_gb or 0, old.ephemeral_gb or 0))
    return None


class ColdMigrations:

    def __init__(self, backend, virtapi, guest_ops):
        self._backend = backend
        self._virtapi = virtapi
        self._ops = guest_ops

    # -- at the source -----------------------------------------------------

    def migrate_disk_and_power_off(self, context, instance, dest, flavor,
                                   network_info, timeout=0,
                                   retry_interval=0):
        problem = check_sizes(instance.flavor, flavor)
        if problem:
            raise _rollback(problem)
        name = instance.uuid
        cdir, kept = container.container_dir(name), kept_dir(name)
        if os.path.lexists(kept):
            raise _rollback('%s is still there from an earlier move of '
                            'this instance' % kept)
        same_host = self._same_host(context, instance, dest)
        was_running = container.state(name)[0] in RUNNING_STATES
        self._ops.power_off(instance, timeout, retry_interval)
        vifs.unplug_all(instance, network_info)
        try:
            self._backend.deactivate(cdir)
            ephemeral.destroy(cdir)
            fs.make_dir(os.path.dirname(kept), 0, 0, 0o711)
            fs.rename(cdir, kept)
            entries = self._moved_entries(kept)
            started = time.monotonic()
            if same_host:
                transfer.copy_local(kept, entries, name)
                sent = 0
            else:
                sent = transfer.send(kept, entries, dest, name)
        except Exception as e:
            LOG.exception('Moving the instance to %s failed; putting it '
                          'back', dest, instance=instance)
            self._put_back(instance, network_info, was_running, dest,
                           same_host)
            raise _rollback('its files could not be moved to %s: %s' %
                            (dest, e))
        seconds = time.monotonic() - started
        LOG.info('Moved %(entries)s to %(dest)s in %(sec).2f s '
                 '(%(mb).1f MB sent)',
                 {'entries': ', '.join(entries), 'dest': dest,
                  'sec': seconds, 'mb': sent / 1e6}, instance=instance)
        return jsonutils.dumps({'entries': entries,
                                'backend': self._backend.name,
                                'running': was_running,
                                'bytes_sent': sent})

    @staticmethod
    def _same_host(context, instance, dest):
        """Whether source and destination are this compute service.

        From the move's Migration record, which names both services; an
        instance without one compares the destination's address with ours.
        """
        mc = instance.migration_context
        if mc is not None and mc.migration_id:
            migration = objects.Migration.get_by_id(context, mc.migration_id)
            return migration.source_compute == migration.dest_compute
        return dest in (CONF.my_ip, CONF.host)

    def _moved_entries(self, cdir):
        entries = self._backend.moved_entries(cdir)
        entries += ephemeral.moved_entries(cdir)
        if os.path.exists(os.path.join(cdir, container.CONSOLE_LOG)):
            entries.append(container.CONSOLE_LOG)
        return entries

    def _put_back(self, instance, network_info, was_running, dest,
                  same_host):
        """Undo a move that failed at the source: the guest as it was."""
        name = instance.uuid
        if not same_host:
            try:
                transfer.remove_remote_incoming(dest, name)
            except Exception as e:
                LOG.warning('Could not remove the partial copy on %(dest)s '
                            '(its compute service removes it when it '
                            'starts): %(err)s', {'dest': dest, 'err': e},
                            instance=instance)
        self._restore_kept(instance)
        cdir = container.container_dir(name)
        self._backend.activate(cdir)
        ephemeral.activate(cdir)
        vifs.plug_all(instance, network_info)
        if was_running:
            self._ops.start(instance)

    def _restore_kept(self, instance):
        """The kept directory back in place of whatever stands there (a
        same-host copy, or nothing)."""
        name = instance.uuid
        cdir, kept = container.container_dir(name), kept_dir(name)
        if not os.path.lexists(kept):
            return False
        if os.path.lexists(cdir):
            self._remove(cdir)
        fs.rename(kept, cdir)
        return True

    def _remove(self, path):
        ephemeral.destroy(path)
        self._backend.destroy(path)
        fs.remove_tree(path)

    def confirm_migration(self, context, migration, instance, network_info):
        # The ports were unplugged when the guest left; on the same host
        # they are the new guest's now.
        kept = kept_dir(instance.uuid)
        if os.path.lexists(kept):
            self._remove(kept)
        LOG.info('Move confirmed: the source copy is removed',
                 instance=instance)

    def finish_revert_migration(self, context, instance, network_info,
                                migration, power_on=True):
        name = instance.uuid
        self._restore_kept(instance)
        if container.state(name)[0] == 'UNDEFINED':
            raise nova_exception.InstanceNotFound(instance_id=name)
        if container.state(name)[0] in RUNNING_STATES:
            return   # a revert done before (Nova may retry)
        cdir = container.container_dir(name)
        self._backend.activate(cdir)
        ephemeral.activate(cdir)
        with vif_events.plugged(self._virtapi, instance, network_info,
                                wait=power_on):
            vifs.plug_all(instance, network_info)
        if power_on:
            self._ops.start(instance)
        LOG.info('Move reverted: the instance is back as it was',
                 instance=instance)

    # -- at the destination ------------------------------------------------

    def finish_migration(self, context, migration, instance, disk_info,
                         network_info, image_meta, block_device_info=None,
                         power_on=True):
        name = instance.uuid
        cdir = container.container_dir(name)
        info = jsonutils.loads(disk_info) if disk_info else {}
        if not os.path.isdir(cdir):
            raise nova_exception.ResizeError(
                reason='the files of the instance did not arrive in %s' %
                cdir)
        if info.get('backend', self._backend.name) != self._backend.name:
            raise nova_exception.ResizeError(
                reason='the instance\'s root comes from root_disk_backend '
                       '%s, this host uses %s' % (info['backend'],
                                                  self._backend.name))
        network_info = network_info or []
        vifs.check_all(instance, network_info)
        image, idmap, security = self._ops.guest_setup(
            context, instance, image_meta)
        owner = (idmap.uid_start, idmap.gid_start) if idmap else (0, 0)
        plugged = False
        try:
            rootfs = self._backend.adopt(cdir, image.rootfs, *owner,
                                         size_gb=instance.flavor.root_gb)
            mounts = ephemeral.adopt(
                cdir, ephemeral.wanted(instance, block_device_info), *owner)
            drive = configdrive.build(instance, [], None, network_info)
            plugged = True
            vifs.plug_all(instance, network_info)
            self._ops.write_config(instance, image, idmap, security, rootfs,
                                   mounts, network_info, drive)
            if power_on:
                self._ops.start(instance)
        except Exception:
            with excutils.save_and_reraise_exception():
                # The files stay: the move can still be reverted.
                if plugged:
                    vifs.unplug_all(instance, network_info)
                self._backend.deactivate(cdir)
                ephemeral.destroy(cdir)
        LOG.info('Instance arrived from %(source)s (%(mb).1f MB sent)',
                 {'source': migration.source_compute,
                  'mb': info.get('bytes_sent', 0) / 1e6}, instance=instance)

    # -- at start-up -------------------------------------------------------

    @staticmethod
    def clean_incoming():
        """Transfers to this host that broke off while it was down."""
        for name in transfer.remove_incoming():
            LOG.warning('Removed the partial copy of instance %s that '
                        'another host was sending here', name)
