"""Interface hot-plug: attach and detach Neutron ports of a defined guest.

A port is plugged on the host as spawn plugs it (``vif.driver``). If the
guest runs, the guest end of its veth pair moves into the guest's network
namespace at once (``net.move_into_netns``); either way the container's
config gets the port appended to its ``lxc.net.N`` blocks, so every later
start gives the guest the same device. Detach deletes the pair (the guest
loses the device with it) and removes the port's block, renumbering the
ones after it. The config is the record of what is attached: Nova's
network info cache may or may not list a port being attached yet.

liblxc's monitor keeps the devices the guest started with: a reboot the
guest asks for itself restarts it with those (without a port hot-plugged
since; and it fails, leaving the guest stopped, once one of them was
detached). So a guest whose ports changed while it ran is marked
(HOTPLUGGED), and a soft reboot of it through Nova is done as a hard one.
Part of LXCDriver (a mixin).
"""

from nova import exception as nova_exception
from oslo_concurrency import lockutils
from oslo_log import log as logging

from nova_lxd_py import exception
from nova_lxd_py.privsep import net
from nova_lxd_py.vif import driver as vifs
from nova_lxd_py.vif import naming
from nova_lxd_py.virt import config
from nova_lxd_py.virt import container

LOG = logging.getLogger(__name__)

HOTPLUGGED = 'hotplugged'
# States in which the guest has a network namespace of its own to move a
# device into.
_LIVE_STATES = ('RUNNING', 'FROZEN')


def _config_lock(instance):
    # The compute manager serialises per port only: two ports of one
    # guest may change its config at once.
    return lockutils.lock('hotplug-' + instance.uuid)


class HotplugMixin:

    def attach_interface(self, context, instance, image_meta, vif):
        with _config_lock(instance):
            self._attach(instance, vif)

    def detach_interface(self, context, instance, vif):
        with _config_lock(instance):
            self._detach(instance, vif)

    def _attach(self, instance, vif):
        lxc_state, pid, text = self._hotplug_target(instance)
        nics = config.nics_of(text)
        try:
            vifs.check(vif)
            nic = config.nics([vif])[0]
        except nova_exception.NovaException as e:
            raise exception.InterfaceHotplugFailed(
                port=vif.get('id'), instance_uuid=instance.uuid, reason=e)
        if nic.link in {n.link for n in nics}:
            LOG.info('Port %s is attached already', vif['id'],
                     instance=instance)
            return
        try:
            vifs.plug(instance, vif)
            if lxc_state in _LIVE_STATES and pid > 0:
                name = net.move_into_netns(nic.link, pid, nic.hwaddr,
                                           nic.mtu or 0)
                container.mark(instance.uuid, HOTPLUGGED, True)
                LOG.info('Port %(port)s hot-plugged as %(name)s', {
                    'port': vif['id'], 'name': name}, instance=instance)
            container.define(instance.uuid,
                             config.with_nics(text, nics + [nic]))
        except Exception as e:
            # The config is written last: it is unchanged.
            self._unplug_quietly(instance, [vif])
            raise exception.InterfaceHotplugFailed(
                port=vif['id'], instance_uuid=instance.uuid,
                reason=e) from e

    def _detach(self, instance, vif):
        lxc_state, _, text = self._hotplug_target(instance)
        try:
            link = naming.peer_name(vif)
        except naming.InvalidVif:
            link = None
        nics = config.nics_of(text)
        kept = [nic for nic in nics if nic.link != link]
        if len(kept) == len(nics):
            raise exception.InterfaceNotAttached(
                port=vif.get('id'), instance_uuid=instance.uuid)
        # Unplugged first: if that fails the port stays in the config, as
        # it stays attached in Neutron, and the detach can be retried.
        vifs.unplug(instance, vif)
        if lxc_state in _LIVE_STATES:
            container.mark(instance.uuid, HOTPLUGGED, True)
        container.define(instance.uuid, config.with_nics(text, kept))
        LOG.info('Port %s detached', vif['id'], instance=instance)

    @staticmethod
    def _hotplug_target(instance):
        """(liblxc state, init pid, config text) of the instance's own
        container; InstanceNotFound if it has none."""
        lxc_state, pid = container.state(instance.uuid)
        text = container.read_config(instance.uuid) \
            if lxc_state != 'UNDEFINED' else ''
        if not text:
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        return lxc_state, pid, text
