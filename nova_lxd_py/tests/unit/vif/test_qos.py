"""quota:vif_* extra specs -> bandwidth limits (pure; data tables)."""

import ddt
from oslotest import base

from nova_lxd_py import exception
from nova_lxd_py.vif import qos

IN = 'quota:vif_inbound_%s'
OUT = 'quota:vif_outbound_%s'


@ddt.ddt
class LimitsTest(base.BaseTestCase):

    @ddt.unpack
    @ddt.data(
        ({}, None, None),
        # Average alone: a second's worth of burst, no peak.
        ({IN % 'average': '256'}, (256000, 0, 256000), None),
        ({OUT % 'average': 100, OUT % 'peak': '200',
          OUT % 'burst': '128'}, None, (100000, 200000, 131072)),
        # A burst below 64 KiB is raised to it; a peak equal to the
        # average is none.
        ({IN % 'average': '1000', IN % 'peak': '1000', IN % 'burst': '1'},
         (1000000, 0, 65536), None),
        # Average 0 or missing: no limit, whatever peak and burst say.
        ({IN % 'average': '0', IN % 'peak': '500'}, None, None),
        ({OUT % 'burst': '500'}, None, None),
        ({IN % 'average': ' 8 ', OUT % 'average': '16'},
         (8000, 0, 65536), (16000, 0, 65536)),
    )
    def test_limits(self, specs, inbound, outbound):
        got = qos.limits(specs)
        self.assertEqual(inbound, got['inbound'] and tuple(got['inbound']))
        self.assertEqual(outbound,
                         got['outbound'] and tuple(got['outbound']))

    @ddt.unpack
    @ddt.data(
        ({IN % 'average': '-1'}, IN % 'average'),
        ({IN % 'average': '1.5'}, IN % 'average'),
        ({IN % 'average': 'fast'}, IN % 'average'),
        ({IN % 'average': ''}, IN % 'average'),
        ({IN % 'average': '\u0661\u0662'}, IN % 'average'),
        ({OUT % 'average': str(2 ** 32)}, OUT % 'average'),
        ({OUT % 'average': '100', OUT % 'peak': '50'}, OUT % 'peak'),
        ({OUT % 'average': '100', OUT % 'peak': '-5'}, OUT % 'peak'),
        ({IN % 'average': '100', IN % 'burst': '1e3'}, IN % 'burst'),
        # More than 250 s of the average rate.
        ({IN % 'average': '1', IN % 'burst': '1000'}, IN % 'burst'),
        # Bad values are refused even where the average leaves the
        # direction unlimited.
        ({IN % 'peak': 'x'}, IN % 'peak'),
    )
    def test_bad_value_refused(self, specs, key):
        e = self.assertRaises(exception.InvalidExtraSpec, qos.limits, specs)
        self.assertIn(key, str(e))
