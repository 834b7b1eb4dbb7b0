"""The criu that liblxc runs for a restore: its rewrite of liblxc's
arguments, and the console keeper's log rotation."""

import os
import pty
import threading
import time

import fixtures
from oslotest import base

from nova_lxd_py.virt import console_keeper
from nova_lxd_py.virt import criu_shim

# What liblxc 5.0.2 runs for a restore once tty.info is set aside (cut).
LIBLXC_RESTORE = [
    'restore', '--tcp-established', '--ext-mount-map', 'auto',
    '-D', '/ckpt', '--ext-mount-map', 'proc/meminfo:/var/lib/lxcfs/meminfo',
    '--root', '/usr/lib/lxc/rootfs', '--restore-detached',
    '--ext-mount-map', 'console:', '--external', 'netdev[eth0]:tap1']


class RewriteTest(base.BaseTestCase):

    def test_restore_gets_the_console_and_loses_liblxcs_empty_one(self):
        out = criu_shim.rewrite(LIBLXC_RESTORE, 'fd[5]:tty[8800:3]',
                                '/dev/pts/7')
        self.assertEqual(
            ['restore', '--tcp-established', '--ext-mount-map', 'auto',
             '-D', '/ckpt', '--ext-mount-map',
             'proc/meminfo:/var/lib/lxcfs/meminfo',
             '--root', '/usr/lib/lxc/rootfs', '--restore-detached',
             '--external', 'netdev[eth0]:tap1',
             '--inherit-fd', 'fd[5]:tty[8800:3]',
             '--ext-mount-map', 'console:/dev/pts/7'], out)

    def test_other_commands_pass_through(self):
        for args in (['--version'], ['check'], [],
                     ['dump', '--ext-mount-map', 'console:x']):
            self.assertEqual(args, criu_shim.rewrite(args, 'fd[1]:tty[1:1]',
                                                     '/dev/pts/1'))

    def test_no_console_adds_nothing(self):
        out = criu_shim.rewrite(LIBLXC_RESTORE, '', '')
        self.assertNotIn('--inherit-fd', out)
        self.assertNotIn('console:', out)

    def test_main_refuses_without_the_real_criu(self):
        self.assertEqual(127, criu_shim.main(['--version'], {}))
        self.assertEqual(127, criu_shim.main(['--version'],
                                             {criu_shim.CRIU: 'criu'}))


class KeeperTest(base.BaseTestCase):

    def test_log_rotates_at_its_size_and_keeper_ends_with_the_guest(self):
        log = os.path.join(self.useFixture(fixtures.TempDir()).path,
                           'console.log')
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        keeper = threading.Thread(target=console_keeper.keep,
                                  args=(master, log, 100), daemon=True)
        keeper.start()
        for i in range(30):
            line = b'line %02d\r\n' % i   # the pty's onlcr adds the \r
            os.write(slave, b'line %02d\n' % i)
            # One line at a time, as a guest writes: each is in the log
            # before the next is sent.
            for _ in range(500):
                if os.path.exists(log) and open(log, 'rb').read().endswith(
                        line):
                    break
                time.sleep(0.01)
            else:
                self.fail('%r never reached the log' % line)
        os.close(slave)          # the guest's last holder: EIO for the keeper
        keeper.join(10)
        self.assertFalse(keeper.is_alive())
        with open(log, 'rb') as f:
            current = f.read()
        with open(log + '.1', 'rb') as f:
            rotated = f.read()
        # 30 lines of 9 bytes at most 100 bytes a file: the last 11 lines
        # are split over the two files, nothing is lost between them.
        self.assertLessEqual(len(current), 100)
        self.assertLessEqual(len(rotated), 100)
        self.assertEqual(
            b''.join(b'line %02d\r\n' % i for i in range(30)).endswith(
                rotated + current), True)
        self.assertTrue(current.endswith(b'line 29\r\n'))
        self.assertGreater(len(rotated), 80)

    def test_keeper_appends_to_the_log_liblxc_wrote(self):
        log = os.path.join(self.useFixture(fixtures.TempDir()).path,
                           'console.log')
        with open(log, 'wb') as f:
            f.write(b'before the checkpoint\r\n')
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        os.write(slave, b'after the restore\n')
        os.close(slave)
        console_keeper.keep(master, log, 1 << 20)
        with open(log, 'rb') as f:
            self.assertEqual(b'before the checkpoint\r\nafter the restore'
                             b'\r\n', f.read())
