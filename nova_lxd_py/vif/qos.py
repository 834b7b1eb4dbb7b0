"""Flavor bandwidth limits on every port: ``quota:vif_{in,out}bound_*``.

The extra specs Nova's libvirt driver reads, with its units: average and
peak in kilobytes per second (1000 bytes), burst in kilobytes (1024
bytes). Inbound is what the guest receives, outbound what it sends; a
direction is limited when its average is set and above 0 (peak and burst
alone mean nothing, as with libvirt). Both directions are shaped with a
token bucket on the host end of the port's veth pair, where the guest
cannot undo them (``net.set_bandwidth``): at most ``burst`` beyond the
average rate, sent at most at ``peak``.

nova-api checks the values from microversion 2.86 on; older requests and
flavors stored before are checked again here, before anything is made.
"""

import collections

from oslo_log import log as logging

from nova_lxd_py import exception
from nova_lxd_py.privsep import net
from nova_lxd_py.vif import naming

DIRECTIONS = ('inbound', 'outbound')
SPEC = 'quota:vif_%s_%s'
RATE_UNIT = 1000    # bytes in the KB of average and peak (KB/s)
SIZE_UNIT = 1024    # bytes in the KB of burst
# The kernel keeps rates in 32 bits of bytes/s.
MAX_RATE_BYTES = 2 ** 32 - 1
# ...and a bucket as the time it lasts at its rate, in 32 bits of 64 ns
# ticks: about 274 s.
MAX_BURST_SECONDS = 250
# A veth passes segmentation-offloaded packets of up to 64 KiB whole: a
# smaller bucket would hold none of them.
MIN_BURST_BYTES = 65536

LOG = logging.getLogger(__name__)

Limit = collections.namedtuple('Limit', 'average peak burst')
"""One direction's limit in bytes/s and bytes; peak 0 for none."""


def _value(specs, direction, metric):
    key = SPEC % (direction, metric)
    value = specs.get(key)
    if value is None:
        return 0
    text = str(value).strip()
    if not text.isdigit() or not text.isascii():
        raise exception.InvalidExtraSpec(spec=key, value=value)
    return int(text)


def _limit(specs, direction):
    average, peak, burst = (_value(specs, direction, metric)
                            for metric in ('average', 'peak', 'burst'))
    if not average:
        return None
    average_bytes = average * RATE_UNIT
    if average_bytes > MAX_RATE_BYTES:
        raise exception.InvalidExtraSpec(
            spec=SPEC % (direction, 'average'), value=average)
    if peak and (peak < average or peak * RATE_UNIT > MAX_RATE_BYTES):
        raise exception.InvalidExtraSpec(
            spec=SPEC % (direction, 'peak'), value=peak)
    # No burst: a second's worth, as libvirt's default.
    burst_bytes = max(burst * SIZE_UNIT if burst else average_bytes,
                      MIN_BURST_BYTES)
    if burst_bytes > average_bytes * MAX_BURST_SECONDS:
        raise exception.InvalidExtraSpec(
            spec=SPEC % (direction, 'burst'), value=burst)
    # A peak no higher than the average is no peak (tbf refuses it).
    return Limit(average_bytes,
                 peak * RATE_UNIT if peak > average else 0, burst_bytes)


def limits(extra_specs):
    """{'inbound': Limit or None, 'outbound': ...} of a flavor's extra
    specs; InvalidExtraSpec (the build is aborted) for a bad value."""
    return {direction: _limit(extra_specs or {}, direction)
            for direction in DIRECTIONS}


def check(instance):
    """Refuse bad limits of the instance's flavor."""
    limits(instance.flavor.extra_specs)


def apply(instance, vif, side):
    """Give the port's host end (wired by ``side``, a wiring.Wiring) the
    flavor's limits (or none); idempotent.

    Runs on every plug: spawn, power on and hard reboot, compute start-up
    and interface attach.
    """
    wanted = limits(instance.flavor.extra_specs)
    host_netns = side.host_netns(vif)
    if wanted['outbound'] and (host_netns or
                               side.reads_by_packet_socket(vif)):
        LOG.warning('Port %s: outbound bandwidth is not limited on Open '
                    'vSwitch\'s netdev datapath (or a switch in a network '
                    'namespace of its own), which reads the port before '
                    'any tc ingress hook', vif['id'], instance=instance)
        wanted['outbound'] = None
    if not net.set_bandwidth(naming.host_name(vif), naming.ifb_name(vif),
                             wanted['inbound'], wanted['outbound'],
                             host_netns) and wanted['inbound']:
        LOG.warning('Port %s: no host end %s found to limit', vif['id'],
                    naming.host_name(vif), instance=instance)


def remove(vif):
    """Delete what ``apply`` made beside the veth pair (its ifb)."""
    net.delete_ifb(naming.ifb_name(vif))
