"""Which flavor changes a cold move refuses before touching the guest."""

from nova import objects
import pytest

from nova_lxd_py.virt import migration

objects.register_all()


def flavor(root_gb, ephemeral_gb=0):
    return objects.Flavor(root_gb=root_gb, ephemeral_gb=ephemeral_gb)


@pytest.mark.parametrize('old, new', [
    (flavor(1), flavor(1)),          # a migration: same flavor
    (flavor(1), flavor(2)),
    (flavor(0), flavor(0)),          # unsized root stays unsized
    (flavor(1, 1), flavor(1, 2)),
    (flavor(1), flavor(1, 1)),       # an ephemeral disk appears
])
def test_growing_or_equal_is_allowed(old, new):
    assert migration.check_sizes(old, new) is None


@pytest.mark.parametrize('old, new, words', [
    (flavor(2), flavor(1), 'root disks cannot shrink'),
    (flavor(1), flavor(0), 'root disks cannot shrink'),
    (flavor(0), flavor(1), 'root_gb 0'),
    (flavor(1, 2), flavor(1, 1), 'ephemeral disks cannot shrink'),
    (flavor(1, 1), flavor(1, 0), 'ephemeral disks cannot shrink'),
])
def test_shrinking_or_changing_kind_is_refused(old, new, words):
    reason = migration.check_sizes(old, new)
    assert reason is not None and words in reason
