"""The rescue container's config, made from the instance's own."""

import ddt
from oslotest import base

from nova_lxd_py.virt import config

CDIR = '/srv/c/0b68c06d-e626-42aa-87a9-f76c551a9f82'
IMAGE = '/srv/cache/img.u100000g100000/rootfs'
RESCUE_IMAGE = '/srv/cache/rescue.u100000g100000/rootfs'
IDMAP = config.IdMap(uid_start=100000, gid_start=100000, size=65536)
LIMITS = config.Limits(memory_bytes=256 << 20, cpu_period_us=100000,
                       cpu_quota_us=100000, cpu_shares=1024, cpuset='1',
                       pids_max=4096)


def own_config(rootfs, idmap=IDMAP, mounts=(), init_kind='systemd',
               readonly_mounts=()):
    return config.build(
        instance_name='instance-00000001', hostname='guest-1',
        rootfs=rootfs, idmap=idmap,
        security=config.Security(privileged=idmap is None), limits=LIMITS,
        cgroup_version=2, init_kind=init_kind,
        console_log=CDIR + '/console.log', console_size_kb=1024,
        lxcfs_path='/var/lib/lxcfs',
        mounts=mounts, readonly_mounts=readonly_mounts)


def items(text):
    return [tuple(part.strip() for part in line.split('=', 1))
            for line in text.splitlines() if not line.startswith('#')]


@ddt.ddt
class RescueConfigTest(base.BaseTestCase):

    def test_values_and_idmap(self):
        text = own_config('overlay:%s:%s/upper' % (IMAGE, CDIR))
        self.assertEqual(['guest-1'],
                         config.config_values(text, 'lxc.uts.name'))
        self.assertEqual([], config.config_values(text, 'lxc.nothing'))
        self.assertEqual(IDMAP, config.idmap_of(text))
        shifted = config.IdMap(uid_start=200000, gid_start=300000, size=1000)
        self.assertEqual(shifted, config.idmap_of(own_config('/r', shifted)))

    def test_privileged_has_no_idmap(self):
        self.assertIsNone(config.idmap_of(own_config('/r', idmap=None)))

    def test_overlay_root_is_mounted_again_with_its_work_dir(self):
        own = own_config('overlay:%s:%s/disk/upper' % (IMAGE, CDIR))
        text = config.rescue_config(
            own, 'overlay:%s:%s/rescue/upper' % (RESCUE_IMAGE, CDIR),
            'busybox', CDIR)
        got = items(text)
        self.assertEqual(
            [('lxc.rootfs.path',
              'overlay:%s:%s/rescue/upper' % (RESCUE_IMAGE, CDIR))],
            [i for i in got if i[0] == 'lxc.rootfs.path'])
        self.assertEqual(
            ('lxc.mount.entry',
             'overlay mnt/rescue overlay lowerdir=%s,upperdir=%s/disk/upper,'
             'workdir=%s/disk/work,create=dir 0 0' % (IMAGE, CDIR, CDIR)),
            got[-1])
        # The rescue image's init gets its own signals.
        self.assertIn(('lxc.signal.halt', 'SIGUSR2'), got)
        self.assertIn(('lxc.signal.reboot', 'SIGTERM'), got)
        # Everything else is the instance's, in the same order.
        unchanged = [i for i in items(own) if i[0] not in (
            'lxc.rootfs.path', 'lxc.signal.halt', 'lxc.signal.reboot')]
        self.assertEqual(unchanged, [i for i in got[:-1] if i[0] not in (
            'lxc.rootfs.path', 'lxc.signal.halt', 'lxc.signal.reboot')])
        self.assertEqual(own.splitlines()[0], text.splitlines()[0])

    def test_directory_root_is_bind_mounted(self):
        own = own_config(CDIR + '/disk')
        text = config.rescue_config(own, CDIR + '/rescue/rootfs', 'sysv',
                                    CDIR)
        self.assertEqual(
            ('lxc.mount.entry',
             '%s/disk mnt/rescue none bind,create=dir 0 0' % CDIR),
            items(text)[-1])

    def test_instance_disks_move_below_the_rescue_mount(self):
        own = own_config(CDIR + '/rootfs', mounts=[
            (CDIR + '/ephemeral0', '/mnt'),
            (CDIR + '/ephemeral1', '/media/ephemeral1')])
        got = items(config.rescue_config(own, CDIR + '/rescue/rootfs',
                                         'sysv', CDIR))
        mounts = [v for k, v in got if k == 'lxc.mount.entry']
        self.assertEqual([
            '%s/rootfs mnt/rescue none bind,create=dir 0 0' % CDIR,
            '%s/ephemeral0 mnt/rescue/mnt none bind,create=dir 0 0' % CDIR,
            '%s/ephemeral1 mnt/rescue/media/ephemeral1 none bind,'
            'create=dir 0 0' % CDIR], mounts[-3:])
        # lxcfs' files stay where they are.
        self.assertIn('/var/lib/lxcfs/proc/meminfo proc/meminfo none '
                      'bind,optional 0 0', mounts)

    def test_config_drive_stays_where_cloud_init_looks(self):
        own = own_config(CDIR + '/rootfs', mounts=[
            (CDIR + '/ephemeral0', '/mnt')], readonly_mounts=[
            (CDIR + '/config-drive', '/config-drive')])
        got = items(config.rescue_config(
            own, CDIR + '/rescue/rootfs', 'sysv', CDIR,
            staying=[CDIR + '/config-drive']))
        mounts = [v for k, v in got if k == 'lxc.mount.entry']
        self.assertIn('%s/config-drive config-drive none bind,ro,create=dir '
                      '0 0' % CDIR, mounts)
        self.assertIn('%s/ephemeral0 mnt/rescue/mnt none bind,create=dir '
                      '0 0' % CDIR, mounts)
        self.assertEqual(1, len([m for m in mounts if 'config-drive' in m]))
        self.assertEqual(3 + 8, len(mounts))

    @ddt.data('overlay:/a,b:/c/upper', 'overlay:/a:/c d/upper',
              'overlay:/a:/b:/c', 'relative/root', '/with\\back',
              '/new\nline')
    def test_paths_a_mount_entry_cannot_hold(self, rootfs):
        self.assertRaises(ValueError, config.rescue_mount_entry, rootfs)

    def test_one_root_only(self):
        self.assertRaises(ValueError, config.rescue_config,
                          'lxc.uts.name = x\n', '/r', 'sysv', CDIR)
