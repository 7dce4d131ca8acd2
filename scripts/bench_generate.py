"""Generation speed/memory probe on one GPU (random weights): the cases of ANCHORS.md in one process.

Usage: PYTHONPATH=. python3 scripts/bench_generate.py [--model var-d30] [--out DIR] [--cases b1,b16,b64,...]
Prints one JSON line per case and a table last. Numbers for the README come from `varbench sweep`/`run`; this
script is the quick before/after probe for the speed work (notes in docs/speed_notes.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import spec as specs  # noqa: E402
from model.pipeline import VARPipeline  # noqa: E402
from model.schedule import DepthSchedule  # noqa: E402

CASES = {  # name: (batch, depth or None for full, cuda_graphs)
    "b1": (1, None, False), "b1-graphs": (1, None, True), "b16": (16, None, False),
    "b16-graphs": (16, None, True), "b64-graphs": (64, None, True), "b64-d2-graphs": (64, 2, True), "b64": (64, None, False), "b64-d16": (64, 16, False),
    "b64-d8": (64, 8, False), "b64-d2": (64, 2, False), "b128": (128, None, False), "b128-d2": (128, 2, False),
}


def time_ms(fn, warmup=2, repeats=5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="var-d30")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--compile", action="store_true", help="fuse element-wise kernels with torch.compile")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    spec = specs.get(args.model)
    if args.compile:
        from model import kernels
        kernels.enable_compiled()
    t0 = time.perf_counter()
    pipe = VARPipeline.from_spec(spec, device="cuda", dtype=torch.bfloat16)
    print(f"# init {time.perf_counter() - t0:.1f}s  {torch.cuda.get_device_name()}", flush=True)
    rows = []
    for name in args.cases.split(","):
        batch, depth, graphs = CASES[name]
        sched = DepthSchedule.variant(spec, depth, 6) if depth else DepthSchedule.full(spec)
        labels = torch.arange(batch) % spec.num_classes
        gen = lambda: pipe.generate(labels, seed=0, schedule=sched, decode=False, cuda_graphs=graphs)  # noqa
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            samples = time_ms(gen)
            peak = torch.cuda.max_memory_allocated()
            out = gen()
            dec32 = time_ms(lambda: pipe.decode(out.f_hat), 1, 3)
            pipe.set_decode_dtype(torch.bfloat16, channels_last=True)
            dec16cl = time_ms(lambda: pipe.decode(out.f_hat), 1, 3)
            pipe.set_decode_dtype(torch.bfloat16)
            dec16 = time_ms(lambda: pipe.decode(out.f_hat), 1, 3)
            pipe.set_decode_dtype(torch.float32)
            row = dict(case=name, batch=batch, depth=depth or spec.depth, graphs=graphs,
                       ms_p50=statistics.median(samples), ms_samples=samples,
                       decode_fp32_ms=statistics.median(dec32), decode_bf16_ms=statistics.median(dec16), decode_bf16_cl_ms=statistics.median(dec16cl),
                       peak_alloc_mib=peak / 2**20, weights_mib=base / 2**20, kv_peak_mib=out.kv_peak_bytes / 2**20,
                       img_per_s=batch * 1000 / (statistics.median(samples) + statistics.median(dec16)))
        except torch.cuda.OutOfMemoryError as e:
            row = dict(case=name, batch=batch, status="oom", error=str(e)[:200])
        rows.append(row)
        print(json.dumps(row), flush=True)
        pipe._graphed.clear()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / "bench_generate.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"{'case':12} {'ms':>8} {'dec16':>7} {'dec16cl':>7} {'dec32':>7} {'peakMiB':>9} {'kvMiB':>8} {'img/s':>7}")
    for r in rows:
        if "ms_p50" in r:
            print(f"{r['case']:12} {r['ms_p50']:8.1f} {r['decode_bf16_ms']:7.1f} {r['decode_bf16_cl_ms']:7.1f} {r['decode_fp32_ms']:7.1f} "
                  f"{r['peak_alloc_mib']:9.0f} {r['kv_peak_mib']:8.0f} {r['img_per_s']:7.1f}")
        else:
            print(f"{r['case']:12} OOM")


if __name__ == "__main__":
    main()
