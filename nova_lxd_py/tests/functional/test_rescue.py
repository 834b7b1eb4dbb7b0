"""Rescue and unrescue on real unprivileged containers, for each backend.

The rescue guest is another busybox image (its /etc/image-marker says
``rescue-image``) booted under the instance's name; it must see the
instance's root read-write at /mnt/rescue, and what it changes there must be
in the instance when it boots on its own root again.
"""

import os

import ddt
from nova.compute import power_state
from nova import exception as nova_exception

from nova_lxd_py.storage import accounts
from nova_lxd_py.storage.backends import disk
from nova_lxd_py.tests import fixtures as lxc_fixtures
from nova_lxd_py.tests.functional import driver_base
from nova_lxd_py.tests.functional import test_root_disk
from nova_lxd_py.tests.functional import test_root_disk_btrfs
from nova_lxd_py.virt import container

RESCUE_IMAGE = 'b0b0b0b0-0000-4000-8000-00000000e5c0'
RESCUE_MARKER = 'rescue-image'
OWN_MARKER = 'busybox-guest'
MISSING_IMAGE = 'b0b0b0b0-0000-4000-8000-0000000000ff'


@ddt.ddt
class RescueTest(driver_base.DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        self.images[RESCUE_IMAGE] = lxc_fixtures.guest_tarball(RESCUE_MARKER)

    def use(self, backend):
        self.flags(group='lxc', root_disk_backend=backend)
        self.driver = type(self.driver)(self.driver.virtapi)
        self.driver.init_host(driver_base.NODE)

    def make(self, root_gb=1, ephemeral_gb=0):
        instance = self.make_instance()
        instance.flavor.root_gb = root_gb
        instance.flavor.ephemeral_gb = ephemeral_gb
        return instance

    def rescue(self, instance, image_id=RESCUE_IMAGE, password=None,
               boots=2):
        self.driver.rescue(self.context, instance, None,
                           self.image_meta(image_id), password, None, None)
        self.wait_booted(instance, times=boots)

    def unrescue(self, instance, boots=3):
        self.driver.unrescue(self.context, instance)
        self.wait_booted(instance, times=boots)

    def cat(self, instance, path):
        return self.run_in_guest(instance, 'cat', path)

    def config_text(self, instance):
        with open(os.path.join(container.container_dir(instance.uuid),
                               container.CONFIG_FILE)) as f:
            return f.read()

    def assertNotRescued(self, instance):
        cdir = container.container_dir(instance.uuid)
        self.assertFalse(os.path.lexists(os.path.join(cdir, 'rescue')))
        self.assertFalse(os.path.lexists(
            os.path.join(cdir, container.RESCUE_KEPT)))

    @ddt.data('overlay', 'dir')
    def test_rescue_system_writes_stop_at_root_gb(self, backend):
        self.use(backend)
        instance = self.spawn(self.make(root_gb=1))
        self.rescue(instance)
        rdir = os.path.join(container.container_dir(instance.uuid), 'rescue')
        self.assertEqual(1 << 30, os.path.getsize(disk.image_path(rdir)))
        code, out = container.run_in_guest(
            instance.uuid, ['sh', '-c', test_root_disk.FILL], 120)
        self.assertIn('No space left on device', out)
        self.assertNotIn('dd exit 0', out)
        self.assertLess(os.stat(disk.image_path(rdir)).st_blocks * 512,
                        1100 << 20)
        self.unrescue(instance)
        # The rescue disk is gone; the instance's own is still mounted.
        self.assertFalse(os.path.lexists(rdir))
        self.assertEqual(1, len(test_root_disk.loop_devices(instance.uuid)))
        self.run_in_guest(instance, 'test', '!', '-e', '/root/fill')

    @ddt.data(('overlay', 1), ('overlay', 0), ('dir', 1), ('dir', 0))
    @ddt.unpack
    def test_rescue_fixes_the_root_and_unrescue_boots_it(
            self, backend, root_gb):
        self.use(backend)
        instance = self.spawn(self.make(root_gb))
        self.run_in_guest(instance, 'sh', '-c', 'echo broken > /root/before'
                          ' && rm /etc/group')
        own_config = self.config_text(instance)

        self.rescue(instance)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual(RESCUE_MARKER,
                         self.cat(instance, '/etc/image-marker'))
        self.assertEqual(OWN_MARKER,
                         self.cat(instance, '/mnt/rescue/etc/image-marker'))
        self.assertEqual('broken\n',
                         self.cat(instance, '/mnt/rescue/root/before'))
        # Still unprivileged, and the instance's files are the guest's root.
        self.assertEqual(100000, driver_base.host_uid(
            self.init_pid(instance)))
        self.assertEqual('0 0', self.run_in_guest(
            instance, 'stat', '-c', '%u %g',
            '/mnt/rescue/root/before').strip())
        # A file the instance deleted from its image stays deleted.
        self.run_in_guest(instance, 'test', '!', '-e', '/mnt/rescue/etc/group')
        self.run_in_guest(instance, 'test', '-e', '/etc/group')
        self.run_in_guest(instance, 'sh', '-c',
                          'echo fixed > /mnt/rescue/root/fixed && '
                          'rm /mnt/rescue/root/before && '
                          'mv /mnt/rescue/etc/image-marker /mnt/rescue/root/'
                          ' && echo rescue-only > /root/rescue-only')
        self.assertEqual(own_config, container.kept_config(instance.uuid))

        self.unrescue(instance)
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual('fixed\n', self.cat(instance, '/root/fixed'))
        self.assertEqual(OWN_MARKER, self.cat(instance, '/root/image-marker'))
        self.assertEqual('.\n..\nfixed\nimage-marker\n',
                         self.run_in_guest(instance, 'ls', '-a', '/root'))
        self.run_in_guest(instance, 'test', '!', '-e', '/etc/image-marker')
        self.run_in_guest(instance, 'test', '!', '-e', '/etc/group')
        # The mount point was made in the rescue root, not in the instance's.
        self.run_in_guest(instance, 'test', '!', '-e', '/mnt')
        # The rescue guest was asked to shut down, not killed.
        self.assertEqual(1, self.console(instance).count(
            driver_base.SHUTTING_DOWN))
        self.assertNotRescued(instance)
        self.assertEqual(own_config, self.config_text(instance))

    def test_rescue_with_the_instance_image(self):
        instance = self.spawn(self.make())
        self.run_in_guest(instance, 'sh', '-c', 'echo mine > /root/before')
        self.rescue(instance, image_id=driver_base.BUSYBOX_IMAGE)
        # A fresh root of the same image, the changed one below it.
        self.assertEqual(OWN_MARKER, self.cat(instance, '/etc/image-marker'))
        self.run_in_guest(instance, 'test', '!', '-e', '/root/before')
        self.assertEqual('mine\n',
                         self.cat(instance, '/mnt/rescue/root/before'))
        self.run_in_guest(instance, 'sh', '-c',
                          'echo fixed > /mnt/rescue/root/fixed')
        self.unrescue(instance)
        self.assertEqual('mine\nfixed\n', self.run_in_guest(
            instance, 'cat', '/root/before', '/root/fixed'))

    def test_rescue_of_a_privileged_guest(self):
        self.flags(group='lxc', allow_privileged=True)
        instance = self.make_instance(**{'lxc:privileged': 'true'})
        self.spawn(instance)
        self.run_in_guest(instance, 'sh', '-c', 'echo priv > /root/before')
        self.rescue(instance)
        self.assertEqual(0, driver_base.host_uid(self.init_pid(instance)))
        self.assertEqual(RESCUE_MARKER,
                         self.cat(instance, '/etc/image-marker'))
        self.assertEqual('priv\n',
                         self.cat(instance, '/mnt/rescue/root/before'))
        self.run_in_guest(instance, 'sh', '-c',
                          'echo fixed > /mnt/rescue/root/fixed')
        self.unrescue(instance)
        self.assertEqual('priv\nfixed\n', self.run_in_guest(
            instance, 'cat', '/root/before', '/root/fixed'))
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))

    def test_rescue_of_a_stopped_guest(self):
        instance = self.spawn(self.make(), power_on=False)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
        self.rescue(instance, boots=1)
        self.assertEqual(RESCUE_MARKER,
                         self.cat(instance, '/etc/image-marker'))
        self.run_in_guest(instance, 'sh', '-c',
                          'echo fixed > /mnt/rescue/root/fixed')
        self.unrescue(instance, boots=2)
        self.assertEqual(OWN_MARKER, self.cat(instance, '/etc/image-marker'))
        self.assertEqual('fixed\n', self.cat(instance, '/root/fixed'))

    def test_rescued_guest_restarts_as_the_rescue_system(self):
        # A host reboot during a rescue: power_on starts what is defined.
        instance = self.spawn(self.make())
        self.rescue(instance)
        self.driver.power_off(instance)
        self.driver.power_on(self.context, instance, None)
        self.wait_booted(instance, times=3)
        self.assertEqual(RESCUE_MARKER,
                         self.cat(instance, '/etc/image-marker'))
        self.assertEqual(OWN_MARKER,
                         self.cat(instance, '/mnt/rescue/etc/image-marker'))
        self.unrescue(instance, boots=4)
        self.assertEqual(OWN_MARKER, self.cat(instance, '/etc/image-marker'))

    def test_rescue_sets_the_root_password(self):
        instance = self.spawn(self.make())
        own_passwd = self.cat(instance, '/etc/passwd')
        self.rescue(instance, password='S3cret rescue')
        # The guest image has an /etc/shadow: the hash is there.
        fields = self.cat(instance, '/etc/shadow').split('\n')[0].split(':')
        self.assertEqual('root', fields[0])
        hashed = fields[1]
        self.assertTrue(hashed.startswith('$6$'), hashed)
        # busybox in the guest computes the same hash: the guest accepts it.
        salt = hashed.split('$')[2]
        self.assertEqual(hashed, self.run_in_guest(
            instance, 'mkpasswd', '-m', 'sha512', 'S3cret rescue',
            salt).strip())
        self.assertNotEqual(hashed, self.run_in_guest(
            instance, 'mkpasswd', '-m', 'sha512', 'wrong', salt).strip())
        self.assertEqual(own_passwd,
                         self.cat(instance, '/mnt/rescue/etc/passwd'))
        self.unrescue(instance)
        self.assertEqual(own_passwd, self.cat(instance, '/etc/passwd'))

    def test_ephemeral_disk_is_below_the_rescue_mount(self):
        instance = self.spawn(self.make(ephemeral_gb=1))
        self.run_in_guest(instance, 'sh', '-c', 'echo data > /mnt/eph-file')
        self.rescue(instance)
        self.assertEqual('data\n',
                         self.cat(instance, '/mnt/rescue/mnt/eph-file'))
        self.assertEqual('rescue\n', self.run_in_guest(instance, 'ls', '/mnt'))
        self.run_in_guest(instance, 'sh', '-c',
                          'echo more > /mnt/rescue/mnt/eph-more')
        self.unrescue(instance)
        self.assertEqual('data\nmore\n', self.run_in_guest(
            instance, 'cat', '/mnt/eph-file', '/mnt/eph-more'))
        self.assertNotIn('rescue', self.run_in_guest(instance, 'ls', '/mnt'))

    def test_failed_rescue_leaves_the_instance_on_its_root(self):
        instance = self.spawn(self.make())
        self.run_in_guest(instance, 'sh', '-c', 'echo kept > /root/file')
        self.assertRaises(nova_exception.ImageNotFound, self.driver.rescue,
                          self.context, instance, None,
                          self.image_meta(MISSING_IMAGE), None, None, None)
        self.assertEqual(power_state.SHUTDOWN, self.state(instance))
        self.assertNotRescued(instance)
        self.driver.power_on(self.context, instance, None)
        self.wait_booted(instance, times=2)
        self.assertEqual(OWN_MARKER, self.cat(instance, '/etc/image-marker'))
        self.assertEqual('kept\n', self.cat(instance, '/root/file'))

    def test_unrescue_again_after_it_is_done_is_harmless(self):
        instance = self.spawn(self.make())
        self.rescue(instance)
        self.unrescue(instance)
        pid = self.init_pid(instance)
        self.driver.unrescue(self.context, instance)
        self.assertEqual(pid, self.init_pid(instance))
        self.assertEqual(OWN_MARKER, self.cat(instance, '/etc/image-marker'))

    @ddt.data(('overlay', 1), ('overlay', 0), ('dir', 1), ('dir', 0))
    @ddt.unpack
    def test_destroy_while_rescued_leaves_nothing(self, backend, root_gb):
        self.use(backend)
        instance = self.spawn(self.make(root_gb, ephemeral_gb=1))
        self.rescue(instance)
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual([], test_root_disk.loop_devices(instance.uuid))
        self.assertEqual('UNDEFINED', container.state(instance.uuid)[0])


class RescuePasswordTest(driver_base.DriverTestCase):
    """accounts.set_password on trees made here (no container)."""

    def tree(self, *files):
        conf = driver_base.CONF.lxc
        image = os.path.join(conf.image_cache_path, 'image', 'rootfs')
        top = os.path.join(conf.container_path, 'some-uuid', 'upper')
        os.makedirs(os.path.join(image, 'etc'))
        os.makedirs(top)
        for name, text, mode in files:
            path = os.path.join(image, name)
            with open(path, 'w') as f:
                f.write(text)
            os.chown(path, 100000, 100042)
            os.chmod(path, mode)
        return image, top

    def test_shadow_wins_and_keeps_owner_and_mode(self):
        image, top = self.tree(
            ('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n', 0o644),
            ('etc/shadow', 'root:*:19000:0:99999:7:::\n'
                           'daemon:*:19000:0:99999:7:::\n', 0o640))
        hashed = accounts.hash_password('pw')
        self.assertEqual('/etc/shadow', accounts.set_password(
            image, top, 'root', hashed))
        with open(os.path.join(top, 'etc', 'shadow')) as f:
            lines = f.read().split('\n')
        root = lines[0].split(':')
        self.assertEqual(hashed, root[1])
        self.assertGreater(int(root[2]), 19000)
        self.assertEqual('daemon:*:19000:0:99999:7:::', lines[1])
        st = os.stat(os.path.join(top, 'etc', 'shadow'))
        self.assertEqual((100000, 100042, 0o640),
                         (st.st_uid, st.st_gid, st.st_mode & 0o7777))
        self.assertFalse(os.path.exists(os.path.join(top, 'etc', 'passwd')))
        # The image itself is untouched.
        with open(os.path.join(image, 'etc', 'shadow')) as f:
            self.assertIn('root:*:', f.read())

    def test_a_link_in_the_image_is_followed_inside_it(self):
        image, top = self.tree(
            ('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n', 0o644))
        os.makedirs(os.path.join(image, 'usr', 'etc'))
        os.rename(os.path.join(image, 'etc', 'passwd'),
                  os.path.join(image, 'usr', 'etc', 'passwd'))
        os.symlink('/usr/etc/passwd', os.path.join(image, 'etc', 'passwd'))
        self.assertEqual('/usr/etc/passwd', accounts.set_password(
            image, top, 'root', 'HASH'))
        with open(os.path.join(top, 'usr', 'etc', 'passwd')) as f:
            self.assertEqual('root:HASH:0:0:root:/root:/bin/sh\n', f.read())

    def test_no_root_account(self):
        image, top = self.tree(
            ('etc/passwd', 'daemon:x:1:1::/:/bin/false\n', 0o644))
        self.assertEqual('', accounts.set_password(image, top, 'root', 'H'))
        self.assertEqual([], os.listdir(top))


class BtrfsRescueTest(test_root_disk_btrfs.BtrfsTestCase):
    """The rescue root is a snapshot too; its subvolume and qgroup go."""

    def setUp(self):
        super().setUp()
        self.images[RESCUE_IMAGE] = lxc_fixtures.guest_tarball(RESCUE_MARKER)

    def rescue(self, instance, boots):
        self.driver.rescue(self.context, instance, None,
                           self.image_meta(RESCUE_IMAGE), None, None, None)
        self.wait_booted(instance, times=boots)
        rescue_root = os.path.join(container.container_dir(instance.uuid),
                                   'rescue', 'rootfs')
        self.assertIn(os.path.relpath(rescue_root, self.fs.path),
                      self.fs.subvolumes())
        return '0/%d' % int(test_root_disk_btrfs.run(
            'btrfs', 'inspect-internal', 'rootid', rescue_root))

    def test_rescue_and_unrescue(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', 'echo broken > /root/before')
        rescue_qgroup = self.rescue(instance, boots=2)
        self.assertEqual(RESCUE_MARKER, self.run_in_guest(
            instance, 'cat', '/etc/image-marker'))
        self.assertEqual('broken\n', self.run_in_guest(
            instance, 'cat', '/mnt/rescue/root/before'))
        self.run_in_guest(instance, 'sh', '-c',
                          'echo fixed > /mnt/rescue/root/fixed')
        self.driver.unrescue(self.context, instance)
        self.wait_booted(instance, times=3)
        self.assertEqual('broken\nfixed\n', self.run_in_guest(
            instance, 'cat', '/root/before', '/root/fixed'))
        self.assertEqual(
            ['containers/%s/rootfs' % instance.uuid],
            [s for s in self.fs.subvolumes() if s.startswith('containers/')])
        self.assertNotIn(rescue_qgroup, self.fs.qgroups())

    def test_destroy_while_rescued(self):
        instance = self.spawn()
        qgroup = self.qgroup(instance)
        rescue_qgroup = self.rescue(instance, boots=2)
        self.driver.destroy(self.context, instance, None)
        self.assert_gone(instance, qgroup)
        self.assertEqual([], [s for s in self.fs.subvolumes()
                              if s.startswith('containers/')])
        self.assertNotIn(rescue_qgroup, self.fs.qgroups())
