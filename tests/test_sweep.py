"""Sweep: isolated workers, complete rows, resume, fault containment (OOM, SIGKILL); timing rules; CLI bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from varbench import results
from varbench.measuring import timing
from varbench.measuring import sweep as sweep_mod
from varbench.results import read_rows
from varbench.measuring.sweep import SweepConfig, run_sweep
from varbench.schema import SWEEP, key_of

# threads=1: two intra-op threads spinning on busy shared cores make var-tiny ~100x slower
TINY = dict(model="var-tiny", depths=[2, 4], batches=[1, 2], switches=[2], dtype="fp32", device="cpu",
            repeats=2, min_seconds=0.0, warmup=0, threads=1)


def _events(cfg, out):
    seen = []
    rows = run_sweep(cfg, out, progress=lambda ev, i, n, obj: seen.append((ev, obj.get("depth"), obj.get("batch"))))
    return rows, seen


# ---------------------------------------------------------------------------------------------------- timing


def test_measure_meets_count_and_duration():
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        time.sleep(0.004)

    samples = timing.measure(fn, warmup=2, min_repeats=3, min_seconds=0.06)
    assert len(samples) >= 3 and sum(samples) >= 60.0          # duration rule dominates here
    assert calls["n"] == len(samples) + 2                       # warm-up ran but is not in the samples
    assert all(s >= 3.5 for s in samples)
    few = timing.measure(fn, warmup=0, min_repeats=5, min_seconds=0.0)
    assert len(few) == 5                                        # count rule alone


def test_percentiles_known_values():
    p = timing.percentiles(list(range(1, 101)))                 # 1..100
    assert p["n"] == 100 and p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01) and p["mean"] == pytest.approx(50.5)
    assert timing.percentiles([])["p50"] is None


# ---------------------------------------------------------------------------------------------------- sweep


def test_sweep_rows_complete_then_resume_skips_all(tmp_path):
    cfg = SweepConfig(**TINY)
    rows, ev = _events(cfg, tmp_path)
    assert [e for e, *_ in ev].count("start") == 4
    assert [(r["depth"], r["batch"]) for r in rows] == [(2, 1), (2, 2), (4, 1), (4, 2)]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["kind"] == "sweep" and r["weights"] == "random" and "RANDOM" in r["weights_notice"]
        for f in SWEEP.required:                                           # every row carries these
            assert f in r
            if f not in ("error", "peak_allocated_bytes", "nvml_peak_used_bytes"):   # GPU-only figures
                assert r[f] is not None, f
        assert r["peak_allocated_bytes"] is None and r["nvml_peak_used_bytes"] is None   # CPU: no allocator/NVML
        assert r["n"] >= 2 and r["latency_ms_p50"] <= r["latency_ms_p99"]
        assert len(r["latency_ms_samples"]) == r["n"] and r["latency_ms_min"] == pytest.approx(
            min(r["latency_ms_samples"]), abs=1e-3)                       # raw samples kept for the gate's U test
        assert r["cpu_threads"] == 1                                      # the config's thread count was applied
        assert len(r["scale_ms_p50"]) == 4 and all(v > 0 for v in r["scale_ms_p50"])
        assert r["kv_bytes"] == r["kv_bytes_analytic"] > 0             # measured peak == analytic plan
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / (r["latency_ms_p50"] + r["decode_ms_p50"]))
        assert r["layers"] == ([0, 3] if r["depth"] == 2 else [0, 1, 2, 3])
    # KV grows linearly with batch
    assert rows[1]["kv_bytes"] == 2 * rows[0]["kv_bytes"]
    on_disk = results.read_rows(tmp_path / "sweep.jsonl")
    assert len(on_disk) == 4
    man = results.read_manifest(tmp_path)
    assert man["kind"] == "sweep" and man["dtype"] == "fp32" and man["config"]["depths"] == [2, 4]

    rows2, ev2 = _events(cfg, tmp_path)
    assert [e for e, *_ in ev2] == ["skip"] * 4
    assert len(results.read_rows(tmp_path / "sweep.jsonl")) == 4
    assert [key_of(r, SWEEP) for r in rows2] == [key_of(r, SWEEP) for r in rows]
    assert len(results.read_manifest(tmp_path)["resumes"]) == 1


def test_faults_are_contained_and_errors_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("VARBENCH_FAULT", "oom:depth=2,batch=2;kill:depth=4,batch=1")
    cfg = SweepConfig(**{**TINY, "repeats": 1})
    rows, _ = _events(cfg, tmp_path)
    status = {(r["depth"], r["batch"]): r for r in rows}
    assert status[(2, 2)]["status"] == "oom" and "out of memory" in status[(2, 2)]["error"].lower()
    assert status[(4, 1)]["status"] == "error" and "SIGKILL" in status[(4, 1)]["error"]
    assert status[(2, 1)]["status"] == "ok" and status[(4, 2)]["status"] == "ok"
    assert status[(2, 2)]["latency_ms_p50"] is None                     # nothing invented for a failed point
    # a rerun (fault fixed) retries only the crashed point; the OOM counts as a finished result
    monkeypatch.delenv("VARBENCH_FAULT")
    rows2, ev2 = _events(cfg, tmp_path)
    assert [(e, d, b) for e, d, b in ev2 if e == "start"] == [("start", 4, 1)]
    assert {(r["depth"], r["batch"]): r["status"] for r in rows2}[(4, 1)] == "ok"
    assert len(results.read_rows(tmp_path)) == 5


def test_points_spread_over_devices_give_the_same_rows(tmp_path, monkeypatch):
    """Two device slots run points concurrently, each worker seeing one GPU id; rows keep the 1-device keys."""
    seen = []
    real = sweep_mod.run_point

    cpus_seen = {}

    def spy(point, timeout_s=None, gpu=None, cpus=None):
        seen.append(gpu)
        cpus_seen[gpu] = cpus
        return real(point, timeout_s, gpu, cpus)

    monkeypatch.setattr(sweep_mod, "run_point", spy)
    cfg = SweepConfig(**{**TINY, "repeats": 1, "devices": ["0", "1"]})
    rows = run_sweep(cfg, tmp_path, progress=False)
    assert [(r["depth"], r["batch"]) for r in rows] == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert all(r["status"] == "ok" and r["device"] == "cpu" for r in rows)
    assert len(seen) == 4 and set(seen) <= {"0", "1"}
    assert {r["gpu_index"] for r in rows} <= {"0", "1"}
    assert len(read_rows(tmp_path / "sweep.jsonl")) == 4
    slices = sweep_mod.cpu_slices(2)
    if slices:                 # concurrent workers get disjoint CPU sets, and each worker really is pinned to its own
        assert all(cpus_seen[g] in slices for g in cpus_seen)
        assert all(set(cpus_seen[g]).isdisjoint(cpus_seen[h]) for g in cpus_seen for h in cpus_seen if g != h)
        assert all(r["cpu_affinity_count"] == len(slices[0]) and r["cpu_threads"] == len(slices[0]) for r in rows)
    assert all(r["status"] == "ok" for r in run_sweep(SweepConfig(**{**TINY, "repeats": 1}), tmp_path, False))
    assert len(read_rows(tmp_path / "sweep.jsonl")) == 4          # same keys as a 1-device sweep: all skipped


def test_worker_does_not_import_plotly():
    code = ("import sys, varbench.measuring.sweep_worker, varbench.measuring.timing, varbench.measuring.memory, varbench.measuring.analytic, "
            "model.pipeline; print('plotly' in sys.modules, 'rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("args, needle", [
    (["--depths", "0"], "--depths"),
    (["--batch", "-1"], "--batch"),
    (["--model", "var-nope"], "unknown model"),
    (["--depths", "2,9"], "--depths"),
    (["--switch", "x"], "--switch"),
    (["--threads", "0"], "--threads"),
    (["--devices", "0,1"], "--devices"),          # --devices needs --device cuda
    (["--devices", "-1"], "--devices"),
])
def test_cli_bad_input_exit_2(args, needle, tmp_path):
    from varbench.cli import app

    res = CliRunner().invoke(app, ["sweep", "--model", "var-tiny", "--switch", "2", "--device", "cpu",
                                   "--out", str(tmp_path), *args])
    text = res.output
    assert res.exit_code == 2, text
    assert "Traceback" not in text and needle in text
    assert len([ln for ln in text.splitlines() if ln.strip()]) == 1, text
    assert not (tmp_path / "sweep.jsonl").exists()


def test_cli_unwritable_out(tmp_path):
    from varbench.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["sweep", "--model", "var-tiny", "--switch", "2", "--device", "cpu",
                                   "--out", str(blocker / "d")])
    assert res.exit_code == 2 and "--out" in res.output and "Traceback" not in res.output


def test_compile_is_a_key_field_and_old_rows_resume(tmp_path):
    """--compile is part of a point's identity; rows written before the field existed count as compile=False."""
    cfg = SweepConfig(**{**TINY, "depths": [2], "batches": [1], "repeats": 1, "compile": True})
    rows = run_sweep(cfg, tmp_path, progress=False)
    assert rows[0]["status"] == "ok" and rows[0]["compile"] is True
    old = {k: v for k, v in rows[0].items() if k != "compile"}          # a pre-compile row: plain point now
    (tmp_path / "sweep.jsonl").write_text(json.dumps(old) + "\n")
    seen = []
    run_sweep(SweepConfig(**{**TINY, "depths": [2], "batches": [1], "repeats": 1}), tmp_path,
              progress=lambda ev, i, n, obj: seen.append(ev))
    assert seen[0] == "skip"


def test_cli_compile_on_cpu_warns_and_runs(tmp_path):
    from varbench.cli import app

    res = CliRunner().invoke(app, ["sweep", "--model", "var-tiny", "--depths", "2", "--switch", "2", "--device",
                                   "cpu", "--compile", "--repeats", "1", "--min-seconds", "0", "--threads", "1",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "CUDA only" in res.output
    rows = results.read_rows(tmp_path / "sweep.jsonl")
    assert rows and rows[0]["status"] == "ok" and rows[0]["compile"] is True
