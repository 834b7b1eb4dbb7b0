"""The lxc: extra specs, checked the way nova-api checks them.

nova's validators module loads every ``nova.api.extra_spec_validators``
entry point at import; ours is registered by setup.cfg, so these tests also
fail if the package is installed without it.
"""

import ddt
from nova.api.validation.extra_specs import validators
from nova import exception as nova_exception
from oslotest import base


@ddt.ddt
class ExtraSpecValidatorsTest(base.BaseTestCase):

    def test_lxc_namespace_registered(self):
        self.assertIn('lxc', validators.NAMESPACES)
        for name in ('lxc:privileged', 'lxc:nesting', 'lxc:pids_max'):
            self.assertIn(name, validators.VALIDATORS)

    @ddt.unpack
    @ddt.data(
        ('lxc:privileged', 'true'), ('lxc:privileged', 'False'),
        ('lxc:privileged', '1'), ('lxc:privileged', 'no'),
        ('lxc:nesting', 'yes'), ('lxc:nesting', 'false'),
        ('lxc:pids_max', '0'), ('lxc:pids_max', '1'),
        ('lxc:pids_max', '100000'),
    )
    def test_validate_accepts(self, name, value):
        validators.validate(name, value)

    @ddt.unpack
    @ddt.data(
        ('lxc:privileged', 'maybe'), ('lxc:privileged', ''),
        ('lxc:privileged', '2'), ('lxc:nesting', 'enabled'),
        ('lxc:pids_max', '-1'), ('lxc:pids_max', 'many'),
        ('lxc:pids_max', '1.5'), ('lxc:pids_max', ''),
        # Typos inside our namespace are refused, not silently ignored.
        ('lxc:privilged', 'true'), ('lxc:pids-max', '10'),
        ('lxc:', 'x'),
    )
    def test_validate_rejects(self, name, value):
        self.assertRaises(nova_exception.ValidationError,
                          validators.validate, name, value)
