"""The Nova compute driver: every instance is a liblxc system container.

Methods stay short and delegate: liblxc to ``container``, power states and
clean halts to ``power``, the config text to ``config``, host facts to
``host``, root file systems to ``storage``.
Containers are named after their instance's UUID.
"""

import os

from nova import exception as nova_exception
from nova.objects import fields
from nova.virt import driver
from nova.virt import hardware
from nova.virt import node
from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import excutils
import os_resource_classes as orc

from nova_lxd_py import conf
from nova_lxd_py import exception
from nova_lxd_py.privsep import fs
from nova_lxd_py.storage import backends
from nova_lxd_py.storage import ephemeral
from nova_lxd_py.storage import formats
from nova_lxd_py.storage import images
from nova_lxd_py.vif import driver as vifs
from nova_lxd_py.vif import events as vif_events
from nova_lxd_py.virt import checkpoint
from nova_lxd_py.virt import config
from nova_lxd_py.virt import configdrive
from nova_lxd_py.virt import console
from nova_lxd_py.virt import container
from nova_lxd_py.virt import guest
from nova_lxd_py.virt import host
from nova_lxd_py.virt import hotplug
from nova_lxd_py.virt import live_migration
from nova_lxd_py.virt import migration
from nova_lxd_py.virt import orphans
from nova_lxd_py.virt import password
from nova_lxd_py.virt import power
from nova_lxd_py.virt import rescue
from nova_lxd_py.virt import snapshots
from nova_lxd_py.virt import suspend

CONF = conf.CONF
LOG = logging.getLogger(__name__)

CONTAINER_HOST_TRAIT = 'CUSTOM_SYSTEM_CONTAINER_HOST'
MAX_CONSOLE_BYTES = 100 * 1024


def image_capabilities(enabled):
    """supports_image_type_* for the Glance disk formats we unpack.

    Tarballs, squashfs, LXD and OCI images are all disk_format=raw; qcow2
    only when the qcow2 format is enabled. Placement filters on these.
    """
    taken = formats.disk_formats(enabled)
    return {'supports_image_type_%s' % name: name in taken
            for name in ('aki', 'ami', 'ari', 'iso', 'qcow2', 'raw', 'vdi',
                         'vhd', 'vhdx', 'vmdk', 'ploop')}


class LXCDriver(rescue.RescueMixin, orphans.OrphansMixin,
                snapshots.SnapshotMixin, password.PasswordMixin,
                console.ConsoleMixin,
                hotplug.HotplugMixin, driver.ComputeDriver):
    capabilities = dict(
        driver.ComputeDriver.capabilities,
        has_imagecache=True,
        # Nova's verified download checks the signature against the
        # instance's trusted certificates before we unpack anything.
        supports_trusted_certs=True,
        supports_attach_interface=True,
        # Evacuate rebuilds from the image on the new host (no shared
        # storage): virt/migration.py's cold moves carry the disks instead.
        supports_evacuate=True,
        # Tags need device metadata (config drive, metadata service) that
        # names the guest's device; not built for containers yet.
        supports_tagged_attach_interface=False,
        **image_capabilities(formats.names()),
    )

    def __init__(self, virtapi):
        super().__init__(virtapi)
        self.capabilities = dict(
            self.capabilities, **image_capabilities(CONF.lxc.image_formats))
        self._nodename = CONF.host
        self._images = images.ImageCache(CONF.lxc.image_cache_path)
        self._backend = backends.get(CONF.lxc.root_disk_backend)
        self._cgroup_version = None
        self._node_uuid = None
        self._guests = guest.Guests(self._backend, self._images)
        self._checkpoints = checkpoint.Checkpoints()
        self._suspends = suspend.Suspends(self._checkpoints, self._activate)
        self._lives = live_migration.LiveMigrations(
            self._backend, self._checkpoints, self._guests.setup,
            self._start)
        self._moves = migration.ColdMigrations(
            self._backend, virtapi, migration.GuestOps(
                power_off=self.power_off, start=self._start,
                guest_setup=self._guests.setup,
                write_config=self._guests.write_config))

    # -- host --------------------------------------------------------------

    def init_host(self, host):
        # Nova passes the host name by keyword, as ``host``.
        self._nodename = host
        self._check_host()
        self._checkpoints.probe()
        self._moves.clean_incoming()
        self._handle_orphans(known=None)

    def _check_host(self):
        try:
            version = container.lxc_version()
        except Exception as e:
            raise exception.HostCannotRunContainers(
                reason='liblxc does not work: %s' % e)
        if not os.path.isdir(host.CGROUP_ROOT):
            raise exception.HostCannotRunContainers(
                reason='no cgroup file system at %s' % host.CGROUP_ROOT)
        self._cgroup_version = host.cgroup_version()
        self._guests.cgroup_version = self._cgroup_version
        try:
            host.idmap()
        except exception.NoSubordinateIds as e:
            LOG.error('%s Only privileged containers can run here.', e)
        if not host.lxcfs_active():
            LOG.warning('lxcfs is not mounted at %s: guests will see the '
                        'host\'s memory and CPUs in /proc.',
                        CONF.lxc.lxcfs_path)
        LOG.info('liblxc %(version)s, cgroup v%(cg)d, containers in %(path)s',
                 {'version': version, 'cg': self._cgroup_version,
                  'path': CONF.lxc.container_path})

    def get_available_nodes(self, refresh=False):
        return [self._nodename]

    def get_available_resource(self, nodename):
        if self._node_uuid is None:
            # Read (or made) once, at the first report: the identity file
            # does not change while the service runs, and two services in
            # one process (tests) keep their own.
            self._node_uuid = node.get_local_node_uuid()
        mem_total, mem_free = host.memory_mb()
        disk_total, disk_free = host.disk_gb(CONF.lxc.container_path)
        cpus = host.cpus()
        return {
            'vcpus': len(cpus),
            'memory_mb': mem_total,
            'local_gb': disk_total,
            'vcpus_used': 0,
            'memory_mb_used': mem_total - mem_free,
            'local_gb_used': disk_total - disk_free,
            'hypervisor_type': fields.HVType.LXC,
            'hypervisor_version': container.lxc_version_int(),
            'hypervisor_hostname': nodename,
            'cpu_info': jsonutils.dumps({'arch': host.machine(),
                                         'topology': {'cpus': len(cpus)}}),
            'disk_available_least': disk_free,
            'supported_instances': self._supported_instances(),
            'numa_topology': None,
            'uuid': self._node_uuid,
        }

    def _supported_instances(self):
        arch = fields.Architecture.canonicalize(host.machine())
        return [(arch, fields.HVType.LXC, fields.VMMode.EXE)]

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        # Only the totals: not the whole get_available_resource(), which
        # also reads the node uuid, liblxc's version and the arch each time.
        vcpus = len(host.cpus())
        memory_mb = host.memory_mb()[0]
        disk_gb = host.disk_gb(CONF.lxc.container_path)[0]
        ratios = self._get_allocation_ratios(
            provider_tree.data(nodename).inventory)

        def inventory(total, rc, reserved):
            return {'total': total, 'min_unit': 1, 'max_unit': total,
                    'step_size': 1, 'allocation_ratio': ratios[rc],
                    'reserved': reserved}

        provider_tree.update_inventory(nodename, {
            orc.VCPU: inventory(vcpus, orc.VCPU, CONF.reserved_host_cpus),
            orc.MEMORY_MB: inventory(memory_mb, orc.MEMORY_MB,
                                     CONF.reserved_host_memory_mb),
            orc.DISK_GB: inventory(
                disk_gb, orc.DISK_GB,
                self._get_reserved_host_disk_gb_from_config()),
        })
        provider_tree.add_traits(nodename, CONTAINER_HOST_TRAIT)

    def get_host_ip_addr(self):
        return CONF.my_ip

    def get_host_uptime(self):
        return host.uptime()

    # -- instances ---------------------------------------------------------

    def list_instance_uuids(self):
        return container.list_names()

    def list_instances(self):
        # Containers are named by UUID; each config records Nova's name.
        return container.instance_names(config.INSTANCE_NAME_KEY)

    def get_info(self, instance, use_cache=True):
        lxc_state, _ = container.state(instance.uuid)
        if lxc_state == 'UNDEFINED':
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        return hardware.InstanceInfo(state=power.power_state_for(
            lxc_state, container.is_marked(instance.uuid, suspend.FROZEN),
            suspend.is_checkpointed(instance.uuid)))

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        network_info = network_info or []
        vifs.check_all(instance, network_info)   # before anything is made
        drive = configdrive.build(instance, injected_files, admin_password,
                                  network_info)
        image, idmap, security = self._guests.setup(context, instance,
                                                    image_meta)
        try:
            # The guest's devices must be on the host before liblxc can
            # move them in at start, and wired by Neutron before the
            # guest asks for an address.
            with vif_events.plugged(self.virtapi, instance, network_info,
                                    wait=power_on):
                vifs.plug_all(instance, network_info)
                self._guests.define(instance, image, idmap, security,
                                    block_device_info, network_info, drive)
            if power_on:
                self._start(instance)
        except Exception:
            with excutils.save_and_reraise_exception():
                self._unplug_quietly(instance, network_info)
                self._remove(instance)
        LOG.info('Container created from image %s', image_meta.id,
                 instance=instance)

    def _activate(self, instance):
        """Mount the guest's root and ephemeral disks, as a start needs."""
        cdir = container.container_dir(instance.uuid)
        self._backend.activate(cdir)
        ephemeral.activate(cdir)

    def _start(self, instance):
        self._activate(instance)
        # A fresh start: a suspend's checkpoint or freeze is no more.
        self._suspends.discard(instance)
        started, log = container.start(instance.uuid,
                                       CONF.lxc.start_timeout)
        if not started:
            raise exception.ContainerStartFailed(name=instance.uuid,
                                                 reason=log.strip()[-1000:])
        container.mark(instance.uuid, hotplug.HOTPLUGGED, False)

    def _remove(self, instance):
        self._remove_dir(instance.uuid)

    @staticmethod
    def _unplug_quietly(instance, network_info):
        try:
            vifs.unplug_all(instance, network_info)
        except Exception:
            LOG.exception('Could not unplug the ports', instance=instance)

    def _remove_dir(self, name):
        cdir = container.container_dir(name)
        ephemeral.destroy(cdir)
        self._backend.destroy(os.path.join(cdir, self.RESCUE_DIR))
        self._backend.destroy(cdir)
        fs.remove_tree(cdir)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        if not container.stop(instance.uuid):
            raise exception.ContainerError(name=instance.uuid,
                                           reason='it did not stop')
        self._close_serial_console(instance)
        self.cleanup(context, instance, network_info, block_device_info,
                     destroy_disks, destroy_secrets=destroy_secrets)

    def cleanup(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, migrate_data=None, destroy_vifs=True,
                destroy_secrets=True):
        if destroy_vifs:
            # As libvirt's: a port's backend being away (ovsdb-server
            # down) must not keep an instance from being deleted; the
            # veth pairs go regardless.
            self._unplug_quietly(instance, network_info)
        if migrate_data is not None:
            # The source after a live migration: the guest's directory was
            # set aside (its own path may be the destination's copy where
            # the two share a file system).
            if destroy_disks:
                self._lives.cleanup_source(instance)
            return
        if destroy_disks:
            self._remove(instance)

    # -- resize and cold migration (virt/migration.py) ---------------------

    def migrate_disk_and_power_off(self, context, instance, dest, flavor,
                                   network_info, block_device_info=None,
                                   timeout=0, retry_interval=0):
        return self._moves.migrate_disk_and_power_off(
            context, instance, dest, flavor, network_info or [], timeout,
            retry_interval)

    def finish_migration(self, context, migration, instance, disk_info,
                         network_info, image_meta, resize_instance,
                         allocations, block_device_info=None, power_on=True,
                         share_info=None):
        self._moves.finish_migration(
            context, migration, instance, disk_info, network_info,
            image_meta, block_device_info, power_on)

    def confirm_migration(self, context, migration, instance, network_info):
        self._moves.confirm_migration(context, migration, instance,
                                      network_info)

    def finish_revert_migration(self, context, instance, network_info,
                                migration, block_device_info=None,
                                power_on=True, share_info=None):
        self._moves.finish_revert_migration(
            context, instance, network_info or [], migration, power_on)

    # -- live migration (virt/live_migration.py) ---------------------------

    def check_can_live_migrate_destination(self, context, instance,
                                           src_compute_info, dst_compute_info,
                                           block_migration=False,
                                           disk_over_commit=False):
        return self._lives.check_destination(context, instance)

    def cleanup_live_migration_destination_check(self, context,
                                                 dest_check_data):
        # The destination's check made nothing that needs removing.
        pass

    def check_can_live_migrate_source(self, context, instance,
                                      dest_check_data,
                                      block_device_info=None):
        return self._lives.check_source(context, instance, dest_check_data)

    def pre_live_migration(self, context, instance, block_device_info,
                           network_info, disk_info, migrate_data):
        return self._lives.pre_live_migration(context, instance,
                                              network_info, migrate_data)

    def live_migration(self, context, instance, dest, post_method,
                       recover_method, block_migration=False,
                       migrate_data=None):
        self._lives.live_migration(context, instance, dest, post_method,
                                   recover_method, block_migration,
                                   migrate_data)

    def post_live_migration_at_source(self, context, instance, network_info):
        # The guest left with its checkpoint; its ports here go.
        self._unplug_quietly(instance, network_info)

    def post_live_migration_at_destination(self, context, instance,
                                           network_info,
                                           block_migration=False,
                                           block_device_info=None):
        if container.state(instance.uuid)[0] != 'RUNNING':
            raise nova_exception.MigrationError(
                reason='the guest does not run on %s after its restore' %
                CONF.host)
        LOG.info('Live migration arrived: the guest runs here',
                 instance=instance)

    def rollback_live_migration_at_destination(self, context, instance,
                                               network_info,
                                               block_device_info,
                                               destroy_disks=True,
                                               migrate_data=None):
        self._lives.rollback_destination(
            instance, network_info,
            self._remove_dir if destroy_disks else None)

    # -- networking --------------------------------------------------------

    def plug_vifs(self, instance, network_info):
        """Re-plug the ports of an existing instance (compute start-up).

        Idempotent: a running guest keeps its devices; the pairs of a
        stopped one are made again where a host reboot removed them.
        """
        for vif in network_info or ():
            vifs.plug(instance, vif)

    def unplug_vifs(self, instance, network_info):
        vifs.unplug_all(instance, network_info)

    # -- image cache -------------------------------------------------------

    def cache_image(self, context, image_id):
        """Aggregate image pre-caching: unpack for unprivileged guests."""
        _, fetched = self._images.ensure(context, image_id, host.idmap(), 0)
        return fetched

    def manage_image_cache(self, context, all_instances):
        """Orphaned containers, then cache entries no instance or container
        uses (Nova's periodic image cache pass)."""
        self._handle_orphans(known={i.uuid for i in all_instances
                                    if not i.deleted})
        if not CONF.image_cache.remove_unused_base_images:
            return
        used_images = {i.image_ref for i in all_instances
                       if i.image_ref and not i.deleted}
        used_paths = {backends.image_of(path) for path in
                      container.rootfs_paths() +
                      migration.kept_rootfs_paths()}
        removed = self._images.remove_unused(
            used_images, used_paths,
            CONF.image_cache.remove_unused_original_minimum_age_seconds)
        if removed:
            LOG.info('Image cache: removed %d unused entries', len(removed))

    # -- power -------------------------------------------------------------

    def power_off(self, instance, timeout=0, retry_interval=0):
        # Off is off: a suspended guest does not come back from it.
        self._suspends.discard(instance)
        lxc_state, _ = container.state(instance.uuid)
        if lxc_state == 'RUNNING' and timeout and \
                power.clean_shutdown(instance, timeout, retry_interval):
            self._close_serial_console(instance)
            return
        if not container.stop(instance.uuid):
            raise exception.ContainerError(name=instance.uuid,
                                           reason='it did not stop')
        self._close_serial_console(instance)

    def power_on(self, context, instance, network_info,
                 block_device_info=None, accel_info=None, share_info=None):
        lxc_state, _ = container.state(instance.uuid)
        if lxc_state in ('FROZEN', 'FREEZING'):
            container.set_frozen(instance.uuid, False)
            container.mark(instance.uuid, suspend.FROZEN, False)
        elif lxc_state != 'RUNNING':
            self.plug_vifs(instance, network_info)
            self._start(instance)

    def reboot(self, context, instance, network_info, reboot_type,
               block_device_info=None, bad_volumes_callback=None,
               accel_info=None, share_info=None):
        # liblxc restarts a guest in place with the devices it started
        # with: one whose ports changed since needs a start by us.
        if reboot_type == 'SOFT' and not container.is_marked(
                instance.uuid, hotplug.HOTPLUGGED) and \
                power.soft_reboot(instance):
            return
        container.stop(instance.uuid)
        self.plug_vifs(instance, network_info)
        self._start(instance)

    def pause(self, instance):
        container.set_frozen(instance.uuid, True)

    def unpause(self, instance):
        container.set_frozen(instance.uuid, False)

    # -- suspend to disk (virt/suspend.py) ---------------------------------

    def suspend(self, context, instance):
        self._suspends.suspend(instance)

    def resume(self, context, instance, network_info, block_device_info=None,
               share_info=None):
        self._suspends.resume(instance, network_info)

    def resume_state_on_host_boot(self, context, instance, network_info,
                                  share_info, block_device_info=None):
        if suspend.is_checkpointed(instance.uuid):
            # Its checkpoint outlived the host's restart: it stays
            # suspended until it is resumed.
            LOG.info('Guest stays suspended (checkpointed to disk)',
                     instance=instance)
            return
        self.power_on(context, instance, network_info, block_device_info)

    def get_console_output(self, context, instance):
        if container.state(instance.uuid)[0] == 'UNDEFINED':
            raise nova_exception.InstanceNotFound(instance_id=instance.uuid)
        # latin-1 maps bytes to str one to one: the manager encodes it back.
        return container.read_console_log(
            instance.uuid, MAX_CONSOLE_BYTES).decode('latin-1')
