"""The CI gate on synthetic results: exit 0 unchanged/noise, 1 memory or speed regression, 2 cross-device."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from varbench.gating import regress
from varbench.cli import app


def write_results(d: Path, *, slow: float = 1.0, mem: float = 1.0, jitter: float = 0.0, seed: int = 0,
                  device: str = "cpu", gpu: str | None = None, kl_shift: float = 0.0) -> Path:
    """A results dir with sweep + sensitivity rows; latency samples are ~U(base, base*1.02) (+ jitter)."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"torch": "2.x", "gpu_name": gpu}))
    with open(d / "sweep.jsonl", "w") as f:
        for depth in (2, 4):
            for batch in (1, 2):
                base = (1 + depth) * batch * slow * (1 + jitter * (rng.random() - 0.5))
                s = sorted(base * (1 + 0.02 * rng.random()) for _ in range(20))
                kv = 1000 * depth * batch
                f.write(json.dumps({
                    "kind": "sweep", "model": "var-tiny", "weights": "random", "depth": depth, "switch": 2,
                    "select": "isometric", "batch": batch, "dtype": "fp32", "device": device, "status": "ok",
                    "n": 20, "latency_ms_p50": s[10], "images_per_s": 1000 * batch / s[10],
                    "kv_bytes": round(kv * mem), "kv_bytes_analytic": kv,
                    "peak_allocated_bytes": round(5 * kv * mem * (1 + jitter * 0.1 * (rng.random() - 0.5))),
                    "latency_ms_samples": s, "future_field": "ignored"}) + "\n")
    with open(d / "sensitivity.jsonl", "w") as f:
        for scale in (1, 2, 3):
            f.write(json.dumps({"kind": "sensitivity", "model": "var-tiny", "mode": "from", "scale": scale,
                                "depth": 2, "metric": "kl", "value": 0.1 * scale + kl_shift}) + "\n")
    return d


def run_check(results: Path, baseline: Path, *extra: str):
    return CliRunner().invoke(app, ["check", "--results", str(results), "--baseline", str(baseline), *extra])


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    base = write_results(tmp_path / "base", seed=0)
    bl = tmp_path / "bl.json"
    res = run_check(base, bl, "--update-baseline")
    assert res.exit_code == 0, res.output
    data = json.loads(bl.read_text())
    assert data["device_class"] == "cpu"
    # raw samples are stored for the asv rule
    assert any(m["samples"] for m in data["metrics"] if m["family"] == "speed")
    return bl


def test_unchanged_passes(tmp_path, baseline):
    res = run_check(write_results(tmp_path / "now", seed=1), baseline, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["passed"] is True and summary["counts"].get("ok", 0) >= 20
    bench = json.loads((tmp_path / "now" / "benchmark.json").read_text())
    assert bench and all(set(e) == {"name", "unit", "value"} for e in bench)


def test_memory_ten_percent_worse_fails(tmp_path, baseline):
    res = run_check(write_results(tmp_path / "now", seed=1, mem=1.10), baseline, "--json")
    assert res.exit_code == 1, res.output
    bad = [v for v in json.loads(res.stdout)["verdicts"] if v["verdict"] == "regression"]
    assert bad and all(v["family"] == "memory" for v in bad)
    assert any(v["metric"].endswith("/kv_bytes") for v in bad)


def test_noise_within_tolerance_passes(tmp_path, baseline):
    # +-4% latency jitter (under the 1.1 factor) and +-0.5% allocator-peak wobble (under 1%)
    res = run_check(write_results(tmp_path / "now", seed=7, jitter=0.08), baseline)
    assert res.exit_code == 0, res.output


def test_speed_thirty_percent_slower_fails(tmp_path, baseline):
    res = run_check(write_results(tmp_path / "now", seed=1, slow=1.3), baseline, "--json")
    assert res.exit_code == 1, res.output
    bad = [v for v in json.loads(res.stdout)["verdicts"] if v["verdict"] == "regression"]
    assert {v["family"] for v in bad} == {"speed"} and len(bad) == 4


def test_quality_drift_fails(tmp_path, baseline):
    res = run_check(write_results(tmp_path / "now", seed=1, kl_shift=0.01), baseline, "--json")
    assert res.exit_code == 1
    assert {v["family"] for v in json.loads(res.stdout)["verdicts"] if v["verdict"] == "regression"} == {"quality"}


def test_cross_device_is_usage_error_unless_forced(tmp_path, baseline):
    gpu = write_results(tmp_path / "gpu", seed=1, device="cuda", gpu="NVIDIA H100 80GB HBM3")
    res = run_check(gpu, baseline)
    assert res.exit_code == 2
    assert "cuda:NVIDIA H100 80GB HBM3" in res.output and "Traceback" not in res.output
    assert run_check(gpu, baseline, "--force").exit_code in (0, 1)


def test_bad_baseline_file_is_exit_2(tmp_path):
    bad = tmp_path / "bl.json"
    bad.write_text("{not json")
    res = run_check(write_results(tmp_path / "now"), bad)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert run_check(write_results(tmp_path / "now"), tmp_path / "absent.json").exit_code == 2


def test_missing_point_and_analytic_change_fail():
    rows = [{"kind": "sweep", "model": "m", "depth": 2, "switch": 2, "batch": 1, "dtype": "fp32", "status": "ok",
             "kv_bytes_analytic": 100, "kv_bytes": 100}]
    base = regress.make_baseline(regress.metrics_from_rows(rows), "cpu")
    changed = [{**rows[0], "kv_bytes_analytic": 101, "kv_bytes": 100}]
    res = regress.compare(base, regress.metrics_from_rows(changed), "cpu")
    assert not res.passed and [v.verdict for v in res.verdicts if v.failed] == ["changed"]
    gone = [{**rows[0], "status": "oom"}]
    res = regress.compare(base, regress.metrics_from_rows(gone), "cpu")
    assert not res.passed and {v.verdict for v in res.verdicts} == {"missing"}


def test_speed_ratio_within_run():
    def rows(full_ms: float, d2_ms: float):
        return [{"kind": "sweep", "model": "var-tiny", "depth": d, "switch": 2, "batch": 1, "dtype": "fp32",
                 "status": "ok", "latency_ms_p50": ms} for d, ms in ((4, full_ms), (2, d2_ms))]
    tol = regress.Tolerances(check_speed=False, ratio_tolerance=0.1, ratios=[("full", "d2")])
    base = regress.make_baseline(regress.metrics_from_rows(rows(10.0, 5.0), tol), "cpu")
    assert regress.compare(base, regress.metrics_from_rows(rows(20.0, 10.0), tol), "cpu", tol).passed
    res = regress.compare(base, regress.metrics_from_rows(rows(10.0, 7.0), tol), "cpu", tol)
    assert [v.family for v in res.verdicts if v.failed] == ["ratio"]


def test_mann_whitney_is_scipys_one_sided_test():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    x = [round(rng.gauss(10, 1), 1) for _ in range(25)]     # rounding makes ties: the normal approximation
    y = [round(rng.gauss(10.6, 1), 1) for _ in range(30)]
    for a, b in ((x, y), (y, x)):
        want = scipy_stats.mannwhitneyu(a, b, alternative="greater", method="asymptotic").pvalue
        assert regress.mann_whitney_greater(a, b) == pytest.approx(want, rel=1e-9)
    # five samples each, no ties: the exact law, whose smallest one-sided p is 1 / C(10, 5) = 1/252
    assert regress.mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1 / 252)
    # clearly shifted samples give a tiny p; identical ones p = 0.5-ish; no samples: no evidence
    assert regress.mann_whitney_greater([v + 5 for v in x], x) < 1e-6
    assert regress.mann_whitney_greater(x, x) > 0.3
    assert regress.mann_whitney_greater([], x) == 1.0
