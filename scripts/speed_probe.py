"""Issue 9 speed probe: the generation fast-path variants timed side by side in ONE process on ONE GPU, plus the
two ceilings (a large bf16 matmul, a device copy), a kernel-time breakdown and per-scale times.

Variants (each eager and with per-scale CUDA graphs, full depth and VARiant-d2 switch 6):
  prev       the previous session's path: bias+GELU as two kernels, float32 head matmul, F.interpolate bicubic
  epi        the current eager default: fc1 through cuBLASLt's bias+GELU epilogue (``K.linear_gelu``), the head as
             one bf16 matmul over [h_hi | h_lo] with float32 output (``K.head_logits``), bicubic as two matmuls
  epi+fuse   epi after ``pipe.compile()``: element-wise pieces fused by torch.compile (automatic dynamic shapes)
  +flash     the same with SDPA restricted to the FlashAttention-2 backend (default: cuDNN on the H100)
  +tokkv     the same with the token-major KV cache (``model.kv_cache.KV_LAYOUT = "token"``): q/k norms write unit k
             and v straight into the cache slots
  +tri       the q/k norms and cache writes through the hand-written Triton kernel instead of Inductor's
  +eff       attention over <= 64 keys (scales 1-4) through the memory-efficient SDPA kernel instead of cuDNN
  +tiny      attention over <= 128 keys (scales 1-5) through the Triton kernel (one program per row and head)
  (session 4 measured a float32-matmul path for <= 91 keys: 1.5-10x slower than cuDNN; removed)
Checks per variant: teacher-forcing logits against the first variant (relative error, top-1 agreement) on
identical weights.

Usage: PYTHONPATH=. python3 scripts/speed_probe.py OUT [--model var-d30] [--batch 64] [--parts ...]
(``--model var-tiny --device cpu --parts timing`` is the CPU smoke test.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import kernels, kv_cache, vqvae  # noqa: E402
from model import spec as specs  # noqa: E402
from model.pipeline import VARPipeline  # noqa: E402
from model.schedule import DepthSchedule  # noqa: E402
from varbench.measuring.timing import measure  # noqa: E402

ROWS: list[dict] = []
GRAPHS_ONLY = False


def emit(out: Path, row: dict) -> None:
    ROWS.append(row)
    with (out / "probe.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def unfused_linear_gelu(x, w, b):
    return kernels.gelu_tanh(F.linear(x, w, b))


def fp32_head(h, w, b):
    return F.linear(h.float(), w.float(), b.float())


def interpolate_bicubic(x, size):
    return F.interpolate(x, size=(size, size), mode="bicubic")


BICUBIC_UP = vqvae.bicubic_up


def sdpa_backend(variant: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if "flash" in variant:
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return contextlib.nullcontext()


def set_variant(pipe: VARPipeline, name: str) -> None:
    new = "epi" in name
    pipe.compiled = "fuse" in name and pipe.device.type == "cuda"
    kernels.K.linear_gelu = kernels.linear_gelu if new else unfused_linear_gelu
    kernels.K.head_logits = kernels.head_logits if new else fp32_head
    vqvae.bicubic_up = BICUBIC_UP if new else interpolate_bicubic
    kv_cache.KV_LAYOUT = "token" if "tokkv" in name else "head"
    kv_cache.SMALL_ATTN_MAX_KEYS = 64 if "eff" in name else 0     # the default is the +tokkv+tri+eff variant
    kernels.USE_TRITON_QKV = "tri" in name
    kv_cache.TINY_ATTN_MAX_KEYS = 128 if "tiny" in name else 0


def ceilings(out: Path, dev: torch.device) -> None:
    a = torch.randn(32768, 1920, device=dev, dtype=torch.bfloat16)
    w = torch.randn(7680, 1920, device=dev, dtype=torch.bfloat16)
    ms = statistics.median(measure(lambda: F.linear(a, w), warmup=3, min_repeats=20, device=dev))
    emit(out, {"part": "ceiling", "what": "bf16 matmul 32768x1920x7680", "ms": ms,
               "tflops": 2 * 32768 * 1920 * 7680 / ms / 1e9})
    h = torch.randn(16384, 1920, device=dev)
    wh = (torch.randn(4096, 1920, device=dev) * 0.02).bfloat16()
    bh = torch.zeros(4096, device=dev, dtype=torch.bfloat16)
    ref = F.linear(h.double(), wh.double())
    for name, fn in (("split bf16 head", kernels.head_logits), ("fp32 head", fp32_head)):
        got = fn(h, wh, bh)
        ms = statistics.median(measure(lambda: fn(h, wh, bh), warmup=3, min_repeats=20, device=dev))
        emit(out, {"part": "ceiling", "what": name + " 16384x1920x4096", "ms": ms,
                   "rel_err_vs_fp64": float((got.double() - ref).norm() / ref.norm()), "split_ok": kernels._SPLIT_HEAD_OK[0]})
    x = torch.randn(1 << 28, device=dev)
    y = torch.empty_like(x)
    ms = statistics.median(measure(lambda: y.copy_(x), warmup=3, min_repeats=20, device=dev))
    emit(out, {"part": "ceiling", "what": "fp32 copy 1 GiB", "ms": ms, "gb_per_s": 2 * x.numel() * 4 / ms / 1e6})


def timing(out: Path, pipe: VARPipeline, batch: int, variants: list[str], dev: torch.device) -> None:
    spec = pipe.spec
    labels = torch.arange(batch) % spec.num_classes
    scheds = schedules(spec)
    g = torch.Generator().manual_seed(1)
    idx = [torch.randint(0, spec.vae.vocab_size, (4, pn * pn), generator=g) for pn in spec.patch_nums]
    ref = ref_gen = None
    for v in variants:
        set_variant(pipe, v)
        t0 = time.perf_counter()
        tf = pipe.teacher_forcing(torch.arange(4), idx).float()
        gen_idx = torch.cat(pipe.generate(torch.arange(4), seed=3, decode=False, cuda_graphs=dev.type == "cuda",
                                          schedule=scheds["d2"]).indices, 1)
        if ref is None:
            ref, ref_gen = tf, gen_idx
        rel = float((tf - ref).norm() / ref.norm())
        agree = float((tf.argmax(-1) == ref.argmax(-1)).float().mean())
        emit(out, {"part": "check", "variant": v, "tf_rel_err_vs_base": rel, "tf_top1_agree_vs_base": agree,
                   "generated_d2_token_agree_vs_base": float((gen_idx == ref_gen).float().mean()),
                   "first_call_s": time.perf_counter() - t0})
        for sname, sched in scheds.items():
            for graphs in (False, True):
                if (graphs and dev.type != "cuda") or (not graphs and GRAPHS_ONLY and dev.type == "cuda"):
                    continue
                pipe._graphed.clear()
                t0 = time.perf_counter()

                def gen():
                    with sdpa_backend(v):
                        pipe.generate(labels, schedule=sched, decode=False, cuda_graphs=graphs)

                samples = measure(gen, warmup=2, min_repeats=5, device=dev)
                emit(out, {"part": "timing", "variant": v, "schedule": sname, "graphs": graphs, "batch": batch,
                           "ms_p50": statistics.median(samples), "ms_min": min(samples), "n": len(samples),
                           "wall_s": time.perf_counter() - t0})
    pipe._graphed.clear()


def schedules(spec) -> dict[str, DepthSchedule]:
    """The two schedules every part compares: full depth and VARiant-d2 switch 6."""
    return {"d%d" % spec.depth: DepthSchedule.full(spec),
            "d2": DepthSchedule.variant(spec, min(2, spec.depth), min(6, spec.num_scales - 1))}


def warm_graphed(pipe: VARPipeline, batch: int, variant: str):
    """Per schedule, fresh graphs captured and warmed twice: yields (name, schedule, labels)."""
    set_variant(pipe, variant)
    labels = torch.arange(batch) % pipe.spec.num_classes
    for sname, sched in schedules(pipe.spec).items():
        pipe._graphed.clear()
        for _ in range(2):
            pipe.generate(labels, schedule=sched, decode=False, cuda_graphs=True)
        yield sname, sched, labels
    pipe._graphed.clear()


def per_scale(out: Path, pipe: VARPipeline, batch: int, variant: str, dev: torch.device) -> None:
    """GPU time of each scale (blocks + head + sampling + next input), graphs on, for d30 and d2."""
    S = pipe.spec.num_scales
    for sname, sched, labels in warm_graphed(pipe, batch, variant):
        evs = [torch.cuda.Event(enable_timing=True) for _ in range(S + 1)]
        evs[0].record()
        pipe.generate(labels, schedule=sched, decode=False, cuda_graphs=True,
                      on_scale_end=lambda si, c: evs[si + 1].record())
        torch.cuda.synchronize(dev)
        ms = [evs[i].elapsed_time(evs[i + 1]) for i in range(S)]
        emit(out, {"part": "per_scale", "variant": variant, "schedule": sname, "batch": batch,
                   "scale_ms": [round(m, 2) for m in ms], "total_ms": sum(ms)})


CATS = (("gemm", ("gemm", "sm90", "cutlass", "nvjet", "gemv", "matmul")), ("attention", ("flash", "fmha", "attention")),
        ("triton", ("triton",)), ("norm", ("norm",)), ("sampling", ("topk", "sort", "radix", "scan", "cumsum", "gather")),
        ("copy", ("copy", "cat")), ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce")))


def profile(out: Path, pipe: VARPipeline, batch: int, variant: str, dev: torch.device, decode: bool) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    set_variant(pipe, variant)
    labels = torch.arange(batch) % pipe.spec.num_classes
    for _ in range(2):
        pipe.generate(labels, decode=decode)
    torch.cuda.synchronize(dev)
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        pipe.generate(labels, decode=decode)
        torch.cuda.synchronize(dev)
    kernels_ms: dict[str, float] = {}
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels_ms[e.name] = kernels_ms.get(e.name, 0.0) + e.device_time / 1e3
            counts[e.name] = counts.get(e.name, 0) + 1
    cats: dict[str, float] = {}
    for name, ms in kernels_ms.items():
        low = name.lower()
        cat = next((c for c, keys in CATS if any(k in low for k in keys)), "other")
        cats[cat] = cats.get(cat, 0.0) + ms
    top = sorted(kernels_ms.items(), key=lambda kv: -kv[1])[:25]
    emit(out, {"part": "profile", "variant": variant, "batch": batch, "decode": decode,
               "gpu_ms_total": sum(kernels_ms.values()), "by_category_ms": {k: round(v, 1) for k, v in cats.items()},
               "top": [[n[:110], round(ms, 2), counts[n]] for n, ms in top]})


def diag(out: Path, pipe: VARPipeline, batch: int, variant: str, dev: torch.device) -> None:
    """Where the graphed generation's wall time goes: host syncs (sync-debug mode), and a CUDA+CPU trace of one
    generation per schedule whose kernel intervals give GPU-busy time and the idle gaps between kernels."""
    import gzip
    import shutil
    import warnings
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    for sname, sched, labels in warm_graphed(pipe, batch, variant):
        torch.cuda.synchronize(dev)
        torch.cuda.set_sync_debug_mode(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.generate(labels, schedule=sched, decode=False, cuda_graphs=True)
        torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message)[:160] for w in caught if "synchroniz" in str(w.message).lower()]
        torch.cuda.synchronize(dev)
        with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            pipe.generate(labels, schedule=sched, decode=False, cuda_graphs=True)
            torch.cuda.synchronize(dev)
        trace = out / f"trace_{sname}_{variant}.json"
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as fi, gzip.open(str(trace) + ".gz", "wb") as fo:
            shutil.copyfileobj(fi, fo)
        trace.unlink()
        iv = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                    if e.device_type == torch.autograd.DeviceType.CUDA)
        busy, gaps, big, end = 0.0, 0.0, [], iv[0][0]
        for a, b in iv:
            if a > end:
                gaps += a - end
                if a - end > 50:
                    big.append(round((a - end) / 1e3, 2))
            busy += max(0.0, b - max(a, end))
            end = max(end, b)
        emit(out, {"part": "diag", "variant": variant, "schedule": sname, "batch": batch, "host_syncs": len(syncs),
                   "sync_examples": syncs[:3], "kernels": len(iv), "span_ms": (iv[-1][1] - iv[0][0]) / 1e3,
                   "busy_ms": busy / 1e3, "idle_ms": gaps / 1e3, "idle_gaps_over_50us_ms": big[:40]})


def gemm_small(out: Path, dev: torch.device) -> None:
    """bf16 block matmuls (with bias) at the row counts of each scale of a batch of 64 (x2 for CFG), graphed."""
    C = 1920
    for name, (n, k) in (("qkv", (3 * C, C)), ("proj", (C, C)), ("fc1", (4 * C, C)), ("fc2", (C, 4 * C))):
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        b = torch.zeros(n, device=dev, dtype=torch.bfloat16)
        for pn in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16):
            m = 128 * pn * pn
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            F.linear(x, w, b)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(10):
                    F.linear(x, w, b)
            ms = statistics.median(measure(g.replay, warmup=2, min_repeats=10, device=dev)) / 10
            emit(out, {"part": "gemm", "what": name, "m": m, "n": n, "k": k, "ms": round(ms, 4),
                       "tflops": round(2 * m * n * k / ms / 1e9, 1),
                       "weight_gb_per_s": round(n * k * 2 / ms / 1e6, 1)})


def attn_small(out: Path, dev: torch.device) -> None:
    """Attention of each scale's queries over the cached keys (d30: H=30, c=64), graphed: cuDNN, FlashAttention,
    memory-efficient SDPA and the float32-matmul path, to choose where the small path pays."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    H, c = 30, 64
    toks = [pn * pn for pn in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
    for rows, si in [(r, si) for r in (128, 32, 2) for si in range(1, 10)]:
        L, n = toks[si], sum(toks[:si + 1])
        q = torch.randn(rows, L, H, c, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        kb = torch.randn(rows, 680, H, c, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        vb = torch.randn_like(kb)
        k, v = kb[:, :, :n], vb[:, :, :n]
        ref = F.scaled_dot_product_attention(q, k, v, scale=1.0).float()
        for name in ("cudnn", "flash", "efficient", "f32matmul"):
            if name == "f32matmul":
                def fn():
                    s_ = torch.matmul(q.float(), k.float().transpose(-1, -2))
                    return torch.matmul(s_.softmax(-1), v.float()).to(q.dtype)
                ctx = contextlib.nullcontext()
            else:
                be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                      "efficient": SDPBackend.EFFICIENT_ATTENTION}[name]
                ctx = sdpa_kernel([be])

                def fn():
                    return F.scaled_dot_product_attention(q, k, v, scale=1.0)
            try:
                with ctx:
                    got = fn()
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        for _ in range(10):
                            fn()
                ms = statistics.median(measure(g.replay, warmup=2, min_repeats=10, device=dev)) / 10
                err = float((got.float() - ref).abs().max())
            except RuntimeError as e:
                emit(out, {"part": "attn", "what": name, "scale": si, "error": str(e)[:120]})
                continue
            emit(out, {"part": "attn", "what": name, "scale": si, "rows": rows, "q": L, "keys": n,
                       "us": round(ms * 1e3, 1), "max_abs_diff_vs_default": err})


def decode_part(out: Path, pipe: VARPipeline, batch: int, dev: torch.device) -> None:
    spec = pipe.spec
    f = torch.randn(batch, spec.vae.z_channels, spec.patch_nums[-1], spec.patch_nums[-1], device=dev)
    for chunk in (16, 64):
        ms = statistics.median(measure(lambda: pipe.decode(f, chunk=chunk), warmup=2, min_repeats=5, device=dev))
        emit(out, {"part": "decode", "variant": "eager", "chunk": chunk, "batch": batch, "ms_p50": ms})
    pipe.compile()
    for variant in ("compiled", "compiled+channels_last"):
        if "channels_last" in variant:
            pipe.set_decode_dtype(torch.bfloat16, channels_last=True)
        t0 = time.perf_counter()
        for chunk in (16, 64):
            ms = statistics.median(measure(lambda: pipe.decode(f, chunk=chunk), warmup=2, min_repeats=5, device=dev))
            emit(out, {"part": "decode", "variant": variant, "chunk": chunk, "batch": batch, "ms_p50": ms,
                       "wall_s": time.perf_counter() - t0})
    pipe.set_decode_dtype(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="var-d30")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", default="prev,epi,epi+fuse")
    ap.add_argument("--parts", default="ceilings,timing,per_scale,profile,decode")
    ap.add_argument("--graphs-only", action="store_true", help="time only the CUDA-graph runs on a GPU")
    a = ap.parse_args()
    global GRAPHS_ONLY
    GRAPHS_ONLY = a.graphs_only
    a.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    parts = a.parts.split(",")
    variants = a.variants.split(",")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        emit(a.out, {"part": "device", "name": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                     "weights": "random"})
    if "ceilings" in parts and dev.type == "cuda":
        ceilings(a.out, dev)
    pipe = VARPipeline.from_spec(a.model, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    for part in parts:
        t0 = time.perf_counter()
        if part == "timing":
            timing(a.out, pipe, a.batch, variants, dev)
        elif part == "per_scale" and dev.type == "cuda":
            for v in (variants[0], variants[-1]):
                per_scale(a.out, pipe, a.batch, v, dev)
        elif part == "profile" and dev.type == "cuda":
            for v in (variants[0], variants[-1]):
                profile(a.out, pipe, a.batch, v, dev, decode=False)
        elif part == "diag" and dev.type == "cuda":
            diag(a.out, pipe, a.batch, variants[-1], dev)
        elif part == "attn" and dev.type == "cuda":
            attn_small(a.out, dev)
        elif part == "gemm" and dev.type == "cuda":
            gemm_small(a.out, dev)
        elif part == "decode" and dev.type == "cuda":
            decode_part(a.out, pipe, a.batch, dev)
        print(f"[{part}] {time.perf_counter() - t0:.0f} s", flush=True)
    print("\nvariant    schedule graphs  ms_p50")
    for r in ROWS:
        if r["part"] == "timing":
            print(f"{r['variant']:<10} {r['schedule']:<8} {str(r['graphs']):<6} {r['ms_p50']:8.1f}")
        elif r["part"] in ("check", "decode", "ceiling"):
            print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
