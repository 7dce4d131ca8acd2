"""varbench plan: the exact knapsack against brute force, the cost models against the analytic model, the loss
matrix from rows, plan.json round trip, and the CLI's one-line errors."""
from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from typer.testing import CliRunner

from model import methods
from model import spec as spec_mod
from model.schedule import DepthSchedule
from varbench import results
from varbench.cli import app
from varbench.errors import UsageError
from varbench.measuring import analytic
from varbench.target import resolve_spec
from varbench.workflows import planning

TINY = spec_mod.SPECS["var-tiny"]                       # 4 blocks, 4 scales (1, 4, 9, 16 tokens)


def _brute(losses, costs, budget):
    best = None
    for ds in itertools.product(*[sorted(l) for l in losses]):
        c = sum(costs[s][d] for s, d in enumerate(ds))
        if c > budget + 1e-12:
            continue
        l = sum(losses[s][d] for s, d in enumerate(ds))
        if best is None or l < best[0] - 1e-12 or (abs(l - best[0]) <= 1e-12 and c < best[1]):
            best = (l, c, ds)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_solve_matches_brute_force(seed):
    rng = random.Random(seed)
    S, depths = rng.randint(1, 5), rng.sample([1, 2, 3, 4, 6, 8], rng.randint(1, 4))
    losses = [{d: rng.random() * (10 - d) for d in depths} for _ in range(S)]
    costs = [{d: rng.random() * d for d in depths} for _ in range(S)]
    budget = rng.uniform(0.3, 1.0) * sum(max(c.values()) for c in costs)
    want = _brute(losses, costs, budget)
    if want is None:
        with pytest.raises(UsageError, match="no schedule fits"):
            planning.solve(losses, costs, budget)
        return
    got = planning.solve(losses, costs, budget)
    assert got.loss == pytest.approx(want[0], abs=1e-9)
    assert got.cost <= budget + 1e-9
    assert sum(costs[s][d] for s, d in enumerate(got.depths)) == pytest.approx(got.cost)
    assert sum(losses[s][d] for s, d in enumerate(got.depths)) == pytest.approx(got.loss)


def test_solve_is_not_one_switch_point():
    # the cheap loss-free scale sits in the middle: a single switch cannot take it, the knapsack does
    losses = [{1: 5.0, 4: 0.0}, {1: 0.0, 4: 0.0}, {1: 5.0, 4: 0.0}]
    costs = [{1: 1.0, 4: 4.0}, {1: 1.0, 4: 4.0}, {1: 1.0, 4: 4.0}]
    assert planning.solve(losses, costs, 9.0).depths == (4, 1, 4)
    assert planning.solve(losses, costs, 100.0).depths == (4, 1, 4)     # ties in loss: the cheaper one


def test_solve_infeasible_and_bad_input():
    with pytest.raises(UsageError, match="no schedule fits"):
        planning.solve([{1: 0.0}], [{1: 2.0}], 1.0)
    with pytest.raises(ValueError):
        planning.solve([{1: 0.0}], [{2: 1.0}], 5.0)


def test_kv_costs_are_exactly_the_kept_analytic_kv():
    """The additive KV cost is the kept accounting of the analytic model, for any per-scale schedule."""
    spec = spec_mod.SPECS["var-toy"]
    depths = (2, 4, 12)
    costs = planning.kv_costs(spec, depths)
    rng = random.Random(0)
    for _ in range(20):
        ds = [rng.choice(depths) for _ in range(spec.num_scales)]
        sched = DepthSchedule.per_scale(spec, ds)
        kept = analytic.kv_peak_bytes(spec, sched, batch=1, dtype=torch.bfloat16, keep_skipped=True)
        freed = analytic.kv_peak_bytes(spec, sched, batch=1, dtype=torch.bfloat16)
        assert sum(costs[s][d] for s, d in enumerate(ds)) == kept
        assert freed <= kept


def test_flops_costs_bound_the_schedule_flops():
    spec = spec_mod.SPECS["var-toy"]
    depths = (2, 4, 12)
    costs = planning.flops_costs(spec, depths, "isometric")
    assert sum(c[12] for c in costs) == pytest.approx(analytic.flops(spec, DepthSchedule.full(spec)))
    rng = random.Random(1)
    for _ in range(20):
        ds = [rng.choice(depths) for _ in range(spec.num_scales)]
        exact = analytic.flops(spec, DepthSchedule.per_scale(spec, ds))
        assert exact <= sum(costs[s][d] for s, d in enumerate(ds)) * (1 + 1e-12)


def _rows(spec, values, metric="kl", full=None, weights="w", select="isometric"):
    """Single-scale rows {(scale, depth): value} (+ a reference row of the metric)."""
    out = [{"kind": "sensitivity", "model": spec.name, "weights": weights, "select": select, "mode": "single",
            "scale": s, "depth": d, "metric": metric, "value": v, "ci_low": v * 0.9, "ci_high": v * 1.1, "n": 4}
           for (s, d), v in values.items()]
    if full is not None:
        out.append({"kind": "sensitivity", "model": spec.name, "weights": weights, "select": select,
                    "mode": "reference", "scale": None, "depth": spec.depth, "metric": metric, "value": full})
    return out


def _write(tmp_path, rows):
    d = tmp_path / "sens"
    for r in rows:
        results.append_row(d / "sensitivity.jsonl", r)
    results.write_manifest(d, {"kind": "sensitivity"})
    return d


def test_loss_matrix_from_rows(tmp_path):
    vals = {(s, d): 0.1 * (s + 1) / d for s in range(TINY.num_scales) for d in (2,)}
    d = _write(tmp_path, _rows(TINY, vals, "toy_acc", full=0.8))
    mat = planning.load_matrix(d, "toy_acc", resolve_spec)
    assert mat.depths == (2, 4)
    assert mat.losses[1][2] == pytest.approx(0.8 - 0.1)
    assert mat.losses[1][4] == 0.0
    with pytest.raises(UsageError, match="no single-scale rows of metric 'kl'"):
        planning.load_matrix(d, "kl", resolve_spec)
    with pytest.raises(UsageError, match="does not exist"):
        planning.load_matrix(tmp_path / "nowhere", "kl", resolve_spec)


def test_loss_matrix_with_a_missing_cell_is_refused(tmp_path):
    vals = {(s, 2): 0.1 for s in range(TINY.num_scales - 1)}
    with pytest.raises(UsageError, match="misses cells"):
        planning.load_matrix(_write(tmp_path, _rows(TINY, vals)), "kl", resolve_spec)


def test_make_plan_documents_itself(tmp_path):
    # the last scale is cheap in loss and holds most tokens: the plan runs it shallow
    vals = {(0, 2): 1.0, (1, 2): 1.0, (2, 2): 1.0, (3, 2): 0.01}
    d = _write(tmp_path, _rows(TINY, vals))
    plan = planning.make_plan(d, resolve_spec, "kv", 0.75)
    assert plan["depths"] == [4, 4, 4, 2]
    assert plan["predicted_loss"] == pytest.approx(0.01)
    assert plan["cost"]["fraction_of_full"] <= 0.75
    assert plan["sensitivity"]["manifest_sha256"] == planning.file_sha256(d / "manifest.json")
    assert "sum over scales" in plan["assumption"]
    assert plan["method"] == "schedule:depths=4/4/4/2,select=isometric"
    p = planning.write_plan(plan, tmp_path / "plan.json")
    got = planning.read_plan(p, TINY)
    assert got.depths == (4, 4, 4, 2) and got.predicted_loss == pytest.approx(0.01)


@pytest.mark.parametrize("text,match", [("{", "not JSON"), ('{"x": 1}', "no 'depths'"),
                                        ('{"depths": [4, 4]}', "needs 4 depths"),
                                        ('{"depths": [4, 4, 4, 9]}', "outside"),
                                        ('{"depths": [4, 4, 4, 4], "model": "var-toy"}', "plan for var-toy")])
def test_read_plan_errors(tmp_path, text, match):
    p = tmp_path / "plan.json"
    p.write_text(text)
    with pytest.raises(UsageError, match=match):
        planning.read_plan(p, TINY)


def test_cli_plan_writes_plan_json(tmp_path):
    vals = {(0, 2): 1.0, (1, 2): 1.0, (2, 2): 1.0, (3, 2): 0.01}
    d = _write(tmp_path, _rows(TINY, vals))
    out = tmp_path / "p" / "plan.json"
    res = CliRunner().invoke(app, ["plan", "--sensitivity", str(d), "--kv-budget", "0.75", "--out", str(out),
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["depths"] == [4, 4, 4, 2]
    assert json.loads(res.stdout)["depths"] == [4, 4, 4, 2]


@pytest.mark.parametrize("args", [[], ["--kv-budget", "0.5", "--flops-budget", "0.5"], ["--kv-budget", "1.5"],
                                  ["--kv-budget", "0.5", "--metric", "psnr"], ["--kv-budget", "0.01"],
                                  ["--latency-budget", "10"]])
def test_cli_plan_bad_input_exits_2(tmp_path, args):
    vals = {(s, 2): 0.1 for s in range(TINY.num_scales)}
    d = _write(tmp_path, _rows(TINY, vals))
    res = CliRunner().invoke(app, ["plan", "--sensitivity", str(d), "--out", str(tmp_path / "plan.json"), *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output


def test_schedule_method_parses_and_reads_back():
    conf = methods.parse("schedule:depths=4/4/2/2", TINY)
    assert conf.canonical() == "schedule:depths=4/4/2/2,select=isometric"
    assert conf.schedule() == DepthSchedule.per_scale(TINY, [4, 4, 2, 2])
    assert conf.descriptor() == (2, 2, "isometric") and conf.plan_changes() == {} and conf.refiner() is None
    assert methods.parse(conf.canonical(), TINY) == conf           # the label reads back
    assert conf.canonical() == planning.schedule_label([4, 4, 2, 2], "isometric")
    assert methods.parse("schedule:depths=4/4/2/2+kv-fp8", TINY).plan_changes() == {"kv_fp8": True}
    from model.methods import MethodError
    for bad in ("schedule:depths=4/4/2", "schedule:depths=4/x/2/2", "schedule:blocks=4", "schedule:depths=4/4/2/9"):
        with pytest.raises(MethodError):
            methods.parse(bad, TINY)


def test_sweep_schedule_points_have_their_own_key(tmp_path):
    from varbench.measuring.sweep import SweepConfig, expand_grid, method_grid
    from varbench.schema import SWEEP, key_of
    from varbench.target import Weights
    a, b = "schedule:depths=4/4/2/2,select=isometric", "schedule:depths=4/2/4/2,select=isometric"
    cfg = SweepConfig(model="var-tiny", methods=[a, b, "variant:depth=2,switch=2"], device="cpu")
    grid = method_grid(cfg)
    assert [g[0] for g in grid][:2] == [a, b] and grid[0][1:] == (2, 2, "isometric")
    pts = expand_grid(cfg, Weights("random"))
    assert len({key_of(p, SWEEP) for p in pts}) == 3


def test_cli_sweep_schedule_from_plan_json(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"depths": [4, 4, 2, 2], "select": "isometric", "model": "var-tiny"}))
    res = CliRunner().invoke(app, ["sweep", "--model", "var-tiny", "--device", "cpu", "--dtype", "fp32",
                                   "--repeats", "1", "--min-seconds", "0", "--warmup", "0", "--schedule", str(plan),
                                   "--out", str(tmp_path / "sw"), "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["status"] == "ok" and row["method"] == "schedule:depths=4/4/2/2,select=isometric"
    assert row["kv_bytes"] == row["kv_bytes_analytic"]
    assert row["schedule"] == DepthSchedule.per_scale(TINY, [4, 4, 2, 2]).describe()
    res = CliRunner().invoke(app, ["sweep", "--model", "var-tiny", "--device", "cpu", "--schedule",
                                   str(tmp_path / "nope.json"), "--out", str(tmp_path / "sw")])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_latency_costs_measured_where_a_row_runs_that_depth_else_flops_scaled():
    spec = TINY
    full = {"kind": "sweep", "status": "ok", "model": spec.name, "select": "isometric", "batch": 2, "depth": 4,
            "switch": 4, "method": "variant:depth=4,switch=4,select=isometric", "scale_ms_p50": [1.0, 2.0, 3.0, 4.0]}
    d2 = {**full, "depth": 2, "switch": 2, "method": "variant:depth=2,switch=2,select=isometric",
          "scale_ms_p50": [1.0, 2.0, 0.5, 0.25]}
    other = {**d2, "method": "kv-fp8", "scale_ms_p50": [9.0] * 4}         # another method's times are not used
    costs, source, batch = planning.latency_costs(spec, (2, 4), "isometric", [full, d2, other], None)
    assert batch == 2
    assert costs[3] == {2: 0.25, 4: 4.0} and source[3][2].startswith("measured (VARiant d2")
    fl = planning.flops_costs(spec, (2, 4), "isometric")
    assert costs[1][2] == pytest.approx(2.0 * fl[1][2] / fl[1][4]) and "FLOP fraction" in source[1][2]
    with pytest.raises(UsageError, match="no ok row of the full"):
        planning.latency_costs(spec, (2, 4), "isometric", [d2], None)


def test_make_plan_latency_budget(tmp_path):
    vals = {(0, 2): 1.0, (1, 2): 1.0, (2, 2): 1.0, (3, 2): 0.01}
    d = _write(tmp_path, _rows(TINY, vals))
    sw = tmp_path / "sweep"
    results.append_row(sw / "sweep.jsonl", {"kind": "sweep", "status": "ok", "model": "var-tiny",
                                            "select": "isometric", "batch": 1, "depth": 4, "switch": 4,
                                            "scale_ms_p50": [1.0, 1.0, 1.0, 4.0]})
    plan = planning.make_plan(d, resolve_spec, "latency", 6.0, sweep_dir=sw)
    assert plan["depths"] == [4, 4, 4, 2] and plan["cost"]["value"] <= 6.0
    assert plan["budget"]["unit"] == "ms" and plan["latency_batch"] == 1
