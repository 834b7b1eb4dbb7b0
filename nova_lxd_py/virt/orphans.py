"""Containers and disks that belong to no instance (a crash, a failed
cleanup): found at start-up and by the periodic image cache pass, logged,
and removed under ``[lxc] remove_orphans``. Part of LXCDriver (a mixin:
it uses the driver's ``_remove_dir``).
"""

import os
import time

from oslo_log import log as logging
from oslo_utils import uuidutils

from nova_lxd_py import conf
from nova_lxd_py.vif import driver as vifs
from nova_lxd_py.virt import config
from nova_lxd_py.virt import container

CONF = conf.CONF
LOG = logging.getLogger(__name__)
# A container dir younger than this may be a spawn in progress.
ORPHAN_GRACE_SECONDS = 600


def _delete_links(name):
    """Delete the veth pairs of a stopped orphan's ports.

    Its config names the guest end of each (back on the host once it
    stopped); deleting it deletes the host end too, which takes it out of
    its bridge. No port object is left to unplug through os-vif: an OVS
    port row stays for Neutron's agent to remove.
    """
    for nic in config.nics_of(container.read_config(name)):
        if vifs.delete_by_peer(nic.link):
            LOG.info('Deleted the network device %(dev)s of orphaned '
                     'container %(name)s', {'dev': nic.link, 'name': name})


class OrphansMixin:

    def _orphans(self, known):
        """Container directories that belong to no instance.

        ``known``: uuids of the host's instances (the periodic pass), or
        None at start-up, when only a directory liblxc has no config in
        (half made or half removed) is surely an orphan. Directories
        younger than ORPHAN_GRACE_SECONDS may be a spawn in progress.
        """
        top = CONF.lxc.container_path
        try:
            names = os.listdir(top)
        except FileNotFoundError:
            return []
        now = time.time()
        found = []
        for name in sorted(names):
            path = os.path.join(top, name)
            if not uuidutils.is_uuid_like(name) or not os.path.isdir(path):
                continue
            if now - os.stat(path).st_mtime < ORPHAN_GRACE_SECONDS:
                continue
            has_config = os.path.exists(os.path.join(path,
                                                     container.CONFIG_FILE))
            if (known is None and not has_config) or (
                    known is not None and name not in known):
                found.append(name)
        return found

    def _handle_orphans(self, known):
        for name in self._orphans(known):
            cdir = container.container_dir(name)
            mounted = [p for p in (os.path.join(cdir, d) for d in
                                   os.listdir(cdir)) if os.path.ismount(p)]
            if not CONF.lxc.remove_orphans:
                LOG.warning('Container %(name)s has no instance on this host '
                            '(its disks: %(mounts)s); set [lxc] '
                            'remove_orphans to remove such leftovers.',
                            {'name': name, 'mounts': mounted or 'none'})
                continue
            LOG.warning('Removing container %s, which has no instance on '
                        'this host', name)
            try:
                container.stop(name)
                _delete_links(name)
                self._remove_dir(name)
            except Exception:
                LOG.exception('Could not remove orphaned container %s', name)
