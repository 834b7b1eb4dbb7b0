"""set_admin_password on real containers: chpasswd in the busybox guest
(run as root)."""
import os

# Native threads, as nova-compute runs; must precede any eventlet import.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

# autopep8: off
import nova.tests.unit  # noqa: E402,F401,I100  (monkey_patch, objects)
# autopep8: on

import subprocess  # noqa: E402

from nova import exception as nova_exception  # noqa: E402

from nova_lxd_py.tests.functional import driver_base  # noqa: E402
from nova_lxd_py.virt import container  # noqa: E402

PASSWORD = 'n3w pass:word$"\'`\\'


def shadow_hash(test, instance, user='root'):
    for line in test.run_in_guest(instance, 'cat', '/etc/shadow').split():
        if line.startswith(user + ':'):
            return line.split(':')[1]
    test.fail('no shadow entry for %s' % user)


def crypt_with_salt_of(hashed, password):
    """openssl's SHA-512 crypt of ``password`` with ``hashed``'s salt."""
    _, scheme, salt, _ = hashed.split('$')
    test_scheme = {'6': '-6', '5': '-5', '1': '-1'}[scheme]
    return subprocess.run(
        ['openssl', 'passwd', test_scheme, '-salt', salt, '-stdin'],
        input=password, capture_output=True, text=True,
        check=True).stdout.strip()


class SetAdminPasswordTest(driver_base.DriverTestCase):

    share_image_cache = True

    def spawn(self, **kw):
        guest = super().spawn(**kw)
        # Its image properties (none here) without a database.
        guest.system_metadata = {}
        return guest

    def test_set_password_changes_roots_shadow_entry(self):
        guest = self.spawn()
        before = shadow_hash(self, guest)
        self.driver.set_admin_password(guest, PASSWORD)
        after = shadow_hash(self, guest)
        self.assertNotEqual(before, after)
        self.assertTrue(after.startswith('$6$'), after)
        self.assertEqual(after, crypt_with_salt_of(after, PASSWORD))
        self.assertNotEqual(after, crypt_with_salt_of(after, 'other'))
        # The password is in no file of the guest but as a hash.
        code, out = container.run_in_guest(
            guest.uuid, ['grep', '-rlF', PASSWORD, '/etc', '/tmp'], 10)
        self.assertEqual(1, code, out)

    def test_os_admin_user_of_the_image_gets_the_password(self):
        guest = self.spawn()
        self.run_in_guest(guest, 'sh', '-c',
                          'echo "admin:x:1000:1000::/tmp:/bin/sh" '
                          '>> /etc/passwd')
        guest.system_metadata = {'image_os_admin_user': 'admin'}
        root_before = shadow_hash(self, guest)
        self.driver.set_admin_password(guest, PASSWORD)
        hashed = shadow_hash(self, guest, 'admin')
        self.assertEqual(hashed, crypt_with_salt_of(hashed, PASSWORD))
        self.assertEqual(root_before, shadow_hash(self, guest))

    def test_missing_user_fails_with_the_guests_reason(self):
        guest = self.spawn()
        guest.system_metadata = {'image_os_admin_user': 'nobody-here'}
        e = self.assertRaises(nova_exception.InstancePasswordSetFailed,
                              self.driver.set_admin_password, guest,
                              PASSWORD)
        self.assertIn('nobody-here', str(e))
        self.assertNotIn(PASSWORD, str(e))

    def test_guest_without_chpasswd_is_not_supported(self):
        guest = self.spawn()
        for path in ('/usr/sbin/chpasswd', '/bin/chpasswd'):
            container.run_in_guest(guest.uuid, ['rm', '-f', path], 10)
        self.assertRaises(nova_exception.SetAdminPasswdNotSupported,
                          self.driver.set_admin_password, guest, PASSWORD)

    def test_password_with_a_newline_refused(self):
        guest = self.spawn()
        before = shadow_hash(self, guest)
        self.assertRaises(nova_exception.InstancePasswordSetFailed,
                          self.driver.set_admin_password, guest,
                          'x\nroot:y')
        self.assertEqual(before, shadow_hash(self, guest))

    def test_stopped_guest_is_not_running(self):
        guest = self.spawn(power_on=False)
        self.assertRaises(nova_exception.InstanceNotRunning,
                          self.driver.set_admin_password, guest, PASSWORD)
