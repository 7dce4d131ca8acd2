"""`varbench compare A B`: ratios per matched point, the gate's U test on raw samples, --fail-on, HTML diff."""
from __future__ import annotations

import json
import random
from pathlib import Path

from typer.testing import CliRunner

from varbench.cli import app
from varbench.gating import compare as cmp
from varbench.gating import regress

EVIL = "</td><script>alert(1)</script>"


def write_run(d: Path, *, slow: float = 1.0, mem: float = 1.0, ips: float = 1.0, seed: int = 0,
              model: str = "var-tiny", method: bool = True, p50: dict | None = None,
              commit: str = "c0") -> Path:
    """Sweep rows for depths 2,4 x batch 1,2; latency samples ~U(base, 1.02 base) x ``slow``."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"git_commit": commit, "gpu_name": None}))
    rows = []
    for depth in (2, 4):
        for batch in (1, 2):
            base = (1 + depth) * batch * slow
            s = sorted(base * (1 + 0.02 * rng.random()) for _ in range(20))
            r = {"kind": "sweep", "model": model, "weights": "random", "depth": depth, "switch": 2,
                 "select": "isometric", "batch": batch, "dtype": "fp32", "device": "cpu", "keep_skipped": False,
                 "status": "ok", "n": 20, "latency_ms_p50": (p50 or {}).get((depth, batch), s[10]),
                 "latency_ms_samples": s, "images_per_s": 1000 * batch / s[10] * ips,
                 "kv_bytes": round(1000 * depth * batch * mem), "kv_bytes_analytic": 1000 * depth * batch}
            if method:
                r["method"] = f"variant:depth={depth},switch=2,select=isometric"
            rows.append(r)
    (d / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def run(*args: str):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def by(summary: dict, metric: str) -> list[dict]:
    return [d for d in summary["deltas"] if d["metric"] == metric]


def test_same_code_other_seed_passes_and_ratios_are_b_over_a(tmp_path):
    a, b = write_run(tmp_path / "a", seed=0), write_run(tmp_path / "b", seed=1, slow=1.01)
    res = run(a, b, "--json", "--fail-on", "latency_ms_p50:1.05")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    lat = by(s, "latency_ms_p50")
    assert len(lat) == 4 and all(d["verdict"] in ("ok", "improved", "regression") for d in lat)
    assert all(d["ratio"] == d["b"] / d["a"] for d in lat)
    assert all(d["p"] is not None and d["n_a"] == d["n_b"] == 20 for d in lat)
    assert not s["failed"]


def test_slower_b_fails_on_threshold_with_a_significant_u_test(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", seed=1, slow=1.3)
    res = run(a, b, "--json", "--fail-on", "latency_ms_p50:1.05")
    assert res.exit_code == 1 and "Traceback" not in res.output
    s = json.loads(res.stdout)
    lat = by(s, "latency_ms_p50")
    assert {d["verdict"] for d in lat} == {"regression"} and all(d["p"] < 1e-6 for d in lat)
    assert len(s["failed"]) == 4
    assert run(a, b, "--fail-on", "latency_ms_p50:1.5").exit_code == 0     # within a looser threshold


def test_ratio_past_threshold_without_significance_is_not_a_regression(tmp_path):
    # same raw samples on both sides, only the p50 differs: x1.2 by the factor, but the U test sees no shift
    a = write_run(tmp_path / "a", p50={(2, 1): 10.0})
    b = write_run(tmp_path / "b", p50={(2, 1): 12.0})
    s = json.loads(run(a, b, "--json", "--fail-on", "latency_ms_p50:1.05").stdout)
    d = next(d for d in by(s, "latency_ms_p50") if d["a"] == 10.0)
    assert d["ratio"] == 1.2 and d["p"] > 0.3 and d["verdict"] == "ok"


def test_direction_comes_from_the_schema(tmp_path):
    # higher images/s is better, more KV bytes is worse (no samples: the factor rule)
    a = write_run(tmp_path / "a")
    s = json.loads(run(a, write_run(tmp_path / "b", ips=1.5, mem=1.2), "--json").stdout)
    assert {d["verdict"] for d in by(s, "images_per_s")} == {"improved"}
    assert {d["verdict"] for d in by(s, "kv_bytes")} == {"regression"}
    assert all(d["better"] == "lower" and d["p"] is None for d in by(s, "kv_bytes"))
    res = run(a, write_run(tmp_path / "c", ips=0.5), "--fail-on", "images_per_s:1.1")
    assert res.exit_code == 1


def test_old_rows_without_method_match_new_ones_and_unmatched_points_are_listed(tmp_path):
    a = write_run(tmp_path / "a", method=False)
    b = write_run(tmp_path / "b", seed=1)
    rows = (b / "sweep.jsonl").read_text().splitlines()
    (b / "sweep.jsonl").write_text("\n".join(rows[:3]) + "\n")                    # depth 4 batch 2 gone
    s = json.loads(run(a, b, "--json").stdout)
    points = {d["point"] for d in by(s, "latency_ms_p50")}
    assert len(points) == 3
    gone = by(s, "(point)")
    assert len(gone) == 1 and gone[0]["verdict"] == "missing" and "depth=4" in gone[0]["point"]


def test_baseline_json_against_a_folder(tmp_path):
    a = write_run(tmp_path / "a")
    from varbench.results import read_rows

    bl = regress.write_json_atomic(tmp_path / "bl.json", regress.make_baseline(
        regress.metrics_from_rows(read_rows(a)), "cpu"))
    res = run(bl, write_run(tmp_path / "b", seed=2, slow=1.3), "--json", "--fail-on", "latency_ms_p50:1.1")
    assert res.exit_code == 1
    s = json.loads(res.stdout)
    assert s["a"]["source"] == "baseline" and s["b"]["source"] == "results"
    lat = by(s, "latency_ms_p50")
    assert len(lat) == 4 and all(d["verdict"] == "regression" and d["p"] < 1e-6 for d in lat)


def test_html_diff_is_self_contained_and_escaped(tmp_path):
    a, b = write_run(tmp_path / "a", model=EVIL), write_run(tmp_path / "b", model=EVIL, seed=1, slow=1.3)
    out = tmp_path / "diff.html"
    assert run(a, b, "--html", out).exit_code == 0
    page = out.read_text()
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "http" not in page
    assert page.count("regression") >= 4


def test_bad_input_is_one_line_exit_2(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", seed=1)
    for args in (("--fail-on", "gen_ms:1.05"), ("--fail-on", "latency_ms_p50:0.9"), ("--fail-on", "latency_ms_p50"),
                 ("--fail-on", "fid:1.1"), ("--alpha", "2")):
        res = run(a, b, *args)
        assert res.exit_code == 2 and "Traceback" not in res.output, (args, res.output)
        assert res.output.count("error:") == 1
    assert run(a, tmp_path / "nowhere").exit_code == 2
    (tmp_path / "empty").mkdir()
    assert run(a, tmp_path / "empty").exit_code == 2


def test_parse_fail_on():
    assert cmp.parse_fail_on(["latency_ms_p50:1.05", "kl:1.2"]) == {"latency_ms_p50": 1.05, "kl": 1.2}


def test_trace_runs_match_across_run_ids(tmp_path):
    def trace(d: Path, run_id: str, kv: int) -> Path:
        d.mkdir()
        rows = [{"kind": "trace_scale", "model": "var-tiny", "weights": "random", "depth": 2, "switch": 2,
                 "select": "isometric", "batch": 1, "dtype": "fp32", "device": "cpu", "run_id": run_id, "scale": s,
                 "kv_bytes_cache": kv * (s + 1)} for s in range(2)]
        (d / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return d

    s = json.loads(run(trace(tmp_path / "a", "t1", 100), trace(tmp_path / "b", "t2", 120), "--json").stdout)
    kv = by(s, "kv_bytes_cache")
    assert len(kv) == 2 and {d["verdict"] for d in kv} == {"regression"} and not by(s, "(point)")
