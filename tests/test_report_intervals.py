"""Quality intervals in the report's Pareto figures: error bars from the sensitivity rows' ci_low/ci_high, the
points the intervals leave unsettled drawn as "not separable", and the x-axis buttons keeping both in step."""
from __future__ import annotations

import pytest

pytest.importorskip("plotly")

from varbench.reporting import figures  # noqa: E402


def _rows(with_ci: bool = True):
    # latency / KL (lower is better): d2 (1 ms, .90), d3 (2 ms, .85 overlapping d2), d4 (3 ms, .10), d5 (4 ms, .12
    # overlapping d4): the fronts' unsure points are d3 (may be no better than d2) and d5 (may beat d4)
    sweep = [{"model": "m", "depth": d, "switch": 2, "batch": 1, "status": "ok", "latency_ms_p50": lat,
              "images_per_s": 1000.0 / lat, "kv_bytes": kv} for d, lat, kv in ((2, 1.0, 4e6), (3, 2.0, 3e6), (4, 3.0, 2e6), (5, 4.0, 1e6))]
    sens = [{"model": "m", "mode": "from", "scale": 2, "depth": d, "metric": "kl", "value": v,
             **({"ci_low": lo, "ci_high": hi} if with_ci else {})}
            for d, v, lo, hi in ((2, 0.90, 0.80, 1.00), (3, 0.85, 0.70, 0.95), (4, 0.10, 0.05, 0.15),
                                 (5, 0.12, 0.02, 0.20))]
    return sweep, sens


def test_pareto_points_carry_the_joined_intervals_and_draw_error_bars():
    sweep, sens = _rows()
    pts, metric = figures.sweep_points(sweep, sens)
    assert metric == "kl" and [(p["quality_low"], p["quality_high"]) for p in pts] == \
        [(0.80, 1.00), (0.70, 0.95), (0.05, 0.15), (0.02, 0.20)]
    fig = dict(figures.pareto_figures(sweep, sens))["Quality vs latency"]
    (markers,) = [t for t in fig.data if (t.name or "").startswith("switch=")]
    assert list(markers.error_y.array) == pytest.approx([0.10, 0.10, 0.05, 0.08])
    assert list(markers.error_y.arrayminus) == pytest.approx([0.10, 0.15, 0.05, 0.10])
    assert "[0.7, 0.95] (95%)" in markers.hovertext[1]
    (unsure,) = [t for t in fig.data if t.name == figures.NOT_SEPARABLE]
    assert list(unsure.x) == [2.0, 4.0] and list(unsure.y) == [0.85, 0.12]


def test_not_separable_follows_the_x_axis_buttons():
    """Against KV bytes (d5 smallest, then d4, d3, d2) the geometry differs: each button carries its own set,
    in the trace order of the figure."""
    sweep, sens = _rows()
    fig = dict(figures.pareto_figures(sweep, sens))["Quality vs latency"]
    idx = [i for i, t in enumerate(fig.data) if t.name == figures.NOT_SEPARABLE][0]
    buttons = {b.label: b.args[0] for b in fig.layout.updatemenus[0].buttons}
    assert all(len(a["x"]) == len(fig.data) for a in buttons.values())
    assert buttons["latency"]["x"][idx] == [2.0, 4.0]
    assert buttons["throughput"]["x"][idx] == [500.0, 250.0]          # higher is better: the same points
    # by KV: d5 (1 MB, .12) cheapest; d4 (2 MB, .10) overlaps it: unsure; d3, d2 dominated for sure by d5
    assert buttons["kv"]["x"][idx] == pytest.approx([2e6 / 2 ** 20])


def test_rows_without_intervals_draw_no_error_bars_and_no_rings():
    sweep, sens = _rows(with_ci=False)
    fig = dict(figures.pareto_figures(sweep, sens))["Quality vs latency"]
    assert not any(t.name == figures.NOT_SEPARABLE for t in fig.data)
    (markers,) = [t for t in fig.data if (t.name or "").startswith("switch=")]
    assert markers.error_y.array is None
