"""Flavor extra specs of the ``lxc:`` namespace, checked by nova-api.

Registered through the ``nova.api.extra_spec_validators`` entry point, so a
typo such as ``lxc:privilged`` is refused when the flavor is changed rather
than ignored at boot.
"""

from nova.api.validation.extra_specs import base

VALIDATORS = [
    base.ExtraSpecValidator(
        name='lxc:privileged',
        description='Run the container without a user namespace (container '
                    'root is host root). The compute host must also allow '
                    'it with [lxc] allow_privileged.',
        value={'type': bool, 'description': 'Whether to run privileged'},
    ),
    base.ExtraSpecValidator(
        name='lxc:nesting',
        description='Let the guest run containers of its own. The compute '
                    'host must also allow it with [lxc] allow_nesting.',
        value={'type': bool, 'description': 'Whether to allow nesting'},
    ),
    base.ExtraSpecValidator(
        name='lxc:pids_max',
        description='Maximum number of processes and threads in the guest; '
                    '0 for no limit. Default: [lxc] pids_max.',
        value={'type': int, 'min': 0, 'description': 'Process limit'},
    ),
]


def register():
    return VALIDATORS
