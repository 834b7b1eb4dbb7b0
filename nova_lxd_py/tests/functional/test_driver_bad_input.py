"""Hostile and bad input to LXCDriver on real containers (run as root):
clear Nova errors and nothing left behind; see driver_base."""
import os
import subprocess

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import io  # noqa: E402,I100
import tarfile  # noqa: E402

import fixtures  # noqa: E402
from nova.compute import power_state  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from oslo_utils.fixture import uuidsentinel  # noqa: E402

from nova_lxd_py import exception  # noqa: E402
from nova_lxd_py.tests import fixtures as lxc_fixtures  # noqa: E402
from nova_lxd_py.tests import guest_image  # noqa: E402

from nova_lxd_py.tests.functional.driver_base import BUSYBOX_IMAGE  # noqa
from nova_lxd_py.tests.functional.driver_base import CONF  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import DriverTestCase  # noqa
from nova_lxd_py.tests.functional.driver_base import host_uid  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import SHUTTING_DOWN  # noqa


def hostile_tarball(path, extra_members):
    """A bootable busybox rootfs followed by ``extra_members``."""
    with tarfile.open(path, 'w') as tar:
        for info, data in guest_image.busybox_members('hostile'):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for info, data in extra_members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, kind=tarfile.REGTYPE, data=None, link=''):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, data


class BadInputTest(DriverTestCase):
    """Refused requests leave nothing behind: no container, no cache entry,
    no file outside the image."""

    def setUp(self):
        super().setUp()
        # Stands for the rest of the host, outside every directory we own.
        self.outside = self.useFixture(fixtures.TempDir()).path
        with open(os.path.join(self.outside, 'secret'), 'w') as f:
            f.write('host secret')
        self.files = self.useFixture(fixtures.TempDir()).path

    def add_image(self, name, path):
        image_id = getattr(uuidsentinel, name)
        self.images[image_id] = path
        return image_id

    def assert_nothing_left(self, instance):
        self.assertEqual([], self.cache_entries())
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual(['secret'], os.listdir(self.outside))
        self.assertEqual(1, os.stat(os.path.join(self.outside,
                                                 'secret')).st_nlink)
        self.assertNotIn(instance.uuid, self.driver.list_instance_uuids())

    def assert_refused(self, image_id, *reasons, **glance):
        instance = self.make_instance()
        e = self.assertRaises(nova_exception.ImageUnacceptable, self.spawn,
                              instance, image_id, **glance)
        for reason in reasons:
            self.assertIn(reason, str(e))
        self.assert_nothing_left(instance)

    def test_spawn_unknown_bytes_refused(self):
        path = os.path.join(self.files, 'notes.txt')
        with open(path, 'wb') as f:
            f.write(b'this is not an image\n' * 1000)
        self.assert_refused(self.add_image('text', path),
                            'none of the formats this driver takes')

    def test_spawn_checksum_mismatch_refused(self):
        image_id = self.add_image('altered', self.images[BUSYBOX_IMAGE])
        self.glance_records[image_id] = {'os_hash_algo': 'sha512',
                                         'os_hash_value': 'ab' * 64}
        self.assert_refused(image_id, "do not match Glance's sha512")

    def test_spawn_format_hint_mismatch_refused(self):
        image_id = self.add_image('hint', self.images[BUSYBOX_IMAGE])
        self.assert_refused(image_id, 'tarball image', 'disk_format=qcow2',
                            disk_format='qcow2')
        self.assert_refused(image_id, 'tarball image',
                            'container_format=docker',
                            container_format='docker')

    def test_spawn_disabled_format_refused(self):
        self.flags(group='lxc', image_formats=['qcow2', 'raw'])
        self.assert_refused(self.add_image('off', self.images[BUSYBOX_IMAGE]),
                            'this host does not take',
                            'image_formats = qcow2, raw')

    def test_spawn_decompression_bomb_stops_at_root_disk(self):
        # 1.1 GiB of zeros in about a megabyte of zstd, for a 1 GB disk.
        path = os.path.join(self.files, 'bomb.tar.zst')
        size = 1100 << 20
        info = tarfile.TarInfo('zeros')
        info.size = size
        with open(path, 'wb') as out:
            zstd = subprocess.Popen(['zstd', '-q', '-1', '-c'],
                                    stdin=subprocess.PIPE, stdout=out)
            zstd.stdin.write(info.tobuf(tarfile.GNU_FORMAT))
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                zstd.stdin.write(block)
            zstd.stdin.write(bytes(1024))
            zstd.stdin.close()
            self.assertEqual(0, zstd.wait())
        self.assertLess(os.path.getsize(path), 2 << 20)
        self.assert_refused(self.add_image('bomb', path),
                            'unpacks to more than 1024 MiB')

    def test_spawn_truncated_tarball_refused(self):
        path = os.path.join(self.files, 'cut.tar.gz')
        with open(self.images[BUSYBOX_IMAGE], 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data[:len(data) // 2])
        self.assert_refused(self.add_image('cut', path),
                            'corrupt or truncated')

    def test_spawn_tarball_without_init_refused(self):
        self.assert_refused(
            self.add_image('noinit', lxc_fixtures.guest_tarball(
                'no-init', with_init=False, compression='')),
            'no /sbin/init')

    def test_spawn_path_traversal_refused(self):
        climb = '../' * 40 + self.outside.lstrip('/') + '/pwned'
        path = hostile_tarball(os.path.join(self.files, 'climb.tar'),
                               [member(climb, data=b'x')])
        self.assert_refused(self.add_image('climb', path), 'unsafe path')

    def test_spawn_short_path_traversal_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'up.tar'),
                               [member('../x', data=b'x')])
        self.assert_refused(self.add_image('up', path), 'unsafe path')

    def test_spawn_absolute_path_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'abs.tar'), [
            member(os.path.join(self.outside, 'pwned'), data=b'x'),
            member('/etc/x', data=b'x')])
        self.assert_refused(self.add_image('abs', path), 'unsafe path')

    def test_spawn_write_through_symlink_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'sym.tar'), [
            member('escape', tarfile.SYMTYPE, link=self.outside),
            member('escape/pwned', data=b'x')])
        self.assert_refused(self.add_image('sym', path),
                            'written through a symlink')

    def test_spawn_hard_link_through_symlink_refused(self):
        path = hostile_tarball(os.path.join(self.files, 'lnk.tar'), [
            member('escape', tarfile.SYMTYPE, link=self.outside),
            member('stolen', tarfile.LNKTYPE, link='escape/secret')])
        self.assert_refused(self.add_image('lnk', path), 'leaves the tree')

    def test_spawn_download_failure_leaves_nothing(self):
        image_id = self.add_image('gone', None)

        def gone():
            raise nova_exception.ImageNotFound(image_id=image_id)

        self.images[image_id] = gone
        instance = self.make_instance()
        self.assertRaises(nova_exception.ImageNotFound, self.spawn, instance,
                          image_id)
        self.assert_nothing_left(instance)

    def test_spawn_with_unpluggable_port_refused_before_anything(self):
        # A port without a VIF type (unbound): nothing could plug it.
        instance = self.make_instance()
        self.assertRaises(
            exception.VifTypeNotSupported, self.driver.spawn, self.context,
            instance, self.image_meta(), [], None, {},
            network_info=[{'id': uuidsentinel.port}])
        self.assertEqual(0, self.fetch.call_count)
        self.assertFalse(os.path.exists(CONF.lxc.container_path))

    def test_spawn_privileged_not_allowed(self):
        instance = self.make_instance(**{'lxc:privileged': 'true'})
        self.assertRaises(exception.PrivilegedNotAllowed, self.spawn,
                          instance)
        # Refused before anything was fetched or created.
        self.assertEqual(0, self.fetch.call_count)
        self.assertFalse(os.path.exists(CONF.lxc.image_cache_path))
        self.assertFalse(os.path.exists(CONF.lxc.container_path))

    def test_spawn_without_subordinate_ids(self):
        self.flags(group='lxc', idmap_user='no-such-user-nova-lxd-py')
        instance = self.make_instance()
        self.assertRaises(exception.NoSubordinateIds, self.spawn, instance)
        self.assertEqual(0, self.fetch.call_count)
        self.assertFalse(os.path.exists(CONF.lxc.image_cache_path))
        self.assertFalse(os.path.exists(CONF.lxc.container_path))

    def test_spawn_failed_start_leaves_nothing(self):
        # A seccomp policy liblxc cannot parse makes the start itself fail,
        # after the root file system and the config were made.
        policy = os.path.join(self.files, 'broken.seccomp')
        with open(policy, 'w') as f:
            f.write('this is not a seccomp policy\n')
        self.flags(group='lxc', seccomp_profile=policy)
        instance = self.make_instance()
        self.assertRaises(exception.ContainerStartFailed, self.spawn,
                          instance)
        self.assertEqual([], self.container_dirs())
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
        self.assertEqual([], self.driver.list_instance_uuids())
        # The image itself was fine: it stays cached for the next spawn.
        self.assertEqual(1, len(self.cache_entries()))


class PrivilegedTest(DriverTestCase):

    def test_spawn_privileged_when_allowed(self):
        self.flags(group='lxc', allow_privileged=True)
        instance = self.spawn(self.make_instance(
            **{'lxc:privileged': 'true'}))
        self.assertEqual(power_state.RUNNING, self.state(instance))
        self.assertEqual(0, host_uid(self.init_pid(instance)))
        self.assertEqual('0\n', self.run_in_guest(instance, 'id', '-u'))
        self.driver.destroy(self.context, instance, None)
        self.assertEqual([], lxc_fixtures.host_leftovers(instance.uuid))
