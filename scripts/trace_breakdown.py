"""Kernel time of a graphed generation trace (a torch.profiler Chrome trace), per CUDA graph replay and category.

Kernels launched inside a graph carry the correlation id of their ``cudaGraphLaunch``; replay 0 is the
modulation graph, replay k the blocks and head of scale k-1, "eager" the sampling and VQ-VAE steps between them.
Usage: python scripts/trace_breakdown.py TRACE.json.gz [--top REPLAY,...]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json

CATS = (("attn", ("sdpa", "fmha", "flash", "_tiny_attention")), ("gemm", ("nvjet", "cutlass", "gemm", "gemv")),
        ("qk_norm+kv", ("_qkv_norm", "rms_norm")), ("ln/residual", ("layer_norm", "addcmul")),
        ("topk", ("topk", "radix", "sort", "scan")), ("copy", ("copy",)), ("triton", ("triton",)))


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CATS if any(k in low for k in keys)), "other")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--top", default="", help="replays whose top kernels to list, e.g. 1,eager")
    a = ap.parse_args()
    events = json.load(gzip.open(a.trace) if a.trace.endswith(".gz") else open(a.trace))["traceEvents"]
    launches = sorted((e for e in events if e.get("cat") == "cuda_runtime" and e["name"] == "cudaGraphLaunch"),
                      key=lambda e: e["ts"])
    replay = {e["args"]["correlation"]: str(i) for i, e in enumerate(launches)}
    ms: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    names: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy"):
            r = replay.get(e["args"].get("correlation"), "eager")
            c = category(e["name"]) if e["cat"] == "kernel" else e["cat"]
            ms[r][c] += e["dur"] / 1e3
            names[r][e["name"][:90]] += e["dur"] / 1e3
    cats = sorted({c for r in ms for c in ms[r]})
    print("replay " + " ".join(f"{c[:11]:>11}" for c in cats) + "    total")
    for r in sorted(ms, key=lambda x: (x == "eager", int(x) if x.isdigit() else 0)):
        print(f"{r:>6} " + " ".join(f"{ms[r][c]:11.2f}" for c in cats) + f" {sum(ms[r].values()):8.2f}")
    for r in filter(None, a.top.split(",")):
        for n, t in names[r].most_common(8):
            print(f"{r:>6} {t:8.2f}  {n}")


if __name__ == "__main__":
    main()
