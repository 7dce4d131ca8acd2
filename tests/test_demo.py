"""`varbench demo --quick`: every part on the shipped toy weights, a report with figures, a resumable directory,
and a Pareto summary that names only qualifying, non-dominated configurations."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from varbench.target import file_sha256
from varbench.workflows import demo as demo_lib
from varbench.cli import app

runner = CliRunner()
PARTS = ("models", "sensitivity-from", "sensitivity-single", "sweep", "trace")


def _rows(d: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(d.glob("*.jsonl")) if "timeline" not in f.name
            for line in f.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    return out, res


def test_quick_demo_writes_every_part_and_the_report(quick_run):
    out, res = quick_run
    assert res.exit_code == 0, res.stderr + repr(res.exception)
    lines = res.stdout.splitlines()
    assert len(lines) == 4, res.stdout
    assert lines[0] == f"report: {out / 'report.html'}"
    assert lines[1].startswith("fastest within KL") and lines[2].startswith("lowest memory within KL")
    assert lines[3].startswith("best quality per FLOP")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('class="plotly-graph-div"') >= 4          # Pareto, heatmaps, trace
    for heading in ("Pareto frontiers", "Sensitivity (scale × depth)", "Memory timeline (trace)"):
        assert heading in html
    assert "RANDOM WEIGHTS" not in html
    for part in PARTS:
        assert _rows(out / part), f"{part} wrote no rows"
    # the tables went to stderr, not stdout
    assert "var-toy VARiant(d, switch 4" in res.stderr and "sweep var-toy" in res.stderr


def test_every_row_names_the_shipped_weights(quick_run):
    out, res = quick_run
    assert res.exit_code == 0
    var_p, _ = demo_lib.shipped_weights()
    labels = {r.get("weights") for part in PARTS for r in _rows(out / part)
              if r.get("kind") in ("models", "sensitivity", "sweep", "trace", "trace_scale")}
    assert labels == {f"shipped:var-toy@{file_sha256(var_p)[:12]}"}       # by content, never by path
    for part in PARTS:
        assert str(var_p.parent) not in (out / part / "manifest.json").read_text()
    sweep = _rows(out / "sweep")
    assert {r["depth"] for r in sweep} == {2, 12} and all(r["status"] == "ok" for r in sweep)
    from_rows = _rows(out / "sensitivity-from")
    assert any(r["mode"] == "from" and r["scale"] == 4 and r["metric"] == "kl" for r in from_rows)
    assert any(r["mode"] == "reference" and r["metric"] == "toy_acc" for r in from_rows)


def test_rerun_resumes_without_measuring_again(quick_run):
    out, res = quick_run
    assert res.exit_code == 0
    files = [out / "sweep" / "sweep.jsonl", out / "trace" / "trace.jsonl",
             out / "sensitivity-from" / "sensitivity.jsonl", out / "sensitivity-single" / "sensitivity.jsonl"]
    before = {f: f.read_text() for f in files}
    again = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.stderr
    for f, text in before.items():
        assert f.read_text() == text, f"{f} was measured again"
    assert "resumed depth=2" in again.stderr and "kept from an earlier run: trace" in again.stderr
    assert again.stdout.splitlines()[0] == res.stdout.splitlines()[0]


def test_a_failed_sweep_point_is_exit_1_and_retried_later(quick_run, tmp_path, monkeypatch):
    out, res = quick_run
    assert res.exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    rows = (copy / "sweep" / "sweep.jsonl").read_text().splitlines()
    (copy / "sweep" / "sweep.jsonl").write_text("\n".join(r for r in rows if json.loads(r)["depth"] != 2) + "\n")
    monkeypatch.setenv("VARBENCH_FAULT", "error:depth=2")
    failed = runner.invoke(app, ["demo", "--quick", "--out", str(copy)])
    assert failed.exit_code == 1, failed.stderr
    assert "1 of 2 sweep points failed" in failed.stderr and len(failed.stdout.splitlines()) == 4
    assert [json.loads(r)["status"] for r in (copy / "sweep" / "sweep.jsonl").read_text().splitlines()
            if json.loads(r)["depth"] == 2] == ["error"]


def test_quick_and_full_do_not_share_a_directory(tmp_path):
    (tmp_path / demo_lib.DEMO_FILE).write_text(json.dumps({"quick": False}))
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "holds a full demo" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error")


def test_missing_shipped_weights_is_exit_3_never_random(tmp_path, monkeypatch):
    import model.pipeline

    monkeypatch.setattr(model.pipeline, "WEIGHTS_DIR", tmp_path)
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "out")])
    assert res.exit_code == 3
    assert "var.safetensors" in res.stderr and not (tmp_path / "out" / "sweep").exists()


def _sweep_row(depth, batch, ips, kv, flops):
    return {"kind": "sweep", "model": "var-toy", "status": "ok", "depth": depth, "switch": 4, "batch": batch,
            "images_per_s": ips, "kv_bytes": kv, "flops": flops}


def _sens(depth, metric, value, mode="from"):
    return {"kind": "sensitivity", "model": "var-toy", "mode": mode, "scale": None if mode == "reference" else 4,
            "depth": depth, "metric": metric, "value": value, "samples": 8}


def test_summary_picks_qualifying_pareto_configs():
    mib = 1 << 20
    sweep = [_sweep_row(2, 8, 30.0, 8 * mib, 8e9), _sweep_row(4, 8, 20.0, 16 * mib, 16e9),
             _sweep_row(6, 8, 12.0, 24 * mib, 24e9), _sweep_row(12, 8, 10.0, 40 * mib, 40e9),
             _sweep_row(4, 1, 5.0, 2 * mib, 2e9)]
    sens = [_sens(2, "kl", 0.2), _sens(4, "kl", 0.03), _sens(6, "kl", 0.01),
            _sens(2, "toy_acc", 0.5), _sens(4, "toy_acc", 0.9), _sens(6, "toy_acc", 0.9),
            _sens(12, "toy_acc", 0.95, mode="reference")]
    fast, mem, per_flop = demo_lib.pareto_summary(sweep, sens, kl_tolerance=0.05)
    # d2 is fastest and smallest but its KL (0.2) is over the tolerance: d4 wins both, at batch 8 for speed
    assert fast.startswith("fastest within KL 0.05") and "d4 (switch 4, batch 8)" in fast and "2.00x" in fast
    assert "d4 (switch 4," in mem and "2.000 MiB/image" in mem and "60% less" in mem
    # accuracy per GFLOP: d2 0.5/1 = 0.5 beats d4 0.9/2 = 0.45, d6 0.3, full 0.24
    assert "d2 (switch 4): toy accuracy 50% at 1.00 GFLOP/image" in per_flop and "8 samples" in per_flop
    strict = demo_lib.pareto_summary(sweep, sens, kl_tolerance=0.0)
    assert "full (switch 4, batch 8)" in strict[0] and "full (switch 4," in strict[1]


def test_the_default_tolerance_separates_the_shipped_subnets(tmp_path):
    """On the shipped weights, at the full demo's sample count, seed and switch, the default KL tolerance claims a
    subnet (its interval's upper end below it) and not every subnet: the demo's first two lines name a real
    trade-off, not "full" (a tolerance too tight for these weights) nor the smallest subnet (one too loose)."""
    import dataclasses

    from varbench.quality.sensitivity import run_sensitivity
    from varbench.workflows.demo import torch_threads

    plan = demo_lib.demo_plan(quick=False)
    # the demo's cells at the switch, KL only (the metric adds classifier scores, not a different KL)
    cfg = dataclasses.replace(next(c for c in plan.sensitivity if c.mode == "from"), depths=[2, 6],
                              scales=[plan.switch], metric="kl")
    with torch_threads(plan.threads):
        rows = run_sensitivity(cfg, tmp_path / "sens")
    hi = {r["depth"]: r["ci_high"] for r in rows if r["mode"] == "from" and r["metric"] == "kl"}
    assert set(hi) == {2, 6} and all(r["samples"] == 16 for r in rows if r["metric"] == "kl")
    assert hi[6] <= demo_lib.KL_TOLERANCE < hi[2], (hi, demo_lib.KL_TOLERANCE)
