"""LXCDriver.snapshot on the dir and btrfs root-disk backends: every test
of test_snapshot.SnapshotTest again, and what differs on btrfs (a
read-only subvolume snapshot taken while the guest is frozen)."""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import fixtures  # noqa: E402

from nova_lxd_py.storage import backends  # noqa: E402
from nova_lxd_py.storage import frozen_copy  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402

from nova_lxd_py.tests.functional.driver_base import NODE  # noqa: E402
from nova_lxd_py.tests.functional import test_root_disk_btrfs  # noqa: E402
# The module, not the class: a class imported by name would be collected
# (and run) here a second time.
from nova_lxd_py.tests.functional import test_snapshot  # noqa: E402


class DirBackendSnapshotTest(test_snapshot.SnapshotTest):
    """The same on the ``dir`` root-disk backend (a whole tree per guest)."""

    def setUp(self):
        super().setUp()
        self.flags(group='lxc', root_disk_backend='dir')
        self.driver._backend = backends.get('dir')


class BtrfsSnapshotTest(test_snapshot.SnapshotTest):
    """The same on the btrfs backend: a subvolume snapshot taken while the
    guest is frozen, on a loop-mounted btrfs made per test."""

    share_image_cache = False

    def setUp(self):
        super().setUp()
        reason = test_root_disk_btrfs.btrfs_unavailable()
        if reason:
            self.skipTest(reason)
        fs = self.useFixture(test_root_disk_btrfs.LoopBtrfs())
        self.flags(instances_path=fs.path)
        self.flags(group='lxc', root_disk_backend='btrfs',
                   container_path=os.path.join(fs.path, 'containers'),
                   image_cache_path=os.path.join(fs.path, '_base_lxc'))
        self.driver = type(self.driver)(self.driver.virtapi)
        self.driver.init_host(NODE)
        self.fs = fs

    subvolume_uuids = staticmethod(
        test_root_disk_btrfs.BtrfsTestCase.subvolume_uuids)

    def test_changes_during_the_running_copy_are_in_the_snapshot(self):
        # Nothing is copied while the guest runs: the snapshot is taken
        # frozen, is a snapshot of the instance's subvolume, and is gone
        # afterwards.
        instance = self.spawn()
        self.run_in_guest(instance, 'sh', '-c', test_snapshot.WRITER)
        states = []
        real = frozen_copy.subvolume_snapshot

        def subvolume_snapshot(src, dest):
            states.append(container.state(instance.uuid)[0])
            real(src, dest)
            # A snapshot of the instance's root, not a copy.
            states.append(self.subvolume_uuids(dest)[1] ==
                          self.subvolume_uuids(src)[0])

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lxd_py.storage.frozen_copy.subvolume_snapshot',
            subvolume_snapshot))
        subvolumes = self.fs.subvolumes()
        image_id = self.take_snapshot(instance)
        self.assertEqual(['FROZEN', True], states)
        self.assertEqual('RUNNING', container.state(instance.uuid)[0])
        self.assertEqual(subvolumes, self.fs.subvolumes())
        copy = self.boot_snapshot(image_id)
        self.assertLogConsistent(self.run_in_guest(copy, 'cat', '/root/log'))
