"""Errors raised by nova-lxd-py.

Each subclasses the Nova exception that makes the compute manager do the
right thing: build errors caused by the request (flavor, image) abort the
build with the message as the instance fault instead of rescheduling.
"""

from nova import exception
from nova.i18n import _


class ContainerError(exception.NovaException):
    msg_fmt = _('Container %(name)s: %(reason)s')


class ContainerStartFailed(ContainerError):
    msg_fmt = _('Container %(name)s failed to start: %(reason)s')


class PrivilegedNotAllowed(exception.InvalidInput):
    msg_fmt = _('Flavor extra spec %(spec)s asks for a %(what)s container, '
                'which this compute host does not allow (set [lxc] '
                '%(option)s = true in nova.conf to allow it).')


class InvalidExtraSpec(exception.InvalidInput):
    msg_fmt = _('Flavor extra spec %(spec)s has an invalid value: %(value)r')


class NoSubordinateIds(exception.InvalidInput):
    msg_fmt = _('This compute host cannot run unprivileged containers: user '
                '%(user)s has no subordinate %(kind)s range of at least '
                '%(size)d ids in %(path)s. Add one, e.g. '
                '"%(user)s:100000:%(size)d".')


class HostCannotRunContainers(exception.NovaException):
    msg_fmt = _('This host cannot run containers: %(reason)s')


class VifTypeNotSupported(exception.VirtualInterfacePlugException):
    msg_fmt = _('Port %(port)s has VIF type %(vif_type)s, which this driver '
                'cannot plug into a container (it plugs: %(supported)s).')


class VifPlugFailed(exception.VirtualInterfacePlugException):
    msg_fmt = _('Port %(port)s could not be plugged: %(reason)s')


class InterfaceHotplugFailed(exception.InterfaceAttachFailed):
    msg_fmt = _('Port %(port)s could not be attached to instance '
                '%(instance_uuid)s: %(reason)s')


class InterfaceNotAttached(exception.NotFound):
    msg_fmt = _('Port %(port)s is not attached to instance '
                '%(instance_uuid)s.')


class ConfigDriveInvalid(exception.InvalidInput):
    msg_fmt = _('The config drive of instance %(instance_uuid)s cannot be '
                'built from its metadata: %(reason)s')


class ConfigDriveBuildFailed(exception.NovaException):
    msg_fmt = _('The config drive of instance %(instance_uuid)s could not '
                'be written to %(path)s: %(reason)s')
