"""The btrfs backend's pure helpers (no btrfs needed)."""

import os
import subprocess

import fixtures
from oslotest import base

from nova_lxd_py.storage.backends import btrfs

MAGIC = btrfs.BTRFS_SUPER_MAGIC
EXT4 = 0xEF53
A = '7d6e5459-6787-4b55-888f-eb74524f5909'
B = '0f0e5459-6787-4b55-888f-eb74524f5909'


class PlacementProblemTest(base.BaseTestCase):

    def test_one_btrfs_file_system(self):
        self.assertEqual('', btrfs.placement_problem(
            {'container_path': (MAGIC, A), 'image_cache_path': (MAGIC, A)}))

    def test_not_btrfs_names_the_option_and_magic(self):
        self.assertEqual(
            '[lxc] image_cache_path is not on a btrfs file system (statfs '
            'magic 0xef53)',
            btrfs.placement_problem({'container_path': (MAGIC, A),
                                     'image_cache_path': (EXT4, '')}))

    def test_two_btrfs_file_systems(self):
        problem = btrfs.placement_problem(
            {'container_path': (MAGIC, A), 'image_cache_path': (MAGIC, B)})
        self.assertIn('container_path and image_cache_path are on '
                      'different btrfs file systems', problem)
        self.assertIn(A, problem)
        self.assertIn(B, problem)


class QgroupLimitArgTest(base.BaseTestCase):

    def test_gib(self):
        self.assertEqual('20G', btrfs.qgroup_limit_arg(20))

    def test_no_size_is_no_limit_not_a_zero_limit(self):
        # create() sets no limit for root_gb 0; a 0 limit would refuse
        # every write.
        self.assertRaises(ValueError, btrfs.qgroup_limit_arg, 0)


class FileSystemTest(base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def test_magic_is_statfs_f_type(self):
        out = subprocess.run(['stat', '-f', '-c', '%t', self.dir],
                             capture_output=True, text=True, check=True)
        self.assertEqual(int(out.stdout, 16), btrfs.fs_magic(self.dir))

    def test_magic_of_a_missing_path(self):
        e = self.assertRaises(OSError, btrfs.fs_magic,
                              os.path.join(self.dir, 'missing'))
        self.assertEqual(2, e.errno)

    def test_existing_ancestor(self):
        self.assertEqual(self.dir, btrfs.existing_ancestor(
            os.path.join(self.dir, 'a', 'b')))
        self.assertEqual(self.dir, btrfs.existing_ancestor(self.dir))

    def test_uuid_of_another_file_system_is_refused(self):
        if btrfs.fs_magic(self.dir) == MAGIC:
            self.skipTest('the temp dir is on btrfs')
        self.assertRaises(OSError, btrfs.fs_uuid, self.dir)

    def test_plain_directory_is_no_subvolume(self):
        self.assertFalse(btrfs.is_subvolume(self.dir))
        self.assertFalse(btrfs.is_subvolume(os.path.join(self.dir, 'x')))
