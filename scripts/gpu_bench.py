"""The GPU benchmark entry point: every measurement of a device session as named parts of one command.

Each part writes raw rows under OUT/<part>/ (commit them under results/<device>/ with their manifest) and the
command prints a short table last. Parts:

  tests      the GPU-marked tests (pytest -m gpu) -> OUT/tests/pytest.txt
  fast       the sweep's default (on CUDA: graphs + compile): --depths x --batches (or --methods) -> OUT/fast/
  lean       compile without CUDA graphs                                 -> OUT/lean/
  eager      the plain path (--eager)                                    -> OUT/eager/
  compare    the fast path of --baseline-src (another checkout) and of this tree, point by point in alternating
             order so that drift hits both alike                         -> OUT/compare/{baseline,current}/
  probe      inference-plan variants timed in one process (plan fields switched one at a time from the
             device's fast plan, each with CUDA graphs)                  -> OUT/probe/probe.jsonl
  sens       the fast-sensitivity target: a `single` KL matrix (scales x 2/4/8/16) at --sens-samples per
             cell, timed whole                                            -> OUT/sens/
  decode     the VQ-VAE decode of --batches under decoder plan variants (chunk, cuDNN autotuning, memory
             format), with each variant's allocator peak             -> OUT/decode/decode.jsonl

Usage: PYTHONPATH=. python3 scripts/gpu_bench.py OUT PART [PART ...] [--model var-d30] [--depths 30,2]
       [--batches 1,64] [--baseline-src DIR] [--repeats 3]
On a CPU (``--model var-tiny --device cpu``) every part but ``tests`` runs as a smoke test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from varbench import results  # noqa: E402

# fast: the sweep's default on CUDA (graphs + compile, nothing set); lean: compile alone; eager: neither
PRESETS = {"fast": {}, "lean": dict(cuda_graphs=False, compile=True), "eager": dict(cuda_graphs=False, compile=False)}
# plan variants of the probe: one field changed from the fast plan each
PROBE_VARIANTS = {"fast": {}, "no-triton-qkv": {"triton_qkv": False}, "no-tiny-attn": {"tiny_attn_max_keys": 0},
                  "no-small-attn": {"small_attn_max_keys": 0}, "head-kv-layout": {"kv_layout": "head"},
                  "no-split-head": {"split_head": False}, "no-fused-gelu": {"fused_gelu": False},
                  "not-compiled": {"compiled": False},
                  # memory: each lever of the lean plan undone alone, then all of them (the plan before them)
                  "copying-stream": {"residual_in_place": False}, "ffn-chunk-2^28": {"ffn_chunk_elems": 1 << 28},
                  "logits-chunk-2^25": {"sample_chunk_logits": 1 << 25},
                  "memory-before": {"residual_in_place": False, "ffn_chunk_elems": 1 << 28,
                                    "sample_chunk_logits": 1 << 25}}


def sweep_part(out: Path, a: argparse.Namespace, preset: str) -> list[dict]:
    from varbench.measuring.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(model=a.model, depths=a.depths, batches=a.batches, switches=[a.switch], dtype=a.dtype,
                      device=a.device, repeats=a.repeats, min_seconds=a.min_seconds, timeout_s=a.timeout,
                      methods=a.methods, plan_overrides=a.plan_overrides, **PRESETS[preset])
    return run_sweep(cfg, out / preset, progress=False)


def _cli_sweep(src: Path, out: Path, a: argparse.Namespace, depth: int, batch: int) -> None:
    """One fast-path point through the `varbench sweep` CLI of the checkout at ``src`` (its own code)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "varbench", "sweep", "--model", a.model, "--depths", str(depth), "--batch",
           str(batch), "--switch", str(a.switch), "--dtype", a.dtype, "--device", a.device, "--repeats",
           str(a.repeats), "--min-seconds", str(a.min_seconds), "--cuda-graphs", "--compile", "--out", str(out)]
    subprocess.run(cmd, cwd=src, env=env, check=False, stdout=subprocess.DEVNULL)


def compare_part(out: Path, a: argparse.Namespace) -> list[dict]:
    if a.baseline_src is None:
        raise SystemExit("compare needs --baseline-src DIR (a checkout of the commit to compare with)")
    sides = {"baseline": Path(a.baseline_src).resolve(), "current": ROOT}
    for i, (depth, batch) in enumerate((d, b) for d in a.depths for b in a.batches):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        for side in order:
            _cli_sweep(sides[side], out / "compare" / side, a, depth, batch)
    rows = []
    for side in sides:
        for r in results.read_rows(out / "compare" / side / "sweep.jsonl"):
            rows.append({**r, "side": side})
    return rows


def _chosen(variants: dict[str, dict], a: argparse.Namespace) -> dict[str, dict]:
    """The variants named by --variants (all when not given; names another part has are skipped)."""
    if not a.variants:
        return variants
    unknown = [n for n in a.variants if n not in PROBE_VARIANTS and n not in DECODE_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}: probe has {', '.join(PROBE_VARIANTS)}; "
                         f"decode has {', '.join(DECODE_VARIANTS)}")
    return {n: v for n, v in variants.items() if n in a.variants or n in ("fast", "default")}


def probe_part(out: Path, a: argparse.Namespace) -> list[dict]:
    """Each plan variant on the same pipeline and weights, interleaved over ``repeats`` rounds."""
    import torch

    from model import VARPipeline
    from model.schedule import DepthSchedule
    from varbench.measuring.timing import measure

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    pipe = VARPipeline.from_spec(a.model, device=a.device, dtype=dtype).compile()
    fast = pipe.plan.replace(cuda_graphs=pipe.device.type == "cuda")
    spec = pipe.spec
    rows, path = [], out / "probe" / "probe.jsonl"
    for depth in a.depths:
        sched = DepthSchedule.variant(spec, min(depth, spec.depth), a.switch)
        for batch in a.batches:
            labels = [i % spec.num_classes for i in range(batch)]
            samples: dict[str, list[float]] = {n: [] for n in _chosen(PROBE_VARIANTS, a)}
            peaks: dict[str, int] = {}
            cuda = pipe.device.type == "cuda"
            for _ in range(a.repeats):
                for name, change in _chosen(PROBE_VARIANTS, a).items():
                    plan = fast.replace(**change)
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    samples[name] += measure(lambda: pipe.generate(labels, schedule=sched, plan=plan, decode=False),
                                             warmup=1, min_repeats=1, device=pipe.device)
                    if cuda:                 # the variant's capture and generations (one capture at a time)
                        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
            for name, ms in samples.items():
                row = {"kind": "probe", "model": spec.name, "weights": "random", "depth": depth, "batch": batch,
                       "switch": a.switch, "variant": name, "plan": fast.replace(**PROBE_VARIANTS[name]).as_dict(),
                       "latency_ms_samples": ms, "latency_ms_p50": sorted(ms)[len(ms) // 2],
                       "peak_allocated_bytes": peaks.get(name)}
                results.append_row(path, row)
                rows.append(row)
    results.write_manifest(path.parent, {"kind": "probe", "variants": PROBE_VARIANTS})
    return rows


# decoder variants: plan decode fields changed from the device's compiled plan
DECODE_VARIANTS = {"default": {}, "chunk8": {"decode_chunk": 8}, "chunk16": {"decode_chunk": 16}, "chunk32": {"decode_chunk": 32},
                   "chunk64": {"decode_chunk": 64}, "no-cudnn-bench": {"decode_cudnn_benchmark": False},
                   "cudnn-limit-all": {"decode_cudnn_benchmark_limit": 0},
                   "not-channels-last": {"decode_channels_last": False}}


def decode_part(out: Path, a: argparse.Namespace) -> list[dict]:
    """The VQ-VAE decode of each --batches size under each decoder variant, interleaved over ``repeats`` rounds,
    with the decode's own allocator peak. ``--draws N``: N fresh processes, each one draw of cuDNN's autotuning
    (which decides the decode time: docs/performance.md), rows numbered by ``draw``."""
    if a.draws > 1:
        return _decode_draws(out, a)
    import torch

    from model import VARPipeline
    from varbench.measuring.timing import measure

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    pipe = VARPipeline.from_spec(a.model, device=a.device, dtype=dtype).compile()
    base = pipe.plan
    spec, rows, path = pipe.spec, [], out / "decode" / "decode.jsonl"
    for batch in a.batches:
        f_hat = pipe.generate([i % spec.num_classes for i in range(batch)], decode=False).f_hat
        samples: dict[str, list[float]] = {n: [] for n in _chosen(DECODE_VARIANTS, a)}
        peaks: dict[str, int] = {}
        for _ in range(a.repeats):
            for name, change in _chosen(DECODE_VARIANTS, a).items():
                pipe.set_plan(base.replace(**change))
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                samples[name] += measure(lambda: pipe.decode(f_hat), warmup=1, min_repeats=3, device=pipe.device)
                if a.device.startswith("cuda"):
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated() - before)
        for name, ms in samples.items():
            row = {"kind": "decode", "model": spec.name, "batch": batch, "variant": name,
                   "plan": base.replace(**DECODE_VARIANTS[name]).as_dict(), "decode_ms_samples": ms,
                   "decode_ms_p50": sorted(ms)[len(ms) // 2], "decode_peak_extra_bytes": peaks.get(name)}
            results.append_row(path, row)
            rows.append(row)
    pipe.set_plan(base)
    results.write_manifest(path.parent, {"kind": "decode", "variants": DECODE_VARIANTS})
    return rows


def _decode_draws(out: Path, a: argparse.Namespace) -> list[dict]:
    """``decode`` in ``a.draws`` fresh processes, one after the other (the GPU is never shared)."""
    rows, path = [], out / "decode" / "decode.jsonl"
    argv = [sys.executable, str(Path(__file__).resolve()), "", "decode", "--draws", "1", "--model", a.model,
            "--batches", ",".join(map(str, a.batches)), "--dtype", a.dtype, "--device", a.device,
            "--repeats", str(a.repeats)] + (["--variants", ",".join(a.variants)] if a.variants else [])
    for k in range(a.draws):
        sub = out / "decode" / f"draw{k}"
        argv[2] = str(sub)
        subprocess.run(argv, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
        for r in results.read_rows(sub / "decode" / "decode.jsonl"):
            row = {**r, "draw": k}
            results.append_row(path, row)
            rows.append(row)
    return rows


def sens_part(out: Path, a: argparse.Namespace) -> list[dict]:
    """The fast sensitivity target: a `single` matrix (every scale x 2/4/8/16) of --model at --sens-samples
    samples per cell, KL alone (teacher forcing, compiled), timed whole (reference included)."""
    from varbench.quality.sensitivity import SensitivityConfig, run_sensitivity

    from model import spec as spec_mod
    depth = spec_mod.get(a.model).depth
    cfg = SensitivityConfig(model=a.model, mode="single", depths=[d for d in (2, 4, 8, 16) if d < depth] or [2],
                            samples=a.sens_samples, batch=64,
                            metric="kl", allow_random=True, device=a.device, dtype=a.dtype)
    t0 = time.perf_counter()
    rows = run_sensitivity(cfg, out / "sens")
    secs = time.perf_counter() - t0
    summary = {"kind": "sens", "model": a.model, "samples": a.sens_samples, "cells": len(rows), "seconds": secs}
    results.append_row(out / "sens" / "timing.jsonl", summary)
    return [summary]


def tests_part(out: Path, a: argparse.Namespace) -> list[dict]:
    (out / "tests").mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/"],
                         cwd=ROOT, capture_output=True, text=True, timeout=a.timeout)
    (out / "tests" / "pytest.txt").write_text(res.stdout + res.stderr)
    return [{"kind": "tests", "returncode": res.returncode, "summary": (res.stdout.strip().splitlines() or [""])[-1]}]


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r.get("kind") == "tests":
            lines.append(f"tests: rc {r['returncode']} · {r['summary']}")
        elif r.get("kind") == "sens":
            lines.append(f"sensitivity {r['model']} single matrix, {r['samples']} samples/cell, KL: "
                         f"{r['cells']} rows in {r['seconds']:.0f} s")
        elif r.get("kind") == "decode":
            mib = (r.get("decode_peak_extra_bytes") or 0) / 2**20
            draw = f" draw {r['draw']}" if "draw" in r else ""
            lines.append(f"decode b{r['batch']:<4} {r['variant']:<20} {r['decode_ms_p50']:9.2f} ms  +{mib:7.0f} MiB"
                         f"{draw}")
        elif r.get("kind") == "probe":
            mib = (r.get("peak_allocated_bytes") or 0) / 2**20
            lines.append(f"probe d{r['depth']} b{r['batch']:<4} {r['variant']:<18} {r['latency_ms_p50']:9.2f} ms  "
                         f"peak {mib:9.0f} MiB")
        else:
            mib = (r.get("peak_allocated_bytes") or 0) / 2**20
            lines.append(f"{r.get('side', r.get('execution', '')):<9} {r.get('method') or '':<44.44} "
                         f"d{r['depth']:<3} b{r['batch']:<4} "
                         f"{r.get('status'):<5} gen {r.get('latency_ms_p50') or float('nan'):9.2f} ms  "
                         f"decode {r.get('decode_ms_p50') or float('nan'):7.2f} ms  peak {mib:9.0f} MiB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("parts", nargs="+", choices=["tests", "compare", "probe", "decode", "sens", *PRESETS])
    ap.add_argument("--model", default="var-d30")
    ap.add_argument("--depths", type=lambda s: [int(x) for x in s.split(",")], default=[30, 2])
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    ap.add_argument("--switch", type=int, default=6)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=540.0)
    ap.add_argument("--baseline-src", type=Path, default=None)
    ap.add_argument("--sens-samples", type=int, default=256, help="samples per cell of the sens part")
    ap.add_argument("--plan-overrides", type=json.loads, default=None,
                    help='sweep parts: InferencePlan fields as JSON, e.g. \'{"decode_chunk": 8}\'')
    ap.add_argument("--draws", type=int, default=1,
                    help="decode: run it in this many fresh processes (each one draw of cuDNN's autotuning)")
    ap.add_argument("--variants", type=lambda s: s.split(","), default=None,
                    help="probe/decode: only these variants (comma-separated; the reference one always runs)")
    ap.add_argument("--methods", type=lambda s: s.split(";"), default=None,
                    help="efficiency-method configurations separated by ';' (varbench methods); replaces --depths")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for part in a.parts:
        t0 = time.time()
        got = {"tests": tests_part, "compare": compare_part, "probe": probe_part, "decode": decode_part,
               "sens": sens_part}.get(part)
        rows += got(a.out, a) if got else sweep_part(a.out, a, part)
        print(f"[{part}] {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    (a.out / "summary.json").write_text(json.dumps(rows, default=str, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
