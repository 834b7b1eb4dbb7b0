"""doc/source/support-matrix.ini must say what the code does.

Every feature of the matrix maps to what implementing it takes in the code
(REQUIREMENTS). A feature marked complete or partial must have all of it; a
feature marked missing must lack some of it; and every ComputeDriver method
that LXCDriver overrides must be named by some feature (or be host
plumbing), so a new method cannot land without its row being looked at.
"""

import configparser
import importlib.util
import os
import re

from nova.virt import driver as nova_driver

from nova_lxd_py.api import extra_specs
from nova_lxd_py import conf
from nova_lxd_py.storage import formats
from nova_lxd_py.virt.driver import LXCDriver

MATRIX = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
    os.pardir, 'doc', 'source', 'support-matrix.ini')
DRIVER = 'driver.lxc_py'
NOTES = 'driver-notes.lxc_py'
IMPLEMENTED = ('complete', 'partial')

# A requirement is a ComputeDriver method LXCDriver must override, or
# 'capability:<key>' (LXCDriver.capabilities[key] is True),
# 'format:<name>' (an image format module of storage.formats),
# 'module:<dotted.path>' (a module of ours that must exist),
# 'option:<name>' (an [lxc] option), 'spec:<name>' (a flavor extra spec
# validator), or TODO: no code that could implement the feature exists yet.
TODO = 'todo'
NETWORKING = ['plug_vifs', 'unplug_vifs', 'module:nova_lxd_py.vif.driver']
VOLUMES = ['get_volume_connector', 'module:nova_lxd_py.storage.volumes']
LIVE_MIGRATION = ['check_can_live_migrate_destination',
                  'check_can_live_migrate_source', 'pre_live_migration',
                  'live_migration', 'post_live_migration_at_destination',
                  'post_live_migration_at_source',
                  'rollback_live_migration_at_destination',
                  'cleanup_live_migration_destination_check',
                  'module:nova_lxd_py.virt.live_migration',
                  'module:nova_lxd_py.virt.arrive']
MIGRATION = ['migrate_disk_and_power_off', 'finish_migration',
             'confirm_migration', 'finish_revert_migration']

REQUIREMENTS = {
    # lifecycle
    'operation.launch': ['spawn'],
    'operation.terminate': ['destroy', 'cleanup'],
    'operation.get-guest-info': ['get_info'],
    'operation.stop-start': ['power_off', 'power_on'],
    'operation.reboot': ['reboot'],
    # Nova rebuilds by destroy + spawn when the driver has no rebuild().
    'operation.rebuild': ['spawn', 'destroy'],
    'operation.pause': ['pause'],
    'operation.unpause': ['unpause'],
    'operation.suspend': ['suspend', 'module:nova_lxd_py.virt.suspend',
                          'option:suspend_to_disk'],
    'operation.resume': ['resume', 'module:nova_lxd_py.virt.suspend'],
    'operation.resume-on-host-boot': ['resume_state_on_host_boot'],
    'operation.console-log': ['get_console_output'],
    'operation.get-host-uptime': ['get_host_uptime'],
    'operation.get-host-ip': ['get_host_ip_addr'],
    # guest resources and isolation
    'operation.flavor-cpu-memory': ['spawn'],
    'operation.flavor-process-limit': ['option:pids_max',
                                       'spec:lxc:pids_max'],
    'operation.guest-proc-view': ['spawn', 'option:lxcfs_path'],
    'operation.unprivileged-containers': ['spawn', 'option:idmap_user',
                                          'option:idmap_size'],
    'operation.privileged-containers': ['option:allow_privileged',
                                        'spec:lxc:privileged'],
    'operation.nested-containers': ['option:allow_nesting',
                                    'spec:lxc:nesting'],
    'operation.seccomp': ['option:seccomp_profile'],
    'operation.root-disk-size': [
        'spawn', 'module:nova_lxd_py.storage.backends.disk'],
    'operation.ephemeral-swap-disks': [
        'spawn', 'module:nova_lxd_py.storage.ephemeral'],
    'operation.disk-rate-limit': [TODO],
    'operation.network-bandwidth-limit': NETWORKING + [
        'module:nova_lxd_py.vif.qos'],
    # images
    'operation.image-rootfs-tarball': [
        'spawn', 'format:tarball', 'capability:supports_image_type_raw'],
    'operation.image-disk': ['format:raw', 'format:qcow2',
                             'capability:supports_image_type_raw',
                             'capability:supports_image_type_qcow2'],
    'operation.image-squashfs': ['format:squashfs'],
    'operation.image-lxd': ['format:lxd'],
    'operation.image-oci': ['format:oci'],
    'operation.image-cache-cleanup': ['manage_image_cache',
                                      'capability:has_imagecache'],
    'operation.cache-images': ['cache_image'],
    'operation.trusted-certs': ['capability:supports_trusted_certs'],
    # snapshots, resize and moves
    'operation.snapshot': ['snapshot'],
    'operation.shelve': ['snapshot', 'spawn', 'destroy'],
    'operation.resize': MIGRATION,
    'operation.cold-migrate': MIGRATION,
    'operation.live-migrate': LIVE_MIGRATION,
    'operation.force-live-migration-to-complete': [
        'live_migration_force_complete'] + LIVE_MIGRATION,
    'operation.abort-in-progress-live-migration': [
        'live_migration_abort'] + LIVE_MIGRATION,
    'operation.evacuate': ['capability:supports_evacuate', 'spawn',
                           'destroy'],
    # The rescue password is written by storage.accounts.
    'operation.rescue': ['rescue', 'unrescue',
                         'module:nova_lxd_py.storage.accounts'],
    'operation.maintenance-mode': ['host_maintenance_mode',
                                   'set_host_enabled'],
    # guest setup and access
    'operation.config-drive': ['module:nova_lxd_py.virt.configdrive'],
    'operation.metadata-service': NETWORKING,
    'operation.inject-file': [TODO],
    'operation.inject-networking': [TODO],
    'operation.set-admin-password': ['set_admin_password'],
    'operation.serial-console': ['get_serial_console'],
    'operation.vnc-console': ['get_vnc_console'],
    'operation.spice-console': ['get_spice_console'],
    'operation.trigger-crash-dump': ['trigger_crash_dump'],
    'operation.quiesce': ['quiesce', 'unquiesce'],
    'operation.diagnostics': ['get_instance_diagnostics'],
    'operation.device-tags': ['capability:supports_device_tagging'],
    'operation.uefi-boot': [TODO],
    'operation.emulated-tpm': ['capability:supports_vtpm'],
    'operation.file-backed-memory': ['capability:supports_mem_backing_file'],
    'operation.report-cpu-traits': [TODO],
    # networking
    'operation.networking-flat': NETWORKING,
    'operation.networking-vlan-vxlan': NETWORKING,
    'operation.security-groups': NETWORKING,
    'operation.port-with-resource-request': NETWORKING,
    'operation.attach-interface': [
        'attach_interface', 'capability:supports_attach_interface'],
    'operation.attach-tagged-interface': [
        'attach_interface', 'capability:supports_tagged_attach_interface'],
    'operation.detach-interface': ['detach_interface'],
    # block storage
    'operation.boot-from-volume': VOLUMES,
    'operation.attach-volume': ['attach_volume'] + VOLUMES,
    'operation.attach-tagged-volume': [
        'attach_volume', 'capability:supports_tagged_attach_volume'],
    'operation.detach-volume': ['detach_volume'],
    'operation.extend-volume': ['extend_volume',
                                'capability:supports_extend_volume'],
    'operation.swap-volume': ['swap_volume'],
    'operation.multiattach-volume': ['attach_volume',
                                     'capability:supports_multiattach'],
    'operation.volume-backends': VOLUMES,
}

# Overridden ComputeDriver methods that are host plumbing, not features.
PLUMBING = {'__init__', 'init_host', 'get_available_nodes',
            'get_available_resource', 'update_provider_tree',
            'list_instances', 'list_instance_uuids'}


def _matrix():
    parser = configparser.ConfigParser(interpolation=None)
    with open(MATRIX) as f:
        parser.read_file(f)
    return parser


def _features(parser):
    return [s for s in parser.sections() if s.startswith('operation.')]


def _overrides(name):
    """True if LXCDriver or a mixin of it, not ComputeDriver, defines
    name."""
    for klass in LXCDriver.__mro__:
        if name in vars(klass):
            return klass not in nova_driver.ComputeDriver.__mro__
    return False


def _satisfied(requirement):
    kind, _, name = requirement.partition(':')
    if requirement == TODO:
        return False
    if kind == 'capability':
        assert name in nova_driver.ComputeDriver.capabilities, requirement
        return LXCDriver.capabilities.get(name) is True
    if kind == 'format':
        return name in {fmt.NAME for fmt in formats.FORMATS}
    if kind == 'module':
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False
    if kind == 'option':
        return name in {opt.name for opt in conf.OPTS}
    if kind == 'spec':
        return name in {v.name for v in extra_specs.VALIDATORS}
    assert hasattr(nova_driver.ComputeDriver, requirement), \
        '%s is no ComputeDriver method' % requirement
    return _overrides(requirement)


def test_matrix_is_well_formed():
    parser = _matrix()
    drivers = [s for s in parser.sections() if s.startswith('driver.')]
    assert drivers == [DRIVER]
    assert parser.get(DRIVER, 'title')
    # sphinx-feature-classification renders only operation.* sections.
    assert set(parser.sections()) == {DRIVER, *_features(parser)}
    for section in _features(parser):
        items = dict(parser.items(section))
        assert items.get('title'), section
        assert items.get('notes'), section
        assert re.fullmatch(r'mandatory|optional|choice\([\w.]+\)',
                            items.get('status', '')), section
        assert items.get(DRIVER) in IMPLEMENTED + ('missing', 'unknown'), \
            section
        if items[DRIVER] == 'partial':
            assert items.get(NOTES), '%s: partial needs notes' % section
        unknown = set(items) - {'title', 'status', 'notes', 'cli', DRIVER,
                                NOTES}
        assert not unknown, '%s: %s' % (section, unknown)


def test_every_feature_has_requirements():
    assert set(_features(_matrix())) == set(REQUIREMENTS)


def test_implemented_features_have_their_code():
    parser = _matrix()
    for section in _features(parser):
        if parser.get(section, DRIVER) not in IMPLEMENTED:
            continue
        lacking = [r for r in REQUIREMENTS[section] if not _satisfied(r)]
        assert not lacking, (
            '%s is marked %s but the code lacks %s' %
            (section, parser.get(section, DRIVER), lacking))


def test_missing_features_lack_some_code():
    parser = _matrix()
    for section in _features(parser):
        if parser.get(section, DRIVER) != 'missing':
            continue
        assert not all(_satisfied(r) for r in REQUIREMENTS[section]), (
            '%s is marked missing but the code has all of %s: update '
            'doc/source/support-matrix.ini' %
            (section, REQUIREMENTS[section]))


def test_every_overridden_method_is_in_the_matrix():
    named = {r for reqs in REQUIREMENTS.values() for r in reqs}
    overridden = {name for name in dir(nova_driver.ComputeDriver)
                  if callable(getattr(nova_driver.ComputeDriver, name))
                  and (not name.startswith('_') or name == '__init__')
                  and _overrides(name)}
    unmapped = overridden - named - PLUMBING
    assert not unmapped, (
        'LXCDriver overrides %s: add them to REQUIREMENTS here and mark '
        'their features in doc/source/support-matrix.ini' % sorted(unmapped))


def test_capabilities_we_claim_are_in_the_matrix():
    named = {r.partition(':')[2] for reqs in REQUIREMENTS.values()
             for r in reqs if r.startswith('capability:')}
    claimed = {k for k, v in LXCDriver.capabilities.items() if v is True}
    assert claimed <= named, sorted(claimed - named)
