"""Setting a password line in passwd and shadow texts."""

from oslo_utils import secretutils
from oslotest import base

from nova_lxd_py.storage import accounts

PASSWD = ('root:x:0:0:root:/root:/bin/bash\n'
          'rooter:x:1000:1000::/home/rooter:/bin/sh\n')
SHADOW = ('rooter:!:19000:0:99999:7:::\n'
          'root:*:19000:0:99999:7:::\n')


class WithPasswordTest(base.BaseTestCase):

    def test_shadow_sets_hash_and_change_date(self):
        self.assertEqual(
            'rooter:!:19000:0:99999:7:::\n'
            'root:$6$s$h:20000:0:99999:7:::\n',
            accounts.with_password(SHADOW, 'root', '$6$s$h', True, 20000))

    def test_passwd_keeps_the_uid(self):
        self.assertEqual(
            'root:$6$s$h:0:0:root:/root:/bin/bash\n'
            'rooter:x:1000:1000::/home/rooter:/bin/sh\n',
            accounts.with_password(PASSWD, 'root', '$6$s$h', False, 20000))

    def test_no_such_user_or_short_line(self):
        self.assertIsNone(accounts.with_password(PASSWD, 'admin', 'h',
                                                 False, 1))
        self.assertIsNone(accounts.with_password('root:x:0\n', 'root', 'h',
                                                 False, 1))
        self.assertIsNone(accounts.with_password('root:*:1\n', 'root', 'h',
                                                 True, 1))

    def test_hash_is_sha512_crypt_with_a_fresh_salt(self):
        first = accounts.hash_password('secret')
        second = accounts.hash_password('secret')
        self.assertTrue(first.startswith('$6$'))
        self.assertNotEqual(first, second)
        salt = '$6$' + first.split('$')[2]
        self.assertEqual(first, secretutils.crypt_password(
            'secret', salt))
