"""Set the guest administrator's password (``changePassword``).

The running guest's own ``chpasswd`` does it, so the hash is the guest's
choice (its PAM or login.defs settings) and the guest's files are written
by the guest. The password goes on chpasswd's standard input only: never
in a command line, a log or an exception. The account is the image's
``os_admin_user`` property, as with Nova's libvirt driver, else root.
Part of LXCDriver (a mixin).
"""

from nova import exception as nova_exception
from oslo_log import log as logging

from nova_lxd_py.virt import container

LOG = logging.getLogger(__name__)

DEFAULT_ADMIN_USER = 'root'
CHPASSWD_TIMEOUT = 30   # seconds
# What lxc-attach returns when the command cannot be found or run.
_NOT_RUNNABLE = (126, 127)


def admin_user(instance):
    # image_meta is built from the instance's system metadata
    # (image_os_admin_user): no Glance call.
    return instance.image_meta.properties.get('os_admin_user') or \
        DEFAULT_ADMIN_USER


class PasswordMixin:

    def set_admin_password(self, instance, new_pass):
        if container.state(instance.uuid)[0] != 'RUNNING':
            raise nova_exception.InstanceNotRunning(instance_id=instance.uuid)
        user = admin_user(instance)
        # chpasswd reads "user:password" lines: neither may end the line,
        # nor may the user name hold the separator.
        if any(c in user for c in ':\n\r') or '\n' in new_pass or \
                '\r' in new_pass or '\0' in new_pass + user:
            raise nova_exception.InstancePasswordSetFailed(
                instance=instance.uuid,
                reason='the user name or password holds a character '
                       'chpasswd cannot take (newline, NUL, or ":" in the '
                       'user name)')
        code, out = container.run_in_guest(
            instance.uuid, ['chpasswd'], CHPASSWD_TIMEOUT,
            stdin=('%s:%s\n' % (user, new_pass)).encode())
        if code in _NOT_RUNNABLE:
            LOG.info('The guest cannot set passwords: %s', out.strip(),
                     instance=instance)
            raise nova_exception.SetAdminPasswdNotSupported()
        if code:
            raise nova_exception.InstancePasswordSetFailed(
                instance=instance.uuid,
                reason='chpasswd in the guest failed for user %s (exit %d): '
                       '%s' % (user, code, out.strip()[-500:]))
        LOG.info('Password of guest user %s set', user, instance=instance)
