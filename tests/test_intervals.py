"""Intervals of quality numbers (scipy bootstrap, Wilson) and the demo's picks that read them: a claim is made only
where the 95% interval separates it, and said to be "not separable" otherwise."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from varbench.quality import intervals
from varbench.workflows import demo as demo_lib


def test_wilson_matches_the_closed_form():
    k, n, z = 11, 16, stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    ci = intervals.wilson_interval(k, n)
    assert (ci.low, ci.high, ci.n, ci.method) == (pytest.approx(centre - half), pytest.approx(centre + half), 16,
                                                  "wilson")
    assert intervals.wilson_interval(16, 16).high == 1.0 and intervals.wilson_interval(16, 16).low < 0.85
    with pytest.raises(ValueError):
        intervals.wilson_interval(17, 16)


def test_bootstrap_of_a_mean_is_close_to_the_t_interval_and_reproducible():
    x = np.random.default_rng(3).normal(2.0, 1.0, size=400)
    ci = intervals.bootstrap_interval(x)
    t = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert ci.method == "bca-bootstrap" and ci.n == 400
    assert ci.low == pytest.approx(t[0], abs=0.02) and ci.high == pytest.approx(t[1], abs=0.02)
    assert intervals.bootstrap_interval(x) == ci                  # seeded: a rerun writes the same interval


def test_bootstrap_degenerate_and_custom_statistic():
    assert intervals.bootstrap_interval([0.0] * 8) == intervals.Interval(0.0, 0.0, 8, "exact")
    assert intervals.bootstrap_interval([]).method == "none"
    # a statistic of the whole sample (PSNR of the pooled MSE), resampled over images
    mse = np.random.default_rng(0).uniform(0.01, 0.02, size=50)
    from varbench.quality.metrics import psnr_from_mse
    psnr = lambda a: psnr_from_mse(float(np.mean(a)))           # noqa: E731
    ci = intervals.bootstrap_interval(mse, psnr)
    assert ci.low < psnr(mse) < ci.high
    assert intervals.bootstrap_interval([0.0, 0.0], psnr).low == math.inf      # identical images: exact inf


def test_separated():
    a, b = intervals.Interval(0.1, 0.2, 16, "x"), intervals.Interval(0.25, 0.3, 16, "x")
    assert intervals.separated(a, b) and not intervals.separated(a, intervals.Interval(0.15, 0.3, 16, "x"))
    assert not intervals.separated(a, intervals.Interval(None, None, 0, "none"))


# ---- the demo's picks -------------------------------------------------------------------------------------------
def _sweep(depth, ips):
    return {"kind": "sweep", "model": "var-toy", "status": "ok", "depth": depth, "switch": 4, "batch": 8,
            "images_per_s": ips, "kv_bytes": depth * (1 << 20), "flops": depth * 1e9}


def _sens(depth, metric, value, lo, hi, mode="from"):
    return {"kind": "sensitivity", "model": "var-toy", "mode": mode, "scale": None if mode == "reference" else 4,
            "depth": depth, "metric": metric, "value": value, "samples": 16, "ci_low": lo, "ci_high": hi, "n": 16}


def test_demo_picks_only_what_the_interval_separates():
    sweep = [_sweep(2, 30.0), _sweep(4, 20.0), _sweep(6, 12.0), _sweep(12, 10.0)]
    sens = [_sens(2, "kl", 0.30, 0.25, 0.36), _sens(4, "kl", 0.12, 0.09, 0.17), _sens(6, "kl", 0.08, 0.06, 0.11),
            _sens(2, "toy_acc", 0.44, 0.23, 0.67), _sens(4, "toy_acc", 0.5, 0.28, 0.72),
            _sens(6, "toy_acc", 0.5, 0.28, 0.72), _sens(12, "toy_acc", 0.69, 0.44, 0.86, mode="reference")]
    fast, mem, per_flop = demo_lib.pareto_summary(sweep, sens, kl_tolerance=0.15)
    # d4's KL 0.12 is under the tolerance but its interval reaches 0.17: not claimed, named as not separable
    assert "d6 (switch 4, batch 8)" in fast and "KL 0.080 [0.060, 0.110]" in fast
    assert "not separable from the tolerance" in fast and "d4 (KL 0.120 [0.090, 0.170])" in fast
    assert "d6 (switch 4," in mem
    assert "44% [23%, 67%]" in per_flop and "full: 69% [44%, 86%]" in per_flop
    assert "not separable from full" in per_flop
    sens[-1] = _sens(12, "toy_acc", 0.97, 0.90, 0.99, mode="reference")
    assert "; separable from full" in demo_lib.pareto_summary(sweep, sens, kl_tolerance=0.15)[2]
