"""Memory trace of one generation (DESIGN "Measurement rules": memory): at every scale boundary the analytic KV
bytes, the cache's real bytes, the torch allocator (GPU) or RSS (CPU), NVML device / process used and elapsed time;
a background NVML sampler (default 1 kHz) gives the timeline between boundaries, with the boundaries marked.

Baselines: "idle" = after weights load, one warm-up generation and ``empty_cache``; the allocator delta at a scale
boundary is taken over the generation's fixed state (conditioning, modulations, f_hat: allocated at scale 0's
start minus the cache), so it compares with the analytic KV bytes alone. The NVML process delta at the last scale
is read after ``empty_cache`` (NVML sees reserved segments, not live tensors). Files in ``out_dir``: ``trace.jsonl`` (one
"trace_scale" row per boundary plus one "trace" summary row per run, all tagged with ``run_id``),
``trace_timeline.jsonl`` ("trace_sample" and "trace_mark" lines) and the manifest.
The sampler's own latency overhead is checked by alternating plain and sampled generations (target <= 2%).
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from varbench import results
from varbench.schema import TIMELINE_FILE, TRACE_FILE
from varbench.target import ModelTarget, portable_config, resolve_weights, torch_dtype

log = logging.getLogger(__name__)


@dataclass
class TraceConfig:
    model: str = "var-d30"
    ckpt: str | None = None
    vae: str | None = None
    depth: int = 30
    switch: int = 6
    select: str = "isometric"
    batch: int = 1
    dtype: str = "bf16"
    device: str = "cpu"
    interval_ms: float = 1.0
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    seed: int = 0
    keep_skipped: bool = False
    allow_random: bool = True
    overhead_repeats: int = 10       # plain/sampled generation pairs for the overhead check (0 = skip)
    sampler: str = "auto"            # auto | process | thread (samplers.make_sampler)
    method: str | None = None        # an efficiency-method configuration (model/methods.py); None = variant
    compile: bool | None = None      # None: on for CUDA (the lean fast path), off on a CPU
    cuda_graphs: bool = False        # off by default: a graph replay allocates nothing, so the allocator and NVML
                                     # timelines go flat at the capture's pool (the cache bytes stay per scale)
    profile: bool = False            # one profiled generation: out/profiles/<run_id>/ (measuring.profiling)

    def target(self) -> ModelTarget:
        return ModelTarget(self.model, self.ckpt, self.vae, self.allow_random, self.dtype, self.device, self.seed)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def _delta(a: int | None, b: int | None) -> int | None:
    return a - b if a is not None and b is not None else None


def _sync(dev: Any) -> None:
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _overhead(pipe: Any, gen_kw: dict[str, Any], dev: Any, sampler_factory: Any, pairs: int) -> dict[str, Any]:
    """Latency of generate(decode=False) without and with the sampler, interleaved so drift hits both alike."""
    from varbench.measuring.timing import Timer, percentiles

    plain, sampled = [], []
    for _ in range(pairs):
        t = Timer(dev)
        t.start()
        pipe.generate(**gen_kw)
        plain.append(t.stop())
        with sampler_factory():
            t.start()
            pipe.generate(**gen_kw)
            sampled.append(t.stop())
    p0, p1 = percentiles(plain)["p50"], percentiles(sampled)["p50"]
    m0, m1 = min(plain), min(sampled)
    return {"latency_ms_p50_no_sampler": p0, "latency_ms_p50_with_sampler": p1, "overhead_pairs": pairs,
            "sampler_overhead_pct": 100.0 * (p1 - p0) / p0 if p0 else None,
            "sampler_overhead_pct_min": 100.0 * (m1 - m0) / m0 if m0 else None}


def run_trace(cfg: TraceConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Trace one generation under VARiant(depth, switch); write rows + timeline; return the summary row."""
    import torch

    from varbench.measuring import analytic
    from varbench.measuring.memory import MemoryProbe, Nvml
    from varbench.measuring.samplers import make_sampler
    from varbench.target import load_pipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.interval_ms <= 0:
        raise ValueError(f"interval_ms must be > 0, got {cfg.interval_ms}")
    target = cfg.target()
    spec = target.spec
    dtype, dev = torch_dtype(target.dtype), torch.device(target.device)
    cuda = dev.type == "cuda"
    from model import methods
    try:
        conf = (methods.parse(cfg.method, spec) if cfg.method
                else methods.variant(spec, cfg.depth, cfg.switch, cfg.select))
    except methods.MethodError as e:
        from varbench.errors import UsageError
        raise UsageError(f"--method: {e}") from None
    schedule = conf.schedule()
    depth, switch, select = conf.descriptor()
    weights = resolve_weights(target)
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)
    pipe = load_pipeline(target, weights)
    compiled = cuda if cfg.compile is None else bool(cfg.compile)
    pipe.set_plan(compiled=compiled, cuda_graphs=bool(cfg.cuda_graphs) and conf.refiner() is None,
                  **conf.plan_changes())
    nvml = Nvml(index=dev.index) if cuda else None
    probe = MemoryProbe(dev, nvml=nvml)
    labels = [i % spec.num_classes for i in range(cfg.batch)]
    gen_kw = dict(labels_B=labels, cfg=cfg.cfg, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                  schedule=schedule, keep_skipped=cfg.keep_skipped, decode=False)
    kv_analytic = analytic.kv_bytes_per_scale(spec, schedule, cfg.batch, dtype, cfg.keep_skipped, plan=pipe.plan)

    pipe.decode(pipe.generate(**gen_kw).f_hat)                # warm-up: lazy init, kernels, allocator pools
    _sync(dev)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    base = probe.snapshot()
    run_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + f"-d{depth}-s{switch}-b{cfg.batch}"
    ident = {"model": cfg.model, "weights": weights.label, "depth": depth, "switch": switch,
             "select": select, "batch": cfg.batch, "dtype": cfg.dtype, "device": str(dev), "run_id": run_id}

    scale_rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    last_si = spec.num_scales - 1
    sampler = make_sampler(probe.nvml, interval_ms=cfg.interval_ms, mode=cfg.sampler)
    with sampler:
        t0 = sampler.mark("start")

        def on_scale_begin(si: int, cache: Any) -> None:
            if si == 0:   # the generation's fixed state (conditioning, modulations, f_hat) = allocated - cache
                state["gen_base"] = _delta(probe.snapshot()["allocated_bytes"], int(cache.nbytes()))

        def on_scale_end(si: int, cache: Any) -> None:
            _sync(dev)
            t = sampler.mark(f"scale {si} end")
            snap = probe.snapshot()
            row = {
                "kind": "trace_scale", **ident, "scale": si, "pn": spec.patch_nums[si],
                "tokens": spec.tokens[si], "blocks": schedule.depth_at(si), "elapsed_ms": (t - t0) / 1e6,
                "kv_bytes_analytic": kv_analytic[si], "kv_bytes_cache": int(cache.nbytes()), **snap,
                "allocated_delta_bytes": _delta(snap["allocated_bytes"], state.get("gen_base")),
                "allocated_delta_from_idle_bytes": _delta(snap["allocated_bytes"], base["allocated_bytes"]),
                "rss_delta_bytes": _delta(snap["rss_bytes"], base["rss_bytes"]),
                "nvml_device_delta_bytes": _delta(snap["nvml_device_used_bytes"], base["nvml_device_used_bytes"]),
                "nvml_process_delta_bytes": _delta(snap["nvml_process_used_bytes"],
                                                   base["nvml_process_used_bytes"]),
            }
            if si == last_si:
                # NVML sees reserved segments, which still hold the freed activations of the largest scale:
                # give those back so the process figure shows what is live (the cache + the fixed state).
                if cuda:
                    torch.cuda.empty_cache()
                trimmed = probe.snapshot()
                row["nvml_process_delta_trimmed_bytes"] = _delta(trimmed["nvml_process_used_bytes"],
                                                                 base["nvml_process_used_bytes"])
                row["reserved_delta_trimmed_bytes"] = _delta(trimmed["reserved_bytes"], base["reserved_bytes"])
            scale_rows.append(row)

        gen_out = pipe.generate(**gen_kw, on_scale_begin=on_scale_begin, on_scale_end=on_scale_end)
        _sync(dev)
        t_gen = sampler.mark("generate end")
        pipe.decode(gen_out.f_hat)
        _sync(dev)
        t_dec = sampler.mark("decode end")
    end = probe.snapshot()
    del gen_out

    overhead: dict[str, Any] = {"latency_ms_p50_no_sampler": None, "latency_ms_p50_with_sampler": None,
                                "overhead_pairs": 0, "sampler_overhead_pct": None, "sampler_overhead_pct_min": None}
    if sampler.available and cfg.overhead_repeats > 0:
        overhead = _overhead(pipe, gen_kw, dev,
                             lambda: make_sampler(probe.nvml, interval_ms=cfg.interval_ms, mode=cfg.sampler),
                             cfg.overhead_repeats)

    last = scale_rows[-1]
    summary: dict[str, Any] = {
        "kind": "trace", **ident, "layers": list(conf.layers()),
        "method": conf.canonical(), "method_params": conf.params(),
        "schedule": schedule.describe(), "plan": pipe.plan.as_dict(), "execution": pipe.plan.execution,
        "weights_notice": weights.notice, "nvml": probe.nvml_reason,
        "scales": len(scale_rows), "latency_ms": (t_gen - t0) / 1e6, "decode_ms": (t_dec - t_gen) / 1e6,
        "baseline": base, "sampler_interval_ms": cfg.interval_ms, "sampler_samples": sampler.n,
        "sampler_hz": round(sampler.achieved_hz(), 1),
        "kv_bytes_analytic_peak": max(kv_analytic), "kv_bytes_cache_peak": max(r["kv_bytes_cache"] for r in scale_rows),
        "kv_bytes_analytic_last": last["kv_bytes_analytic"], "kv_bytes_cache_last": last["kv_bytes_cache"],
        "analytic_equals_cache": all(r["kv_bytes_analytic"] == r["kv_bytes_cache"] for r in scale_rows),
        "generation_fixed_bytes": _delta(state.get("gen_base"), base["allocated_bytes"]),
        "allocated_delta_last_bytes": last["allocated_delta_bytes"],
        "nvml_process_delta_last_bytes": last.get("nvml_process_delta_trimmed_bytes"),
        "nvml_process_delta_last_untrimmed_bytes": last["nvml_process_delta_bytes"],
        "analytic_over_allocated_delta": _ratio(last["kv_bytes_analytic"], last["allocated_delta_bytes"]),
        "analytic_over_nvml_process_delta": _ratio(last["kv_bytes_analytic"],
                                                   last.get("nvml_process_delta_trimmed_bytes")),
        "sampler": sampler.kind,
        "peak_allocated_bytes": end["peak_allocated_bytes"], "rss_peak_bytes": end["rss_peak_bytes"],
        "nvml_peak_used_bytes": sampler.peak_device_used(),
        "nvml_peak_process_used_bytes": sampler.peak_process_used(),
        **overhead,
        "files": [TRACE_FILE, TIMELINE_FILE],
    }
    if cfg.profile:                # after every measurement: the drill-down files, their paths in the summary
        from varbench.measuring import profiling
        summary.update(profiling.profile_point(pipe, gen_kw, dev, out, run_id))
        summary["files"] += [summary[k] for k in ("profile_trace", "profile_memory_snapshot") if summary[k]]
    _write(out, cfg, weights, scale_rows, summary, sampler, t0)
    if cuda:                       # give the cached blocks back, so a later process sees a clean device
        del pipe
        gc.collect()
        torch.cuda.empty_cache()
    return summary


def _write(out: Path, cfg: TraceConfig, weights: Any, scale_rows: list[dict[str, Any]], summary: dict[str, Any],
           sampler: Any, t0: int) -> None:
    """Rows appended to trace.jsonl; the timeline in one write (thousands of lines, one fsync)."""
    for row in scale_rows:
        results.append_row(out / TRACE_FILE, row)
    results.append_row(out / TRACE_FILE, summary)
    ident = {k: summary[k] for k in ("model", "weights", "run_id")}
    lines = [json.dumps({"kind": "trace_mark", **ident, "t_ms": (t - t0) / 1e6, "label": label})
             for t, label in sampler.marks]
    lines += [json.dumps({"kind": "trace_sample", **ident, "t_ms": (t - t0) / 1e6, "device_used_bytes": d,
                          "process_used_bytes": p}) for t, d, p in sampler.samples()]
    with open(out / TIMELINE_FILE, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
    old = results.read_manifest(out)
    name = "trace_manifest.json" if old and old.get("kind") not in (None, "trace") else results.MANIFEST_FILE
    results.write_manifest(out, {"kind": "trace", "config": portable_config(asdict(cfg)), "weights": weights.label,
                                 "weights_notice": weights.notice, "dtype": cfg.dtype, "run_id": summary["run_id"],
                                 "inference_plan": summary["plan"],
                                 "files": [TRACE_FILE, TIMELINE_FILE]}, name=name)
    log.info("trace %s: %d scales, %d NVML samples at %.0f Hz", summary["run_id"], len(scale_rows), sampler.n,
             sampler.achieved_hz())


def read_trace(out_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(scale rows, summary rows) from ``out_dir/trace.jsonl``."""
    rows = results.read_rows(Path(out_dir) / TRACE_FILE)
    return [r for r in rows if r.get("kind") == "trace_scale"], [r for r in rows if r.get("kind") == "trace"]
