"""LXCDriver.snapshot on real containers (run as root).

Glance is driver_base's seam; its ``update`` here stores the uploaded bytes
in a file that becomes a bootable image of its own, so a snapshot is judged
by booting it. The checks on the host: the guest keeps its state (and its
init), nothing stays mounted, running or on disk.
"""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import hashlib  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402
from nova.compute import power_state  # noqa: E402
from nova.compute import task_states  # noqa: E402
from nova import exception as nova_exception  # noqa: E402
from nova.image import glance  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

from nova_lxd_py.storage import frozen_copy  # noqa: E402
from nova_lxd_py.storage import snapshot  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402
from nova_lxd_py.virt import host  # noqa: E402

from nova_lxd_py.tests.functional.driver_base import CONF  # noqa: E402
from nova_lxd_py.tests.functional.driver_base import DriverTestCase  # noqa
from nova_lxd_py.tests.functional.driver_base import wait_until  # noqa: E402

ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'
# A shell builtin in a loop: one write(2) per complete line, as fast as
# the guest can, so a snapshot taken without freezing would catch it
# mid-way far more often than a frozen one ever can.
WRITER = ('i=0; while :; do echo "$i" >> /root/log; i=$((i+1)); done '
          '</dev/null >/dev/null 2>&1 &')
BEFORE = 'written before the snapshot\n'
SETUP = ('mkdir -p /srv/many /srv/dir /srv/sub && '
         'for i in $(seq 200); do echo $i > /srv/many/$i; done && '
         'echo gone > /srv/gone && echo tested > /srv/edit && '
         'echo x > /srv/dir/x && echo m > /srv/mode && echo a > /srv/a && '
         'echo h > /srv/hl && echo d > /srv/sub/deep')
# Each kind of change the frozen pass must catch.
CHANGES = ('rm /srv/gone && printf XXXX | dd of=/srv/edit conv=notrunc '
           '2>/dev/null && rm -r /srv/dir && echo f > /srv/dir && '
           'chmod 600 /srv/mode && mv /srv/a /srv/b && ln /srv/hl /srv/hl2 '
           '&& rm /etc/image-marker && mv /srv/sub /srv/sub2 && '
           'chmod 700 /srv/many && echo new > /srv/new')


class SnapshotTest(DriverTestCase):

    share_image_cache = True

    def setUp(self):
        super().setUp()
        self.uploads = {}
        self.glance_store = os.path.join(self.dirs.path, 'glance-store')
        os.mkdir(self.glance_store)
        glance.API.return_value.update.side_effect = self._glance_update
        self.task_states = []

    def _glance_update(self, context, image_id, image_meta, data=None,
                       purge_props=True):
        # What Glance's client does with ``data``: read it to the end.
        path = os.path.join(self.glance_store, image_id)
        with open(path, 'wb') as f:
            shutil.copyfileobj(data, f, 1 << 20)
        self.uploads[image_id] = (image_meta, purge_props)
        self.images[image_id] = path
        return dict(image_meta, id=image_id, status='active')

    def update_task_state(self, task_state, expected_state=None):
        self.task_states.append((task_state, expected_state))

    def take_snapshot(self, instance):
        image_id = uuidutils.generate_uuid()
        self.driver.snapshot(self.context, instance, image_id,
                             self.update_task_state)
        return image_id

    def members(self, image_id):
        """{name: TarInfo} of the uploaded archive."""
        with open(self.images[image_id], 'rb') as f:
            self.assertEqual(ZSTD_MAGIC, f.read(4))
        data = subprocess.run(['zstd', '-dcq', self.images[image_id]],
                              check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {m.name[2:] if m.name.startswith('./') else m.name: m
                    for m in tar.getmembers()}

    def member_data(self, image_id):
        """{name: bytes} of the archive's regular files."""
        data = subprocess.run(['zstd', '-dcq', self.images[image_id]],
                              check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {m.name[2:]: tar.extractfile(m).read()
                    for m in tar.getmembers() if m.isfile() or m.islnk()}

    def boot_snapshot(self, image_id, hostname='from-snapshot'):
        return self.spawn(self.make_instance(hostname=hostname),
                          image_id=image_id)

    def mounts(self):
        """Mounts of the host that involve this test's directories (other
        work on the host may mount and unmount elsewhere meanwhile)."""
        ours = (CONF.instances_path, CONF.lxc.container_path,
                CONF.lxc.image_cache_path)
        with open('/proc/self/mountinfo') as f:
            return sorted(line for line in f
                          if any(path in line for path in ours))

    def assertNothingLeft(self, instance, mounts_before):
        cdir = container.container_dir(instance.uuid)
        self.assertFalse(os.path.lexists(
            os.path.join(cdir, snapshot.SNAPSHOT_DIR)))
        self.assertEqual(mounts_before, self.mounts())
        self.assertEqual([], [n for n in os.listdir(CONF.instances_path)
                              if n.startswith('.snapshot-')])
        leftovers = []
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    cmdline = f.read()
            except OSError:
                continue
            if cdir.encode() in cmdline and b'lxc-start' not in cmdline \
                    and b'[lxc monitor]' not in cmdline:
                leftovers.append(cmdline)
        self.assertEqual([], leftovers)

    def assertLogConsistent(self, text):
        """Lines 0, 1, 2, ... each complete: a write never torn."""
        self.assertTrue(text.endswith('\n'), text[-50:])
        lines = text.splitlines()
        self.assertGreater(len(lines), 10)
        self.assertEqual([str(i) for i in range(len(lines))], lines)

    # -- the guest's state ---------------------------------------------------

    def test_running_guest_keeps_running_and_snapshot_boots(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c',
                          'printf "%s" > /root/before' % BEFORE)
        self.run_in_guest(instance, 'sh', '-c', WRITER)
        wait_until(lambda: int(self.run_in_guest(
            instance, 'wc', '-l', '/root/log').split()[0]) > 1000,
            what='the guest writer')
        pid = self.init_pid(instance)
        mounts = self.mounts()

        image_id = self.take_snapshot(instance)

        # Still running, same init, and not frozen: the writer goes on.
        self.assertEqual(('RUNNING', pid), container.state(instance.uuid))
        self.assertEqual(power_state.RUNNING, self.state(instance))
        size = os.path.getsize(self._guest_log(instance))
        wait_until(lambda: os.path.getsize(self._guest_log(instance)) > size,
                   what='the writer to go on after the snapshot')
        self.assertEqual(
            [(task_states.IMAGE_PENDING_UPLOAD, None),
             (task_states.IMAGE_UPLOADING, task_states.IMAGE_PENDING_UPLOAD)],
            self.task_states)
        self.assertNothingLeft(instance, mounts)

        meta, purge = self.uploads[image_id]
        self.assertFalse(purge)
        self.assertEqual('raw', meta['disk_format'])
        self.assertEqual('bare', meta['container_format'])
        self.assertEqual('lxc', meta['properties']['img_hv_type'])
        self.assertEqual('exe', meta['properties']['hw_vm_mode'])
        self.assertEqual(os.uname().machine,
                         meta['properties']['architecture'])

        copy = self.boot_snapshot(image_id)
        self.assertEqual(BEFORE, self.run_in_guest(copy, 'cat',
                                                   '/root/before'))
        self.assertEqual('busybox-guest', self.run_in_guest(
            copy, 'cat', '/etc/image-marker'))
        self.assertLogConsistent(self.run_in_guest(copy, 'cat', '/root/log'))
        # The copy is the snapshot's own, not the original's live layer.
        self.assertNotEqual(self._guest_log(instance),
                            self._guest_log(copy))

    def _guest_log(self, instance):
        lxc_state, pid = container.state(instance.uuid)
        return '/proc/%d/root/root/log' % pid

    def test_changes_during_the_running_copy_are_in_the_snapshot(self):
        # The layer is copied while the guest runs, then brought up to
        # date while it is frozen: whatever the guest does in between must
        # be in the snapshot exactly, and nothing else.
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', SETUP)
        # Older than the copy by more than the ctime margin: "stable".
        time.sleep(frozen_copy.CTIME_MARGIN_NS / 1e9 + 0.5)
        states = {'copy': [], 'sync': []}
        real_copy, real_sync = frozen_copy.copy, frozen_copy.sync_dir

        def copy(src, dest, check=True):
            states['copy'].append(container.state(instance.uuid)[0])
            took = real_copy(src, dest, check)
            self.run_in_guest(instance, 'sh', '-c', CHANGES)
            return took

        def sync(*args):
            states['sync'].append(container.state(instance.uuid)[0])
            return real_sync(*args)

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.storage.frozen_copy.copy', copy))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.storage.frozen_copy.sync_dir', sync))
        log = self.useFixture(fixtures.MockPatch(
            'nova_lxd_py.storage.snapshot.LOG')).mock
        image_id = self.take_snapshot(instance)

        self.assertEqual(['RUNNING'], states['copy'])
        self.assertEqual({'FROZEN'}, set(states['sync']))
        self.assertEqual('RUNNING', container.state(instance.uuid)[0])
        figures = log.info.call_args_list[0][0][1]
        self.assertEqual('RUNNING', figures['state'])
        self.assertLess(figures['frozen'], 5)

        members = self.members(image_id)
        listing = self.run_in_guest(instance, 'find', '/srv', '/etc')
        self.assertEqual({line[1:] for line in listing.splitlines()},
                         {n for n in members
                          if n.startswith(('srv', 'etc'))})
        sums = self.run_in_guest(instance, 'sh', '-c',
                                 'find /srv -type f | xargs md5sum')
        data = self.member_data(image_id)
        for line in sums.splitlines():
            digest, path = line.split()
            self.assertEqual(digest, hashlib.md5(
                data[path[1:]]).hexdigest(), path)
        self.assertEqual(0o600, members['srv/mode'].mode)
        self.assertEqual(0o700, members['srv/many'].mode)
        self.assertEqual('XXXXed', data['srv/edit'].decode().strip())
        self.assertTrue(members['srv/dir'].isfile())
        self.assertNotIn('etc/image-marker', members)
        links = {n for n, m in members.items() if m.islnk()}
        self.assertEqual(1, len(links & {'srv/hl', 'srv/hl2'}))

    def test_stopped_guest_stays_stopped_and_its_snapshot_boots(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c',
                          'printf "%s" > /root/before' % BEFORE)
        self.driver.power_off(instance, timeout=0)
        mounts = self.mounts()

        image_id = self.take_snapshot(instance)

        self.assertEqual(('STOPPED', -1), container.state(instance.uuid))
        self.assertNothingLeft(instance, mounts)
        copy = self.boot_snapshot(image_id)
        self.assertEqual(BEFORE, self.run_in_guest(copy, 'cat',
                                                   '/root/before'))
        # The original is intact and starts again.
        self.driver.power_on(self.context, instance, None)
        self.assertEqual(BEFORE, self.run_in_guest(instance, 'cat',
                                                   '/root/before'))

    def test_paused_guest_stays_paused(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c',
                          'printf "%s" > /root/before' % BEFORE)
        pid = self.init_pid(instance)
        self.driver.pause(instance)

        image_id = self.take_snapshot(instance)

        self.assertEqual(('FROZEN', pid), container.state(instance.uuid))
        self.assertEqual(power_state.PAUSED, self.state(instance))
        code, _ = container.run_in_guest(instance.uuid, ['true'], 1)
        self.assertEqual(124, code, 'a command ran in a paused guest')
        self.assertIn('root/before', self.members(image_id))
        self.driver.unpause(instance)
        self.assertEqual(BEFORE, self.run_in_guest(instance, 'cat',
                                                   '/root/before'))

    # -- the tree ------------------------------------------------------------

    def test_snapshot_is_the_tree_the_guest_sees(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'rm', '/etc/image-marker')
        self.run_in_guest(instance, 'sh', '-c',
                          'mkdir -p /srv/a/b && echo x > /srv/a/b/c && '
                          'ln -s /srv/a/b/c /srv/link && ln /srv/a/b/c '
                          '/srv/hard && rm /bin/vi')
        # A dir root on its own file system has mkfs's lost+found, which
        # is host root's: the guest cannot read it and it is left out.
        listing = self.run_in_guest(
            instance, 'sh', '-c', 'find / -xdev -mindepth 1 ! -path '
            '"/lost+found" 2>/dev/null; true')

        image_id = self.take_snapshot(instance)

        members = self.members(image_id)
        seen = {line[1:] for line in listing.splitlines()}
        self.assertEqual(seen, set(members) - {'.', ''})
        # Whiteouts hid what the guest deleted; none is in the archive.
        self.assertNotIn('etc/image-marker', members)
        self.assertNotIn('bin/vi', members)
        self.assertEqual([], [n for n, m in members.items() if m.ischr()])
        # One hard link to the other (which comes first is tar's walk).
        links = {(n, m.linkname) for n, m in members.items() if m.islnk()}
        self.assertIn(links, ({('srv/hard', './srv/a/b/c')},
                              {('srv/a/b/c', './srv/hard')}))
        self.assertEqual('srv/link', [n for n, m in members.items()
                                      if m.issym() and
                                      m.linkname == '/srv/a/b/c'][0])
        copy = self.boot_snapshot(image_id)
        code, _ = container.run_in_guest(copy.uuid,
                                         ['cat', '/etc/image-marker'], 10)
        self.assertNotEqual(0, code)
        self.assertEqual('x\n', self.run_in_guest(copy, 'cat', '/srv/hard'))

    def test_removed_image_directory_is_absent(self):
        instance = self.spawn()
        # In the guest's user namespace the overlay marks the new /etc
        # opaque with user.overlay.* xattrs ('userxattr'; without it: EIO).
        code, out = container.run_in_guest(instance.uuid, [
            'sh', '-c', 'rm -rf /etc && mkdir /etc && echo new > /etc/only '
            '&& mv /bin /bin2 && /bin2/ls /bin2/busybox'], 10)
        self.assertEqual(0, code, out)
        members = self.members(self.take_snapshot(instance))
        self.assertEqual(['etc', 'etc/only'],
                         sorted(n for n in members if n.startswith('etc')))

    def test_opaque_directory_hides_the_image_directory(self):
        # What the guest's overlay writes when it replaces a directory of
        # the image (with 'userxattr', as mounted in a user namespace).
        instance = self.spawn(power_on=False)
        if self.driver._backend.name != 'overlay':
            self.skipTest('a %s root has no layers'
                          % self.driver._backend.name)
        idmap = host.idmap()
        upper = snapshot._source(container.container_dir(instance.uuid))[1]
        etc = os.path.join(upper, 'etc')
        os.mkdir(etc, 0o755)
        os.setxattr(etc, 'user.overlay.opaque', b'y')
        with open(os.path.join(etc, 'only'), 'w') as f:
            f.write('new\n')
        for path in (etc, os.path.join(etc, 'only')):
            os.chown(path, idmap.uid_start, idmap.gid_start)
        members = self.members(self.take_snapshot(instance))
        self.assertEqual(['etc', 'etc/only'],
                         sorted(n for n in members if n.startswith('etc')))
        self.assertIn('bin/busybox', members)

    def test_owners_are_the_guests_not_the_hosts(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c',
                          'echo x > /root/owned && chown 1234:2345 '
                          '/root/owned')
        members = self.members(self.take_snapshot(instance))
        self.assertEqual((1234, 2345), (members['root/owned'].uid,
                                        members['root/owned'].gid))
        idmap = host.idmap()
        for name, member in members.items():
            self.assertLess(member.uid, idmap.size, name)
            self.assertLess(member.gid, idmap.size, name)
        self.assertEqual((0, 0), (members['bin/busybox'].uid,
                                  members['bin/busybox'].gid))
        self.assertEqual((0, 0), (members['root'].uid, members['root'].gid))

    # -- failures ------------------------------------------------------------

    def test_instance_without_container_is_not_running(self):
        instance = self.make_instance()
        self.assertRaises(nova_exception.InstanceNotRunning,
                          self.take_snapshot, instance)
        self.assertEqual({}, self.uploads)
        self.assertEqual([], self.task_states)

    def test_upload_failure_thaws_guest_and_cleans_up(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', WRITER)
        pid = self.init_pid(instance)
        mounts = self.mounts()

        def fail(context, image_id, image_meta, data=None,
                 purge_props=True):
            data.read(4096)
            raise nova_exception.ImageNotAuthorized(image_id=image_id)

        glance.API.return_value.update.side_effect = fail
        self.assertRaises(nova_exception.ImageNotAuthorized,
                          self.take_snapshot, instance)

        self.assertEqual(('RUNNING', pid), container.state(instance.uuid))
        self.run_in_guest(instance, 'true')
        self.assertNothingLeft(instance, mounts)

    def test_compression_follows_the_option(self):
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', 'echo kept > /root/kept')
        for option, magic in (('none', None), ('zstd-fast', ZSTD_MAGIC)):
            self.flags(group='lxc', snapshot_compression=option)
            image_id = self.take_snapshot(instance)
            with open(self.images[image_id], 'rb') as f:
                head = f.read(512)
            if magic:
                self.assertEqual(magic, head[:4])
            else:
                self.assertEqual(b'ustar', head[257:262])   # plain tar
            copy = self.boot_snapshot(image_id, hostname='copy-' + option)
            self.assertEqual('kept\n', self.run_in_guest(
                copy, 'cat', '/root/kept'))

    def test_failed_stream_never_completes_an_upload(self):
        instance = self.spawn()
        mounts = self.mounts()
        # A compressor that dies after some output: the reader must not
        # take the early end for the end of a good stream.
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.storage.snapshot.COMPRESSORS',
            {'zstd': ('sh', '-c', 'head -c 1000; exit 3')}))
        error = self.assertRaises(snapshot.SnapshotFailed,
                                  self.take_snapshot, instance)
        self.assertIn('zstd: exit status 3', str(error))
        self.assertEqual({}, self.uploads)
        self.assertEqual('RUNNING', container.state(instance.uuid)[0])
        self.assertNothingLeft(instance, mounts)

    def test_instance_deleted_during_snapshot_is_not_found(self):
        instance = self.spawn()
        real_take = snapshot.take

        def take_then_delete(name):
            taken = real_take(name)
            self.driver.destroy(self.context, instance, None)
            return taken

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.storage.snapshot.take', take_then_delete))
        self.assertRaises(nova_exception.InstanceNotFound,
                          self.take_snapshot, instance)
        self.assertEqual({}, self.uploads)
        self.assertEqual([], self.container_dirs())

    def test_leftover_of_a_killed_snapshot_is_replaced(self):
        instance = self.spawn()
        cdir = container.container_dir(instance.uuid)
        stale = os.path.join(cdir, snapshot.SNAPSHOT_DIR, snapshot.LAYER,
                             'stale')
        os.makedirs(stale)
        members = self.members(self.take_snapshot(instance))
        self.assertNotIn('stale', members)
        self.assertFalse(os.path.lexists(os.path.dirname(
            os.path.dirname(stale))))
