"""Supernet strategies: the progressive p(epoch) schedule, fixed-ratio and sandwich sampling, RNG state."""
from __future__ import annotations

from collections import Counter

import pytest

from model import spec as spec_mod
from model.schedule import DepthSchedule
from model.train.strategy import Strategy, StrategyConfig, valid_subnet_depths

SPEC = spec_mod.var_spec(16, width=64, heads=2, num_classes=10)     # 16 blocks: subnet depths {2, 4, 8}


def test_default_depths_are_intersected_with_the_spec():
    assert valid_subnet_depths(SPEC, None) == (2, 4, 8)
    assert valid_subnet_depths(spec_mod.SPECS["var-tiny"], None) == (2,)
    with pytest.raises(ValueError, match="outside"):
        valid_subnet_depths(SPEC, [2, 17])


def test_progressive_p_schedule():
    s = Strategy(SPEC, StrategyConfig("progressive", p0=0.2, e1=5, e2=15, e3=10), seed=0)
    assert s.subnet_p(0) == 0.2 and s.subnet_p(4.99) == 0.2
    assert s.subnet_p(5) == pytest.approx(0.2)
    assert s.subnet_p(12.5) == pytest.approx(0.6)                 # halfway up the ramp
    assert s.subnet_p(19.9) == pytest.approx(0.2 + 0.8 * 14.9 / 15)
    assert s.subnet_p(20) == 1.0 and s.subnet_p(29) == 1.0
    assert s.default_epochs == 30


def test_progressive_subnet_steps_use_the_variant_schedule():
    s = Strategy(SPEC, StrategyConfig("progressive", e1=0, e2=0, switch=6), seed=1)
    plan = s.plan(epoch=3.0)                                     # p = 1: always a subnet step
    (pas,) = plan.passes
    assert pas.schedule == DepthSchedule.variant(SPEC, pas.depth, 6)
    assert all(len(b) == 16 for b in pas.schedule.layers[:6])     # bridge zone: full depth


def test_fixed_ratio_and_uniform_depths():
    s = Strategy(SPEC, StrategyConfig("fixed", p=0.3), seed=2)
    n = 6000
    depths = Counter(s.plan(0.0).depth for _ in range(n))
    assert abs(depths[16] / n - 0.7) < 0.025                      # full steps
    for d in (2, 4, 8):
        assert abs(depths[d] / n - 0.1) < 0.015                   # 0.3 split uniformly over 3 depths


def test_weighted_depth_draws():
    s = Strategy(SPEC, StrategyConfig("fixed", p=1.0, depth_weights=(0.0, 1.0, 3.0)), seed=3)
    depths = Counter(s.plan(0.0).depth for _ in range(4000))
    assert depths[2] == 0 and abs(depths[8] / 4000 - 0.75) < 0.03


def test_sandwich_full_smallest_and_one_random():
    s = Strategy(SPEC, StrategyConfig("sandwich"), seed=4)
    mids = Counter()
    for _ in range(3000):
        plan = s.plan(0.0)
        ds = [p.depth for p in plan.passes]
        assert len(ds) == 3 and ds[0] == 2 and ds[-1] == 16 and plan.passes[-1].schedule is None
        mids[ds[1]] += 1
    assert set(mids) == {4, 8} and abs(mids[4] / 3000 - 0.5) < 0.04


def test_full_strategy_never_draws_subnets():
    s = Strategy(SPEC, StrategyConfig("full"), seed=0)
    assert {s.plan(e).depth for e in range(50)} == {16}


def test_rng_state_roundtrip_reproduces_draws():
    import json

    a = Strategy(SPEC, StrategyConfig("fixed", p=0.5), seed=5)
    [a.plan(0.0) for _ in range(17)]
    saved = json.loads(json.dumps(a.state_dict()))
    want = [a.plan(0.0).depth for _ in range(50)]
    b = Strategy(SPEC, StrategyConfig("fixed", p=0.5), seed=99)
    b.load_state_dict(saved)
    assert [b.plan(0.0).depth for _ in range(50)] == want


@pytest.mark.parametrize("cfg, msg", [(StrategyConfig("nope"), "unknown strategy"),
                                      (StrategyConfig("fixed", p=1.5), "outside"),
                                      (StrategyConfig("progressive", p0=-0.1), "outside"),
                                      (StrategyConfig("fixed", switch=11), "switch")])
def test_bad_strategy_configs(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        Strategy(SPEC, cfg, seed=0)
