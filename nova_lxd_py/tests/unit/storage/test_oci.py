"""OCI layouts and docker-save archives unpacked for real (run as root).

Images come from :mod:`nova_lxd_py.tests.images.oci`. Every test unpacks
into ``cache/rootfs`` next to a ``host`` directory standing for the rest of
the host, with the guest's root at host id 100000 (GNU tar runs in a user
namespace, so the directories are searchable by "other").
"""

import os
import shutil
import stat
import tarfile
import tempfile

import ddt
import fixtures
from oslo_config import fixture as config_fixture
from oslotest import base

from nova_lxd_py import conf
from nova_lxd_py.storage import formats
from nova_lxd_py.storage.formats import oci
from nova_lxd_py.storage.formats import stream
from nova_lxd_py.tests import guest_image
from nova_lxd_py.tests.images import oci as images
from nova_lxd_py.tests.unit.storage.test_tar import tree

GUEST_ROOT = 100000
HOST = '@HOST@'          # replaced by the test's stand-in for the host


class OCITestCase(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('unpacking with shifted owners needs root')
        self.conf = self.useFixture(config_fixture.Config(conf.CONF))
        # Not oslotest's private temp dir: the guest's root must get in.
        self.top = tempfile.mkdtemp(prefix='nova-lxd-py-oci-',
                                    dir='/var/tmp')
        self.addCleanup(shutil.rmtree, self.top)
        os.chmod(self.top, 0o755)
        self.host = os.path.join(self.top, 'host')
        os.mkdir(self.host)
        with open(os.path.join(self.host, 'secret'), 'wb') as f:
            f.write(b'host secret')
        cache = os.path.join(self.top, 'cache')
        os.mkdir(cache, 0o755)
        self.archive = os.path.join(cache, 'download')
        self.dest = os.path.join(cache, 'rootfs')
        self.work = os.path.join(cache, 'work')
        self.mounts = self.our_mounts()

    def unpack(self, max_bytes=1 << 30):
        os.mkdir(self.work, 0o711)
        target = stream.Target(dest=self.dest, uid=GUEST_ROOT,
                               gid=GUEST_ROOT, max_bytes=max_bytes,
                               label='test image')
        return oci.unpack(self.archive, target, self.work)

    def path(self, rel):
        return os.path.join(self.dest, rel)

    def read(self, rel):
        with open(self.path(rel), 'rb') as f:
            return f.read()

    def assert_refused(self, reason):
        error = self.assertRaises(stream.UnsafeImage, self.unpack)
        self.assertIn(reason, str(error))
        self.assert_host_untouched()
        return error

    def assert_host_untouched(self):
        self.assertEqual({'secret': ('reg', b'host secret')},
                         tree(self.host))
        self.assertEqual(['cache', 'host'], sorted(os.listdir(self.top)))
        self.assertLessEqual(set(os.listdir(os.path.dirname(self.dest))),
                             {'download', 'rootfs', 'work'})
        self.assertEqual(self.mounts, self.our_mounts())

    def our_mounts(self):
        """Mounts below this test's dir (the host may mount elsewhere)."""
        with open('/proc/self/mountinfo') as f:
            return [line for line in f if self.top in line]


@ddt.ddt
class UnpackTest(OCITestCase):

    layers = 2

    def assert_flattened(self, marker, facts, source):
        self.assertEqual(marker.encode(), self.read('etc/image-marker'))
        # Layer 2 replaced, whited out, made opaque, changed a type.
        self.assertEqual(b'layer 2\n', self.read('etc/motd'))
        self.assertFalse(os.path.lexists(self.path('etc/remove-me')))
        self.assertEqual(['new-file'], os.listdir(self.path('opt/app')))
        self.assertEqual(0o750, stat.S_IMODE(os.lstat(
            self.path('opt/app')).st_mode))
        self.assertEqual(b'now a file\n', self.read('srv/replaced'))
        # srv was only a parent in layer 2: layer 1's mode stays.
        self.assertEqual(0o700, stat.S_IMODE(os.lstat(
            self.path('srv')).st_mode))
        self.assertEqual(b'untouched\n', self.read('var/lib/kept'))
        self.assertEqual('/bin/busybox', os.readlink(self.path('sbin/init')))
        found = tree(self.dest)
        self.assertEqual([], [p for p in found
                              if '.wh.' in os.path.basename(p)])
        # Owners shifted into the guest's range, none left at host ids.
        st = os.lstat(self.path('users/u1000/notes'))
        self.assertEqual((GUEST_ROOT + 1000, GUEST_ROOT + 1000),
                         (st.st_uid, st.st_gid))
        owners = {(os.lstat(self.path(p)).st_uid,
                   os.lstat(self.path(p)).st_gid) for p in list(found) + ['']}
        self.assertEqual({(GUEST_ROOT, GUEST_ROOT),
                          (GUEST_ROOT + 1000, GUEST_ROOT + 1000)}, owners)
        self.assertEqual(source, facts['source'])
        self.assertEqual(images.RUNTIME, facts['config'])
        self.assertEqual(self.layers, facts['layers'])
        self.assertIs(False, facts['injected_init'])
        self.assertEqual(images.HOST_ARCH, facts['architecture'])
        self.assertEqual([], os.listdir(self.work))   # scratch dirs gone
        self.assert_host_untouched()

    @ddt.unpack
    @ddt.data(('', ('gzip', 'zstd')), ('', ('', '')), ('gz', ('zstd', '')),
              ('zst', ('gzip', 'gzip')), ('xz', ('', 'gzip')))
    def test_unpack_oci_layout_flattens_layers(self, outer, layers):
        images.write_oci_layout(self.archive, 'oci-marker', outer,
                                layer_compressions=layers)
        self.assert_flattened('oci-marker', self.unpack(), 'oci-layout')

    def test_unpack_docker_save_flattens_layers(self):
        images.write_docker_save(self.archive, 'docker-marker')
        facts = self.unpack()
        self.assert_flattened('docker-marker', facts, 'docker-save')

    @ddt.unpack
    @ddt.data((True, 'oci-layout'), (False, 'docker-save'))
    def test_unpack_docker25_save(self, with_index, source):
        images.write_docker25_save(self.archive, 'docker25', with_index)
        self.layers = 3      # with an empty one
        self.assert_flattened('docker25', self.unpack(), source)

    def test_unpack_nested_index_picks_host_architecture(self):
        images.write_oci_layout(self.archive, 'right arch',
                                other_arches=images.OTHER_ARCHES)
        self.assert_flattened('right arch', self.unpack(), 'oci-layout')

    def test_unpack_multiarch_index_without_host_arch_refused(self):
        images.write_multiarch_index(self.archive)
        error = self.assert_refused(
            'it has no image for this host (linux/%s)' % images.HOST_ARCH)
        for arch in images.OTHER_ARCHES:
            self.assertIn('linux/' + arch, str(error))

    def test_unpack_blob_not_matching_digest_refused(self):
        images.write_bad_digest(self.archive, 'marker')
        self.assert_refused('does not match its digest sha256:')
        self.assertFalse(os.path.exists(self.path('etc/image-marker')))

    def test_unpack_layer_with_dotdot_member_refused(self):
        images.write_dotdot_layer(self.archive)
        self.assert_refused("layer #2 of 2: member '../evil' has an unsafe "
                            "path")
        self.assertFalse(os.path.lexists(os.path.join(self.work, 'evil')))

    def test_unpack_without_init_refused_when_oci_init_unset(self):
        images.write_oci_without_init(self.archive, 'marker')
        self.assert_refused(
            'it has no /sbin/init and [lxc] oci_init is not set, so it '
            'cannot boot as a system container')

    def test_unpack_without_init_gets_oci_init(self):
        self.conf.config(group='lxc', oci_init=guest_image.BUSYBOX)
        images.write_oci_without_init(self.archive, 'marker')
        facts = self.unpack()
        self.assertIs(True, facts['injected_init'])
        st = os.lstat(self.path('sbin/init'))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual((GUEST_ROOT, GUEST_ROOT, 0o755),
                         (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
        with open(guest_image.BUSYBOX, 'rb') as f:
            self.assertEqual(f.read(), self.read('sbin/init'))
        self.assertEqual(b'marker', self.read('etc/image-marker'))

    def test_unpack_unreadable_oci_init_refused(self):
        self.conf.config(group='lxc',
                         oci_init=os.path.join(self.host, 'missing'))
        images.write_oci_without_init(self.archive, 'marker')
        self.assert_refused('[lxc] oci_init (%s) cannot be read'
                            % os.path.join(self.host, 'missing'))

    def test_unpack_layers_share_the_size_cap(self):
        # Each layer alone is under the cap, both together are not (the
        # gzip'd archive is far below it).
        self.write_layers([[images.entry('a', b'x' * 700000)],
                           [images.entry('b', b'y' * 700000)]], 'gzip')
        error = self.assertRaises(stream.UnsafeImage, self.unpack,
                                  max_bytes=1 << 20)
        self.assertIn('layer #2 of 2: it unpacks to more than 1 MiB',
                      str(error))

    def write_layers(self, layers, compression=''):
        blobs = images.Blobs()
        manifest = images.add_image(blobs, [(m, compression)
                                            for m in layers])
        images.write_archive(self.archive,
                             images.layout_files(blobs, [manifest]))


def sym(name, target):
    return ('sym', name, target)


def reg(name, data=b'guest'):
    return ('reg', name, data)


def dirm(name):
    return ('dir', name, None)


@ddt.ddt
class MergeTest(OCITestCase):
    """Layers that try to reach the host through an earlier layer's link.

    The busybox layer goes first (so the image has an init); the layers of
    each case follow it.
    """

    def unpack_layers(self, *layers):
        blobs = images.Blobs()
        members = [images.base_members()]
        for layer in layers:
            members.append([])
            for kind, name, data in layer:
                if kind == 'sym':
                    members[-1].append(images.entry(
                        name, kind=tarfile.SYMTYPE,
                        link=data.replace(HOST, self.host)))
                else:
                    members[-1].append(images.entry(name, data))
        manifest = images.add_image(blobs, [(m, '') for m in members])
        images.write_archive(self.archive,
                             images.layout_files(blobs, [manifest]))
        return self.unpack()

    @ddt.data(
        # Whiteouts and opaque dirs under a lower link to the host.
        [[sym('x', HOST)], [reg('x/.wh.secret', b'')]],
        [[sym('x', HOST)], [reg('x/.wh..wh..opq', b'')]],
        [[sym('x', HOST)], [dirm('x'), reg('x/.wh..wh..opq', b'')]],
        [[dirm('d'), sym('d/x', HOST)], [reg('d/x/.wh.secret', b'')]],
        # Files and dirs written where a lower layer has a link.
        [[sym('x', HOST)], [reg('x/secret', b'overwritten')]],
        [[sym('x', HOST)], [dirm('x'), reg('x/new')]],
        [[sym('x', HOST + '/secret')], [reg('x', b'overwritten')]],
        [[sym('x', '../../host')], [reg('x/secret', b'overwritten')]],
        # A link made by a middle layer, written through by the next.
        [[dirm('x')], [sym('x', HOST)], [reg('x/secret', b'overwritten')]],
        [[dirm('x')], [sym('x', HOST)], [reg('x/.wh.secret', b'')]],
        # Whiteout of a lower link removes the link only.
        [[sym('x', HOST)], [reg('.wh.x', b'')]],
        [[sym('x', HOST + '/secret')], [reg('.wh.x', b'')]],
    )
    def test_merge_never_follows_lower_links(self, layers):
        self.unpack_layers(*layers)
        self.assert_host_untouched()
        self.assertEqual([], [p for p in tree(self.dest)
                              if '.wh.' in os.path.basename(p)])

    def test_merge_replaces_lower_link_with_upper_dir(self):
        self.unpack_layers([sym('x', HOST)], [dirm('x'), reg('x/new')])
        self.assertEqual({'x': ('dir', None), 'x/new': ('reg', b'guest')},
                         {p: v for p, v in tree(self.dest).items()
                          if p.split('/')[0] == 'x'})

    @ddt.data('.wh.', '.wh..', '.wh...')
    def test_merge_whiteout_naming_no_file_refused(self, name):
        error = self.assertRaises(stream.UnsafeImage, self.unpack_layers,
                                  [dirm('etc')], [reg('etc/' + name, b'')])
        self.assertIn('names no file', str(error))
        self.assert_host_untouched()

    def test_merge_opaque_dir_keeps_own_children(self):
        self.unpack_layers([dirm('o'), reg('o/low'), dirm('o/sub'),
                            reg('o/sub/deep')],
                           [dirm('o'), reg('o/.wh..wh..opq', b''),
                            reg('o/up'), dirm('o/sub')])
        self.assertEqual({'o': ('dir', None), 'o/up': ('reg', b'guest'),
                          'o/sub': ('dir', None)},
                         {p: v for p, v in tree(self.dest).items()
                          if p.split('/')[0] == 'o'})

    def test_merge_file_replaced_by_dir_and_back(self):
        self.unpack_layers([reg('a', b'file'), dirm('b'), reg('b/in')],
                           [dirm('a'), reg('a/in'), reg('b', b'file')])
        self.assertEqual({'a': ('dir', None), 'a/in': ('reg', b'guest'),
                          'b': ('reg', b'file')},
                         {p: v for p, v in tree(self.dest).items()
                          if p in ('a', 'a/in', 'b', 'b/in')})


@ddt.ddt
class InitTest(OCITestCase):
    """Where [lxc] oci_init goes when the image has no usable init."""

    def setUp(self):
        super().setUp()
        self.conf.config(group='lxc', oci_init=guest_image.BUSYBOX)

    def unpack_with(self, *members):
        blobs = images.Blobs()
        manifest = images.add_image(blobs, [
            (images.base_members(with_init=False), ''), (list(members), '')])
        images.write_archive(self.archive,
                             images.layout_files(blobs, [manifest]))
        return self.unpack()

    def test_init_dangling_link_replaced(self):
        facts = self.unpack_with(images.entry(
            'sbin/init', kind=tarfile.SYMTYPE,
            link='/lib/systemd/systemd'))
        self.assertTrue(facts['injected_init'])
        self.assertTrue(stat.S_ISREG(os.lstat(self.path('sbin/init'))
                                     .st_mode))
        self.assertFalse(os.path.lexists(self.path('lib/systemd')))

    def test_init_sbin_link_resolved_in_guest(self):
        # merged /usr: /sbin -> usr/sbin, which does not exist yet.
        self.unpack_with(images.entry('.wh.sbin', b''), images.entry(
            'sbin', kind=tarfile.SYMTYPE, link='usr/sbin'))
        st = os.lstat(self.path('usr/sbin/init'))
        self.assertEqual((GUEST_ROOT, GUEST_ROOT, 0o755),
                         (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
        self.assertEqual(GUEST_ROOT, os.lstat(self.path('usr/sbin')).st_uid)
        self.assertTrue(os.path.islink(self.path('sbin')))

    def test_init_absolute_sbin_link_stays_in_guest(self):
        # /sbin -> the host's directory: resolved inside the guest.
        self.unpack_with(images.entry('.wh.sbin', b''), images.entry(
            'sbin', kind=tarfile.SYMTYPE, link=self.host))
        self.assertEqual({'secret': ('reg', b'host secret')},
                         tree(self.host))
        self.assertTrue(os.path.isfile(os.path.join(
            self.dest, self.host.lstrip('/'), 'init')))

    def test_init_that_is_a_directory_refused(self):
        error = self.assertRaises(stream.UnsafeImage, self.unpack_with,
                                  images.entry('sbin/init'))
        self.assertIn('its /sbin/init is not a file', str(error))

    def test_init_symlink_loop_refused(self):
        error = self.assertRaises(
            stream.UnsafeImage, self.unpack_with,
            images.entry('.wh.sbin', b''),
            images.entry('sbin', kind=tarfile.SYMTYPE, link='sbin'))
        self.assertIn('its /sbin is a symlink loop', str(error))


@ddt.ddt
class DetectTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.dir, 'image')

    def detect(self):
        return formats.detect(self.path)

    @ddt.data('', 'gz', 'xz', 'zst')
    def test_detect_oci_layout(self, compression):
        images.write_oci_layout(self.path, 'm', compression)
        self.assertIs(oci, self.detect())

    @ddt.data(images.write_docker_save, images.write_docker25_save,
              lambda path, marker: images.write_docker25_save(
                  path, marker, with_index=False))
    def test_detect_docker_save(self, writer):
        writer(self.path, 'm')
        self.assertIs(oci, self.detect())

    @ddt.data('', 'gz', 'xz')
    def test_detect_not_a_rootfs_tarball(self, compression):
        guest_image.write_tarball(self.path, 'm', compression=compression)
        self.assertIsNot(oci, self.detect())
        self.assertIsNotNone(self.detect())

    @ddt.data(
        # An LXD image, a rootfs with a manifest.json, half a layout.
        [('metadata.yaml', b'architecture: x86_64\n'),
         ('rootfs/sbin/init', b'x')],
        [('manifest.json', b'[]'), ('etc/hostname', b'x')],
        [('etc/hostname', b'x'), ('manifest.json', b'[]')],
        [('index.json', b'{}')],
        [('oci-layout', b'{}'), ('blobs/sha256/' + 'a' * 64, b'x')],
    )
    def test_detect_other_tarballs(self, files):
        for compression in ('', 'gz'):
            images.write_archive(self.path, files, compression)
            with open(self.path, 'rb') as f:
                self.assertFalse(oci.detect(f.read(65536), self.path),
                                 compression)

    def test_detect_compressed_reads_no_further_than_the_cap(self):
        # The blob comes first and is larger than the cap: the names seen
        # so far (blobs by digest) decide.
        data = os.urandom(3 << 20)
        images.write_archive(self.path, [
            ('blobs/sha256/' + 'b' * 64, data),
            ('oci-layout', b'{}'), ('index.json', b'{}')], 'gz')
        self.useFixture(fixtures.MockPatchObject(
            oci, 'DETECT_BYTES', 1 << 20))
        with open(self.path, 'rb') as f:
            self.assertTrue(oci.detect(f.read(65536), self.path))

    @ddt.data(b'', b'\x1f\x8b' + b'\x00' * 100, b'not a tar\n' * 100)
    def test_detect_other_bytes(self, data):
        with open(self.path, 'wb') as f:
            f.write(data)
        self.assertFalse(oci.detect(data, self.path))
