"""The H100 measurements of issues 4, 5 and 9 through the library (no typer needed on the device): var-d30 random
weights, bf16. Each part writes rows under OUT/<part>/ (committed under results/h100/ with its manifest).

  subset       depths 30,2 x batch 16,64 on one GPU (to compare with grid run over two GPUs, issue 10)
  grid         eager sweep, depths 2,4,8,16,30 x batch 1,16,64,128, switch 6 (issue 4)
  graphs       CUDA-graph sweep, depths 30,16,8,4,2 x batch 1,16,64 (issue 9)
  fast         the fast path: CUDA graphs + pipe.compile(), depths 30,2 x batch 1,16,64 (issue 9)
  fast_targets the same at batch 64 and 1 only
  fast_eager   pipe.compile() without graphs, depths 30,2 x batch 64
  trace        trace of VARiant-d8 b64 with the 1 kHz NVML sampler, 10 overhead pairs (issue 4)
  maxbatch     eager d30 at large batches: the largest batch that fits (issue 9)
  maxbatch_x   the same with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  sensitivity  var-d30 seconds per sensitivity cell, fidelity metric, 16 samples (issue 5)

Usage: PYTHONPATH=. python3 scripts/h100_bench.py OUT PART [PART ...] [--devices 0,1] [--device cuda:0]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from varbench.measuring.sweep import SweepConfig, run_sweep
from varbench.measuring.trace import TraceConfig, run_trace

COMMON = dict(model="var-d30", dtype="bf16", repeats=3, min_seconds=0.5, warmup=1, timeout_s=240)


def _spec():
    from model import spec as specs
    return specs.get(COMMON["model"])


def _depths(*ds: int) -> list[int]:
    """The asked depths that the model has (all of them for var-d30; a CPU smoke test uses var-tiny)."""
    return sorted({min(d, _spec().depth) for d in ds}, reverse=True)


def grid(out: Path, device: str, devices: list[str] | None) -> None:
    run_sweep(SweepConfig(depths=_depths(30, 16, 8, 4, 2), batches=[1, 16, 64, 128], device=device, devices=devices,
                          **COMMON), out / "sweep", progress=False)


def subset(out: Path, device: str, devices: list[str] | None) -> None:
    """A corner of the grid on one GPU: its rows must match the grid's (issue 10's sweep --devices check)."""
    run_sweep(SweepConfig(depths=_depths(30, 2), batches=[16, 64], device=device, devices=devices, **COMMON),
              out / "sweep-1gpu", progress=False)


def graphs(out: Path, device: str, devices: list[str] | None) -> None:
    run_sweep(SweepConfig(depths=_depths(30, 16, 8, 4, 2), batches=[1, 16, 64], cuda_graphs=True, device=device,
                          devices=devices, **COMMON), out / "sweep-graphs", progress=False)


def graphs_d2(out: Path, device: str, devices: list[str] | None) -> None:
    """VARiant-d2 with graphs (the 4.5x target's numerator), into the same folder as ``graphs``."""
    run_sweep(SweepConfig(depths=_depths(2), batches=[1, 16, 64], cuda_graphs=True, device=device,
                          devices=devices, **COMMON), out / "sweep-graphs", progress=False)


def fast(out: Path, device: str, devices: list[str] | None) -> None:
    """Graphs + compiled fused kernels + compiled decoder: the numbers the issue-9 targets are judged on."""
    run_sweep(SweepConfig(depths=_depths(30, 2), batches=[64, 16, 1], cuda_graphs=True, compile=True, device=device,
                          devices=devices, **COMMON), out / "sweep-fast", progress=False)


def fast_targets(out: Path, device: str, devices: list[str] | None) -> None:
    """``fast`` at the two batches the targets name (64 and 1), when device time is short."""
    run_sweep(SweepConfig(depths=_depths(30, 2), batches=[64, 1], cuda_graphs=True, compile=True, device=device,
                          devices=devices, **COMMON), out / "sweep-fast", progress=False)


def fast_eager(out: Path, device: str, devices: list[str] | None) -> None:
    """Compiled fused kernels without graphs at batch 64 (the path whose peak memory has no graph pools)."""
    run_sweep(SweepConfig(depths=_depths(30, 2), batches=[64], compile=True, device=device, devices=devices,
                          **COMMON), out / "sweep-fast-eager", progress=False)


def trace(out: Path, device: str, devices: list[str] | None) -> None:
    for sampler in ("thread", "auto"):      # the old thread sampler first, then the default (a child process)
        s = run_trace(TraceConfig(model=COMMON["model"], depth=_depths(8)[0],
                                  switch=min(6, _spec().num_scales - 1), batch=64, device=device,
                                  overhead_repeats=10, sampler=sampler), out / "trace")
        _print_trace(s)


def _print_trace(s: dict) -> None:
    keep = ("latency_ms", "decode_ms", "sampler", "sampler_hz", "analytic_equals_cache",
            "analytic_over_allocated_delta", "analytic_over_nvml_process_delta", "sampler_overhead_pct",
            "sampler_overhead_pct_min", "latency_ms_p50_no_sampler", "latency_ms_p50_with_sampler")
    print("trace:", json.dumps({k: s.get(k) for k in keep}), flush=True)


def _largest_batch(out: Path, folder: str, batches: list[int], device: str, devices: list[str] | None) -> None:
    cfg = dict(COMMON, repeats=1, min_seconds=0.0, nvml_pass=False)
    run_sweep(SweepConfig(depths=_depths(30), batches=batches, device=device, devices=devices, **cfg), out / folder,
              progress=False)


def maxbatch(out: Path, device: str, devices: list[str] | None) -> None:
    _largest_batch(out, "maxbatch", [216, 224, 232, 240, 248], device, devices)


def maxbatch_x(out: Path, device: str, devices: list[str] | None) -> None:
    """The largest batch again with the allocator's expandable segments (less fragmentation at ~79 GB in use)."""
    import os
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"     # inherited by the sweep workers
    _largest_batch(out, "maxbatch-expandable", [232, 240, 224], device, devices)


def sensitivity(out: Path, device: str, devices: list[str] | None) -> None:
    from varbench.quality.sensitivity import SensitivityConfig, run_sensitivity

    t0 = time.perf_counter()
    stamps: list[tuple[str, float]] = []
    S, D = _spec().num_scales, _spec().depth
    rows = run_sensitivity(SensitivityConfig(model=COMMON["model"], depths=[d for d in _depths(2, 8, 16) if d < D],
                                             scales=",".join(str(min(s, S - 1)) for s in (0, 5, 9)), mode="single",
                                             samples=16, batch=16, metric="fidelity", allow_random=True,
                                             device=device),
                           out / "sensitivity",
                           progress=lambda ev, done, total, info: stamps.append((ev, time.perf_counter() - t0)))
    secs = sorted({r["cell_seconds"] for r in rows if r.get("cell_seconds")})
    ref = next((t for ev, t in stamps if ev == "cell"), None)
    print("sensitivity: total %.1f s, first cell done at %s s, cell seconds %s" %
          (time.perf_counter() - t0, ref and round(ref, 1), [round(x, 2) for x in secs]), flush=True)
    (out / "sensitivity" / "timing.json").write_text(json.dumps({"total_s": time.perf_counter() - t0,
                                                                 "events": stamps, "cell_seconds": secs}))


PARTS = {"fast": fast, "fast_targets": fast_targets, "fast_eager": fast_eager, "grid": grid, "subset": subset, "graphs": graphs, "graphs_d2": graphs_d2, "trace": trace,
         "maxbatch": maxbatch, "maxbatch_x": maxbatch_x, "sensitivity": sensitivity}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("parts", nargs="+", choices=sorted(PARTS))
    ap.add_argument("--devices", default=None, help="GPU ids for concurrent sweep workers, e.g. 0,1")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="var-d30", help="var-tiny for a CPU smoke test of this script")
    a = ap.parse_args()
    COMMON["model"] = a.model
    devs = a.devices.split(",") if a.devices else None
    for part in a.parts:
        t = time.perf_counter()
        PARTS[part](a.out, a.device, devs)
        print(f"[{part}] {time.perf_counter() - t:.0f} s", flush=True)
