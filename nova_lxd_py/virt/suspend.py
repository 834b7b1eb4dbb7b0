"""Suspend and resume: a guest checkpointed to disk, or frozen in memory.

LXCDriver holds one ``Suspends`` and hands it Nova's ``suspend`` and
``resume``:

- ``suspend`` checkpoints the running guest with CRIU
  (:func:`checkpoint.dump`, through liblxc's ``lxc-checkpoint``) into its
  directory (``checkpoint.images_dir``) and so stops it: its memory is
  freed, its ports go back to this host, and it survives a restart of
  nova-compute and of the host. Where that cannot be done (``[lxc]
  suspend_to_disk`` off, no working CRIU on this host, or CRIU refusing
  this guest, e.g. a process holding a terminal of the host's) the guest
  is frozen in memory (cgroup freezer) instead, and the log says why.
- ``resume`` thaws a frozen guest, or restores a checkpointed one: its
  ports are plugged again (a host reboot removed their pairs), its root and
  ephemeral disks mounted again, then :func:`checkpoint.restore` gives the
  guest back its processes, memory, open connections and console. A
  failed restore keeps the checkpoint, so a later resume can try again.
- ``discard`` drops a checkpoint the guest will not come back from (it is
  started afresh, powered off, or rebuilt).

Nova's power state of a checkpointed guest (stopped, as liblxc sees it) is
SUSPENDED: ``is_checkpointed`` tells it apart from a stopped one.

What a method here may touch: the instance's directory (its checkpoint and
its markers), the guest through ``checkpoint`` and ``container``, its ports
through ``vif.driver``, its disks through the driver's ``activate``.
"""

from nova import exception as nova_exception
from oslo_log import log as logging

from nova_lxd_py import conf
from nova_lxd_py.privsep import fs
from nova_lxd_py.vif import driver as vifs
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import container

CONF = conf.CONF
LOG = logging.getLogger(__name__)

# Markers in the container directory (container.mark): frozen in memory,
# and checkpointed to disk.
FROZEN = 'suspended'
CHECKPOINTED = 'checkpointed'


def is_checkpointed(name):
    return container.is_marked(name, CHECKPOINTED)


class Suspends:

    def __init__(self, checkpoints, activate):
        """``checkpoints``: this host's ``checkpoint.Checkpoints``;
        ``activate(instance)``: mount the guest's disks, as a start does."""
        self._checkpoints = checkpoints
        self._activate = activate

    def suspend(self, instance):
        why = self._why_not_to_disk(instance)
        if not why:
            why = checkpoint.dump(instance.uuid, CONF.lxc.checkpoint_timeout)
            if not why:
                container.mark(instance.uuid, CHECKPOINTED, True)
                LOG.info('Guest checkpointed to disk and stopped',
                         instance=instance)
                return
            self._remove_images(instance)
            LOG.warning('Guest could not be checkpointed (%s); freezing it '
                        'in memory instead', why, instance=instance)
        else:
            LOG.info('Guest frozen in memory: %s', why, instance=instance)
        container.set_frozen(instance.uuid, True)
        container.mark(instance.uuid, FROZEN, True)

    def _why_not_to_disk(self, instance):
        if not CONF.lxc.suspend_to_disk:
            return '[lxc] suspend_to_disk is off'
        if not self._checkpoints.available:
            return 'this host cannot checkpoint (%s)' % (
                self._checkpoints.reason)
        lxc_state = container.state(instance.uuid)[0]
        if lxc_state != 'RUNNING':
            return 'it is %s, not running' % lxc_state
        return ''

    def resume(self, instance, network_info):
        name = instance.uuid
        lxc_state = container.state(name)[0]
        if lxc_state in ('FROZEN', 'FREEZING'):
            container.set_frozen(name, False)
            container.mark(name, FROZEN, False)
            return
        if not is_checkpointed(name):
            if lxc_state == 'RUNNING':
                container.mark(name, FROZEN, False)
                return
            raise nova_exception.InstanceResumeFailure(
                reason='the guest is %s and has no checkpoint to resume '
                       'from; start it instead' % lxc_state.lower())
        for vif in network_info or ():
            vifs.plug(instance, vif)
        self._activate(instance)
        why = checkpoint.restore(name, CONF.lxc.checkpoint_timeout)
        if why:
            raise nova_exception.InstanceResumeFailure(
                reason='CRIU could not restore the guest (its checkpoint is '
                       'kept for another resume): %s' % why)
        self.discard(instance)
        LOG.info('Guest restored from its checkpoint', instance=instance)

    def discard(self, instance):
        """The guest will not come back from its checkpoint: drop it."""
        if is_checkpointed(instance.uuid):
            LOG.info('Dropping the guest\'s checkpoint', instance=instance)
        self._remove_images(instance)
        container.mark(instance.uuid, CHECKPOINTED, False)
        container.mark(instance.uuid, FROZEN, False)

    @staticmethod
    def _remove_images(instance):
        fs.remove_tree(checkpoint.images_dir(instance.uuid))
