"""Trace on CPU: analytic KV bytes == the cache's bytes at every scale boundary; NVML path via a fake pynvml."""
from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from tests import fake_pynvml
from varbench.measuring import memory
from varbench import results
from varbench.measuring.trace import TIMELINE_FILE, TraceConfig, read_trace, run_trace

TINY = dict(model="var-tiny", depth=2, switch=2, batch=2, dtype="fp32", device="cpu", overhead_repeats=0)


@pytest.mark.parametrize("keep_skipped", [False, True])
def test_trace_cpu_analytic_equals_cache(tmp_path, keep_skipped):
    summary = run_trace(TraceConfig(**TINY, keep_skipped=keep_skipped), tmp_path)
    scales, summaries = read_trace(tmp_path)
    assert [r["scale"] for r in scales] == [0, 1, 2, 3] and len(summaries) == 1
    for r in scales:
        assert r["kv_bytes_analytic"] == r["kv_bytes_cache"] > 0, r
        assert r["weights"] == "random" and r["model"] == "var-tiny"
        assert r["rss_bytes"] > 0 and r["allocated_bytes"] is None            # CPU: RSS, no allocator
        assert r["nvml_device_used_bytes"] is None and r["nvml_process_delta_bytes"] is None
    assert [r["blocks"] for r in scales] == [4, 4, 2, 2]
    assert all(a["elapsed_ms"] < b["elapsed_ms"] for a, b in zip(scales, scales[1:]))
    assert summary["analytic_equals_cache"] is True
    assert summary["nvml"].startswith("NVML unavailable")
    assert summary["nvml_peak_used_bytes"] is None and summary["sampler_samples"] == 0
    # var-tiny, isometric d2 = blocks {0, 3}: 2 rows (CFG) x 2 batch x 64 width x 8 bytes (fp32 K+V) per token-slot
    per_slot = 2 * 2 * 64 * 8
    slots_last = 2 * 30 + (2 * 5 if keep_skipped else 0)          # blocks 1,2 cached 5 tokens before the switch
    assert scales[-1]["kv_bytes_cache"] == slots_last * per_slot
    marks = [json.loads(ln) for ln in (tmp_path / TIMELINE_FILE).read_text().splitlines()]
    labels = [m["label"] for m in marks if m["kind"] == "trace_mark"]
    assert labels == ["start", "scale 0 end", "scale 1 end", "scale 2 end", "scale 3 end", "generate end",
                      "decode end"]
    assert results.read_manifest(tmp_path)["kind"] == "trace"


def test_trace_with_fake_nvml_records_timeline(tmp_path, monkeypatch):
    """The NVML path of a trace (sampler, deltas, overhead check) exercised on CPU through a fake pynvml."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml.make(base_used=0, step=1024))
    monkeypatch.setattr(memory, "_NO_NVML_CPU", memory.Nvml())      # let the CPU probe read the fake NVML
    summary = run_trace(TraceConfig(**{**TINY, "overhead_repeats": 1}), tmp_path)
    scales, _ = read_trace(tmp_path)
    assert summary["nvml"] == "NVML available"
    assert summary["sampler_samples"] > 5 and summary["sampler_hz"] > 0
    assert all(r["nvml_device_used_bytes"] is not None and r["nvml_process_delta_bytes"] > 0 for r in scales)
    dev = [r["nvml_device_used_bytes"] for r in scales]
    assert dev == sorted(dev)                                               # fake counter only grows
    lines = [json.loads(ln) for ln in (tmp_path / TIMELINE_FILE).read_text().splitlines()]
    samples = [ln for ln in lines if ln["kind"] == "trace_sample"]
    assert len(samples) == summary["sampler_samples"]
    ts = [s["t_ms"] for s in samples]
    assert ts == sorted(ts)
    marks = {ln["label"]: ln["t_ms"] for ln in lines if ln["kind"] == "trace_mark"}
    assert ts[0] <= marks["scale 0 end"] < marks["scale 3 end"] <= ts[-1] + 5
    assert summary["nvml_peak_used_bytes"] == max(s["device_used_bytes"] for s in samples)
    assert summary["sampler_overhead_pct"] is not None and summary["overhead_pairs"] == 1
    assert summary["analytic_over_nvml_process_delta"] is not None


@pytest.mark.parametrize("args, needle", [
    (["--depth", "0"], "--depth"),
    (["--batch", "-1"], "--batch"),
    (["--model", "var-nope"], "unknown model"),
    (["--interval-ms", "0"], "--interval-ms"),
])
def test_cli_bad_input_exit_2(args, needle, tmp_path):
    from varbench.cli import app

    res = CliRunner().invoke(app, ["trace", "--model", "var-tiny", "--switch", "2", "--device", "cpu",
                                   "--out", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and needle in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, res.output


def test_cli_unwritable_out(tmp_path):
    from varbench.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["trace", "--model", "var-tiny", "--switch", "2", "--device", "cpu",
                                   "--out", str(blocker / "d")])
    assert res.exit_code == 2 and "--out" in res.output and "Traceback" not in res.output
