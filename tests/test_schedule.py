"""DepthSchedule constructors, layer selection and validation (VARIANT_PAPER 'Subnet layer selection')."""
import pytest

from model import spec
from model.schedule import DepthSchedule, isometric_layers, nested_layers

D30 = spec.SPECS["var-d30"]


def test_isometric_sets_of_the_paper():
    assert isometric_layers(30, 2) == (0, 29)
    assert isometric_layers(30, 4) == (0, 9, 19, 29)
    assert isometric_layers(30, 8) == (0, 4, 8, 12, 16, 20, 24, 29)
    d16 = isometric_layers(30, 16)
    assert d16[:4] == (0, 1, 3, 5) and d16[-2:] == (27, 29) and len(d16) == 16
    assert isometric_layers(30, 30) == tuple(range(30))
    # the paper's nesting claim fails with floor
    assert 4 in isometric_layers(30, 8) and 4 not in d16


@pytest.mark.parametrize("total", [12, 16, 30, 36])
def test_nested_is_a_chain_keeping_ends(total):
    prev = set()
    for d in range(2, total + 1):
        cur = set(nested_layers(total, d))
        assert len(cur) == d and {0, total - 1} <= cur and prev <= cur
        prev = cur


def test_variant_zones():
    s = DepthSchedule.variant(D30, depth=8, switch=6)
    assert all(s.layers[i] == tuple(range(30)) for i in range(6))
    assert all(s.layers[i] == isometric_layers(30, 8) for i in range(6, 10))
    assert DepthSchedule.variant(D30, depth=30, switch=6) == DepthSchedule.full(D30)
    assert s.last_active(1) == 5 and s.last_active(0) == 9
    assert DepthSchedule.variant(D30, depth=2, switch=0).layers[0] == (0, 29)


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=1, switch=6), "outside 2..30"), (dict(depth=31, switch=6), "outside 2..30"),
    (dict(depth=0, switch=6), "outside"), (dict(depth=8, switch=11), "switch 11"),
    (dict(depth=8, switch=-1), "switch -1"), (dict(depth=8, switch=6, select="foo"), "selection"),
])
def test_variant_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DepthSchedule.variant(D30, **kwargs)


def test_explicit_validation():
    with pytest.raises(ValueError, match="duplicate"):
        DepthSchedule([(0, 0, 1)])
    with pytest.raises(ValueError, match="increasing"):
        DepthSchedule([(2, 1)])
    with pytest.raises(ValueError, match="out of range"):
        DepthSchedule([(0, 30)] * 10).validate(D30)
    with pytest.raises(ValueError, match="10 scales|has 3 scales"):
        DepthSchedule([(0, 1)] * 3).validate(D30)
    with pytest.raises(ValueError, match="10 depths"):
        DepthSchedule.per_scale(D30, [2, 4])


def test_schedules_are_hashable_values():
    a = DepthSchedule.variant(D30, 4, 6)
    b = DepthSchedule([list(x) for x in a.layers])
    assert a == b and hash(a) == hash(b)
    assert "x6" in a.describe() and "x4" in a.describe()
