"""--profile (issue 21) on CPU with var-tiny random weights: the Chrome trace exists, is JSON with traceEvents,
holds one range per scale and the phase ranges; the breakdown arithmetic; the pipeline is left as it was."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from varbench.measuring import profiling
from varbench.measuring.sweep import SweepConfig, run_sweep
from varbench.measuring.trace import TraceConfig, run_trace
from varbench.schema import SWEEP

SCALES = ["scale 0", "scale 1", "scale 2", "scale 3"]          # var-tiny has 4 scales


def _ranges(path):
    data = json.loads(path.read_text())
    assert isinstance(data["traceEvents"], list) and data["traceEvents"]
    return [e["name"] for e in profiling.range_events(data)]


def test_sweep_profile_writes_a_trace_per_point(tmp_path):
    cfg = SweepConfig(model="var-tiny", depths=[2], batches=[2], switches=[2], dtype="fp32", device="cpu",
                      repeats=1, min_seconds=0.0, warmup=0, threads=1, profile=True)
    (row,) = run_sweep(cfg, tmp_path, progress=False)
    assert row["status"] == "ok", row["error"]
    assert row["profile_error"] is None
    rel = row["profile_trace"]
    assert rel.startswith("profiles/") and rel.endswith("/trace.json")            # relative to the results folder
    names = _ranges(tmp_path / rel)
    assert [n for n in names if n.startswith("scale ")] == SCALES                 # exactly one range per scale
    assert {"generate", "blocks", "head", "sampling", "decode"} <= set(names)
    assert names.count("blocks") == 4 and names.count("decode") == 1
    assert row["profile_memory_snapshot"] is None and "CUDA" in row["profile_memory_snapshot_reason"]
    assert len(row["profile_scale_ms"]) == 4 and all(v > 0 for v in row["profile_scale_ms"])
    assert set(row["profile_phase_ms"]) == {"blocks", "head", "sampling", "decode", "other"}
    for d in row["profile_scale_phase_ms"]:          # a scale's phases add up to the scale (exclusive times)
        assert d["blocks"] + d["head"] + d["sampling"] + d["other"] == pytest.approx(d["ms"], rel=1e-6, abs=1e-6)
    # the CPU point's energy fields are null, with the reason
    assert row["energy_j_per_image"] is None and row["energy_method"] is None
    assert "CPU" in row["energy_null_reason"]
    # the folder is the point's: same id on a resume
    assert rel.split("/")[1] == profiling.point_id({**row}, SWEEP.key_fields)


def test_trace_profile_records_files(tmp_path):
    summary = run_trace(TraceConfig(model="var-tiny", depth=2, switch=2, batch=1, dtype="fp32", device="cpu",
                                    overhead_repeats=0, profile=True), tmp_path)
    assert summary["profile_trace"] in summary["files"]
    names = _ranges(tmp_path / summary["profile_trace"])
    assert [n for n in names if n.startswith("scale ")] == SCALES


def test_profile_point_leaves_the_pipeline_as_it_was(tmp_path):
    from varbench.target import ModelTarget, load_pipeline

    pipe = load_pipeline(ModelTarget("var-tiny", allow_random=True, dtype="fp32", device="cpu"))
    kw = dict(labels_B=[0], cfg=1.5, top_k=10, top_p=0.9, seed=0, decode=False)
    before = pipe.generate(**kw).indices
    out = profiling.profile_point(pipe, kw, "cpu", tmp_path, "p")
    assert out["profile_error"] is None and (tmp_path / "profiles" / "p" / "trace.json").exists()
    assert "scale_step" not in vars(pipe) and "get_logits" not in vars(pipe.var)   # the hooks, no wrappers
    after = pipe.generate(**kw).indices
    assert all((a == b).all() for a, b in zip(before, after))
    broken = profiling.profile_point(pipe, {**kw, "top_k": "bad"}, "cpu", tmp_path, "q")
    assert broken["profile_trace"] is None and broken["profile_error"]               # reported, not raised
    assert "scale_step" not in vars(pipe)


def _ev(name, ts, dur, tid=1):
    return {"ph": "X", "cat": "user_annotation", "name": name, "ts": ts, "dur": dur, "tid": tid}


def test_breakdown_arithmetic():
    trace = {"traceEvents": [
        _ev("scale 0", 0, 1000), _ev("blocks", 10, 600), _ev("sampling", 620, 300), _ev("head", 630, 100),
        _ev("scale 1", 2000, 500), _ev("blocks", 2000, 500),          # graphed-like: all in blocks
        _ev("decode", 3000, 4000), {"ph": "X", "cat": "kernel", "name": "scale 0", "ts": 0, "dur": 9}]}
    b = profiling.breakdown(trace, 3)
    assert b["profile_scale_ms"] == [1.0, 0.5, None]
    s0 = b["profile_scale_phase_ms"][0]
    assert s0 == {"scale": 0, "ms": 1.0, "blocks": 0.6, "head": 0.1, "sampling": pytest.approx(0.2),
                  "other": pytest.approx(0.1)}
    assert b["profile_phase_ms"]["blocks"] == pytest.approx(1.1) and b["profile_phase_ms"]["decode"] == 4.0


def test_cli_rejects_negative_energy_window(tmp_path):
    from varbench.cli.app import app

    r = CliRunner().invoke(app, ["sweep", "--model", "var-tiny", "--device", "cpu", "--energy-seconds", "-1",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--energy-seconds" in r.output


def test_report_links_each_profiled_point_and_shows_its_scales(tmp_path):
    import re

    from tests.test_report import write_results
    from varbench.reporting.report import build_report

    res = write_results(tmp_path / "res")
    rel = "profiles/p1/trace.json"
    (res / "profiles" / "p1").mkdir(parents=True)
    (res / rel).write_text('{"traceEvents": []}')
    row = {"kind": "sweep", "model": "var-tiny", "weights": "random", "depth": 2, "switch": 2, "batch": 8,
           "dtype": "fp32", "device": "cpu", "status": "ok", "latency_ms_p50": 9.0, "images_per_s": 800.0,
           "profile_trace": rel, "profile_memory_snapshot": None,
           "profile_memory_snapshot_reason": "a CUDA memory snapshot needs a CUDA device",
           "profile_scale_ms": [1.0, 2.0], "profile_phase_ms": {"blocks": 2.0, "head": 0.25, "sampling": 0.5,
                                                                 "other": 0.25, "decode": 4.0},
           "profile_scale_phase_ms": [{"scale": 0, "ms": 1.0, "blocks": 0.5, "head": 0.25, "sampling": 0.25,
                                       "other": 0.0},
                                      {"scale": 1, "ms": 2.0, "blocks": 1.5, "head": 0.0, "sampling": 0.25,
                                       "other": 0.25}]}
    with open(res / "sweep.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    page = build_report([res], tmp_path / "html" / "r.html").read_text()
    assert "Drill-down: profiled points" in page
    hrefs = re.findall(r'<a href="([^"]+)">trace.json</a>', page)
    assert hrefs == ["../res/profiles/p1/trace.json"]                     # relative to the report's folder
    assert ((tmp_path / "html" / hrefs[0]).resolve()).exists()
    assert "a CUDA memory snapshot needs a CUDA device" in page
    assert 'title="scale 1: 2.00 ms"' in page and "<td>3.00</td>" in page     # per-scale bars, total of scales
