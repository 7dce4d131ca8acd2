"""The largest batch that fits: predicted from the analytic memory model, then found by probing in isolated workers.

Every probe is one sweep point (``varbench.measuring.sweep.run_point``: a fresh ``sweep_worker`` process, so an
OOM or a crash stays in that process and becomes "does not fit"), with ``memory_limit_bytes`` set:

- CUDA: the worker caps its caching allocator with ``torch.cuda.set_per_process_memory_fraction(limit / total)``,
  so an allocation past the limit raises OutOfMemoryError (the CUDA context, ~0.7 GiB, is outside the cap).
  Without ``--memory-limit`` the limit is what NVML reports free on the device, less a context reserve, and
  no cap is set (the real device is the limit).
- CPU: there is no allocator cap to set, so the worker measures the growth of its peak RSS (ru_maxrss, kept by
  the kernel: no transient is missed) from just before the model is built to the end of the point (weights,
  generation, decode) and reports "oom" when the growth exceeds the limit. The probe runs to the end either
  way, so on the CPU a probe whose analytic estimate exceeds the machine's available memory is not run at all
  (counted as "does not fit"). Without ``--memory-limit`` the limit is the available memory (budget.py).

The search (``search``) keeps a bracket (largest batch seen fitting, smallest seen failing) and picks each next
probe by interpolation on the measured peaks (a secant over two measured probes, else the analytic bytes per
image from one), with a bisection step whenever interpolation did not halve the bracket; it stops when the
bracket is ``granularity`` wide. The first probe is the prediction itself, so a right prediction is confirmed in
two probes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from varbench.errors import EnvironmentUnavailable, RegressionFailed, UsageError
from varbench.workflows.budget import DTYPE_BYTES, GiB, HEADROOM, Estimate, available_bytes

# What a worker cannot allocate of the device's free memory (no --memory-limit): its CUDA context and library
# handles, 0.68 GiB in every OOM message of results/h200/maxbatch (H200, torch 2.11, CUDA 13), and the allocator's
# reserved-but-unallocated slack at the OOM (0.11-0.15 GiB there, expandable segments)
CONTEXT_RESERVE = 7 * 2 ** 27        # 0.875 GiB
SAMPLER_TOP_K = 900                  # VARPipeline.generate's default top-k, what a sweep point samples with


@dataclass
class MaxBatchConfig:
    """One search: the configuration (a method, or the variant of depth/switch), the memory limit and bounds."""

    model: str = "var-d30"
    ckpt: str | None = None
    vae: str | None = None
    method: str | None = None           # efficiency-method configuration (model/methods.py); None: the variant
    depth: int | None = None            # variant depth (None: the full network)
    switch: int | None = None
    select: str = "isometric"
    dtype: str = "bf16"
    device: str = "cpu"                 # resolved: cpu | cuda | cuda:N
    memory_limit_gb: float | None = None
    max_batch: int = 4096               # the search never probes above this
    granularity: int = 1                # stop when the bracket is this narrow
    cuda_graphs: bool = False
    compile: bool = False
    keep_skipped: bool = False
    allow_random: bool = False
    seed: int = 0
    threads: int | None = None
    timeout_s: float | None = None      # per probe


@dataclass
class Probe:
    batch: int
    fits: bool
    status: str                         # ok | oom | over-limit | guard
    peak_bytes: int | None = None       # measured: allocator peak (CUDA) or peak RSS growth (CPU)
    predicted_bytes: int | None = None
    seconds: float | None = None
    detail: str = ""


@dataclass
class Prediction:
    batch: int                          # largest batch whose estimate fits the limit (0: none)
    limit_bytes: int
    fixed_bytes: int                    # the estimate at batch 0 (weights, bounded chunks)
    bytes_per_image: float              # its slope near the predicted batch
    parts: dict[str, int] = field(default_factory=dict)     # the estimate at the predicted batch


# ----------------------------------------------------------------------------- the analytic model

def _configuration(cfg: MaxBatchConfig, spec: Any) -> Any:
    from model import methods

    from varbench.target import check_switch

    if cfg.method:
        try:
            return methods.parse(cfg.method, spec)
        except methods.MethodError as e:
            raise UsageError(f"--method: {e}") from None
    depth = spec.depth if cfg.depth is None else int(cfg.depth)
    if not 1 <= depth <= spec.depth:
        raise UsageError(f"--depth: must be in 1..{spec.depth} for {spec.name}, got {depth}")
    return methods.variant(spec, depth, check_switch(spec, cfg.switch), cfg.select)


# the decode's allocations beyond its activations and images on the H200 (cuDNN's convolution workspace): the
# decode of 64 images rose 428 / 748 / 1,388 MiB above the pre-decode level at chunks 4 / 8 / 16
# (results/h200/lean-memory/decode.jsonl), 54 MiB more than 4 activation copies and the images
DECODE_WORKSPACE, DECODE_WORKSPACE_TOP = 54 * 2 ** 20, 160 * 256 ** 2    # at var-d30's widest decoder activation


def estimate(spec: Any, conf: Any, batch: int, dtype: str, device: str, cuda_graphs: bool = False,
             keep_skipped: bool = False, from_file: bool = False, plan_fields: Mapping[str, Any] | None = None,
             encoder_on_device: bool | None = None) -> Estimate:
    """Peak memory of one sweep point (generate + decode) at ``batch``: the largest of the stages that do not
    coexist, from ``measuring.analytic``'s per-scale sizes. Returns the parts of the stage that peaks (named in
    ``what``).

    Why a maximum over stages: a schedule that frees KV holds its KV peak at one scale and its widest working set
    at another (VARiant-d2 @ 6: 30 blocks x 91 tokens at scale 5, 2 blocks x 680 at scale 9), and the cache is
    released before decode; summing the KV peak, the last scale's working set and the decode chunk (the estimator
    until commit 844a499) over-predicted d2 on the H200 by 40% (results/h200/maxbatch/). Each scale s contributes:

    - blocks: the KV held at s (``analytic.kv_bytes_per_scale``; code: ``code_kv_bytes_per_scale``) + the
      float32 residual stream + the widest point of one eager block on e = rows*tokens*width elements. With
      ``plan.residual_in_place`` (the default) the stream is the scale's input, updated where it lies: the
      residual's AdaLN (h, LayerNorm and its modulated float32 copy: 8 + dt bytes an element), the MLP (its
      input and output, 2*dt, plus one row chunk of ``plan.ffn_chunk_elems`` hidden elements; h is dead by
      then). With the copying stream the scale's input (held by the loop) and the running block input live
      beside the new stream: residual AdaLN 12 + dt, second residual 8 + 3*dt, MLP 4 + 3*dt (+ the chunk). The
      attention: 4*dt on the fused q/k-norm path in place (the qkv rows and q: the AdaLN output dies in the
      projection, the rows once k and v are cached), 6*dt fused with the copying stream, 7*dt unfused. The fp8
      cache (``plan.kv_fp8``) runs the unfused path: its write makes two float32 copies of the scale's k (and of
      v), and ``KVCache.prefix`` dequantises K and V over all the block's keys (``analytic.kv_keys_per_scale``):
      three compute-dtype copies at once (the cast of V next to the dequantised K and V), then two under SDPA;
      that transient was the fp8 row's 5 GB gap on the H200.
    - sampling: the KV at s, the scale's float32 hidden state and one head chunk of ``plan.sample_chunk_logits``
      (float32 logits of both CFG rows and the guided ones, then the larger of the Gumbel noise with its two
      temporaries and the noise with top-k's values, indices and top-p's softmax / cumulative sums; a
      vocabulary smaller than top-k is sorted whole, which is where a toy model's peak is).
    - next input: the KV at s and the next scale's embedded input (float32, both CFG rows).
    - decode (after ``stepper.finish`` released the cache; with CUDA graphs the graphs' pool still holds the KV
      cache and the static input): one decode chunk's widest decoder activations in the decode dtype (4 copies on
      CUDA, measured on the H200; 3 on the CPU), cuDNN's workspace, and the float32 images of the chunk and of the
      batch's output.

    Resident throughout: weights (on the CPU built in float32 and cast, as ``budget.inference_estimate``), the
    VQ-VAE in float32 (on CUDA without its encoder unless ``encoder_on_device``: ``VQVAE.place``), the AdaLN
    modulations of every used block (computed once per generation: 2*batch x 6C)
    and the small state (f_hat, indices). Left out: the cache's reallocation at a segment start (at most one
    block's old buffer next to the new ones). CUDA graphs are modelled as the eager path (their pool frees what
    eager frees) plus the buffers they keep through decode: within 0.7% of the graphed H200 peaks at batch 64
    (the compiled pieces' fused AdaLN has no LayerNorm temporaries, so the blocks stage is an upper bound there),
    2.2% under at batch 1. The estimate is within 0.05% of every
    measured peak of the H200 rows (tests/test_maxbatch_h200.py, which pass the plan fields and the encoder
    placement those rows ran with) and within 2% of the CPU allocator's peak on small models
    (tests/test_maxbatch.py). ``plan_fields``: plan fields over the configuration's (what an older code ran)."""
    import torch

    from model import spec as spec_mod
    from model.plan import InferencePlan
    from model.schedule import DepthSchedule
    from model.var import ffn_chunk_rows
    from varbench.measuring import analytic

    dt = DTYPE_BYTES[dtype]
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    cuda = device.startswith("cuda")
    plan = InferencePlan.plain().replace(**{**conf.plan_changes(), **(plan_fields or {})}, cuda_graphs=cuda_graphs)
    refiner = spec_mod.get(conf.refiner()) if conf.refiner() else None
    p = analytic.params(spec) + (analytic.params(refiner) if refiner else 0)
    weights = dt * p if cuda else (4 * p * (2 if from_file else 1) + (dt * p if dt != 4 else 0))
    enc_here = (not cuda) if encoder_on_device is None else encoder_on_device
    vae = 4 * (analytic.vae_params(spec.vae, spec.num_scales)
               - (0 if enc_here else analytic.vae_encoder_params(spec.vae)))
    S, B, rows0 = spec.num_scales, int(batch), 2 * int(batch)
    if refiner is None:
        sch = conf.schedule()
        kv = analytic.kv_bytes_per_scale(spec, sch, B, tdt, keep_skipped, plan=plan)
        keys = analytic.kv_keys_per_scale(spec, sch, plan)
        nblocks = [len(layer) for layer in sch.layers]
        runs, refined = [spec] * S, [False] * S
        used = [(spec, len(sch.used_blocks()))]
    else:
        N = plan.refine_from
        dsch, rsch = DepthSchedule.prefix(spec, N), DepthSchedule.full(refiner)
        kv = analytic.code_kv_bytes_per_scale(spec, refiner, B, tdt, keep_skipped, plan=plan)
        keys = analytic.kv_keys_per_scale(spec, dsch, plan)[:N] + analytic.kv_keys_per_scale(refiner, rsch, plan)[N:]
        nblocks = [spec.depth if si < N else refiner.depth for si in range(S)]
        runs = [spec if si < N else refiner for si in range(S)]
        refined = [si >= N for si in range(S)]
        used = [(spec, len(dsch.used_blocks())), (refiner, refiner.depth)]
    mods = sum(rows0 * m.width * dt * (6 * (n + (1 if m.shared_aln else 0)) + 1) for m, n in used)
    pn = spec.patch_nums[-1]
    fhat = B * spec.vae.z_channels * pn * pn * 4
    state = fhat + B * spec.L * 8
    resident = {"weights": weights, "VQ-VAE": vae, "modulations": mods + state}

    def guided(si: int) -> bool:
        return plan.cfg_until is None or si < plan.cfg_until

    stages: list[tuple[str, dict[str, int]]] = []
    for si in range(S):
        m, t = runs[si], spec.tokens[si]
        C, V = m.width, m.vae.vocab_size
        rows = rows0 if guided(si) else B
        e = rows * t * C
        if nblocks[si]:
            # the refiner's scales: the loop's input (the drafter's embedding) is held next to the refiner's own
            inplace = plan.residual_in_place
            held = (4 * e * (1 if inplace or nblocks[si] == 1 else 2)
                    + (4 * rows * t * spec.width if refined[si] else 0))
            fused = plan.kv_layout == "token" and not plan.kv_fp8 and m.attn_l2_norm
            # fused + in place: the qkv rows and q (the AdaLN output died in the projection); else up to 6-7 copies
            attn, dequant = (4 if fused and inplace else 6 if fused else 7) * dt * e, 0
            if plan.kv_fp8:
                X = rows * keys[si] * C * dt
                dequant = max(8 * e, 3 * X, dt * e + 2 * X)
                attn = 6 * dt * e
            R, Hm = rows * t, m.mlp_hidden
            n_h = 1 if cuda else 2                       # cuBLASLt's bias+GELU epilogue on CUDA: one hidden tensor
            copy = 0 if inplace else 4 + dt               # the copying stream's x' and the attention's h
            if R * Hm <= plan.ffn_chunk_elems:
                mlp_base, mlp_chunk = (copy + dt) * e, max(n_h * R * Hm * dt, R * Hm * dt + dt * e)
            else:
                r = ffn_chunk_rows(plan.ffn_chunk_elems, Hm)
                mlp_base = (copy + 2 * dt) * e
                mlp_chunk = n_h * r * Hm * dt                # fc2 writes its rows into the output in place
            inner = {"first AdaLN": 8 * e, "attention": attn + dequant,
                     "residual AdaLN": (8 + dt + (0 if inplace else 4)) * e,
                     "MLP": mlp_base + mlp_chunk, "second residual": (2 * dt if inplace else 8 + 3 * dt) * e}
            where = max(inner, key=inner.__getitem__)
            parts = {"KV cache": kv[si], "activations": held + inner[where]}
            if where == "attention" and dequant:
                parts.update(activations=held + attn, **{"fp8 dequant": dequant})
            elif where == "MLP":
                parts.update(activations=held + mlp_base, **{"MLP chunk": mlp_chunk})
            stages.append((f"scale {si} blocks ({where})", parts))
        n_img = min(B, max(1, plan.sample_chunk_logits // (t * V)))
        kf = min(1.0, SAMPLER_TOP_K / V)               # top-k's share of the vocabulary (1: the full sort)
        logits = int(n_img * t * V * (4 * (3 if guided(si) else 1) + max(12, 4 + 24 * kf)))
        stages.append((f"scale {si} sampling", {"KV cache": kv[si], "activations": 4 * e, "logits chunk": logits}))
        if si + 1 < S:
            t1 = spec.tokens[si + 1]
            nxt = 4 * B * t1 * spec.width * (3 if guided(si + 1) else 2) + 3 * fhat
            stages.append((f"scale {si} next input", {"KV cache": kv[si], "activations": nxt}))
    top = spec.vae.ch * spec.vae.ch_mult[0] * spec.image_size ** 2
    ddt = dt if cuda else 4                              # the decoder runs in the 16-bit compute dtype on CUDA
    chunk, img = min(B, plan.decode_chunk), 4 * 3 * spec.image_size ** 2
    # the widest decoder activations of a chunk (4 copies on CUDA, measured: 80 MiB an image at var-d30 in bf16;
    # 3 on the CPU), cuDNN's workspace, the chunk's float32 images and the batch's output they are written into
    workspace = DECODE_WORKSPACE * top // DECODE_WORKSPACE_TOP          # taken to grow with the decoder's size
    decode = ((4 * ddt * chunk * top + workspace) if cuda else 3 * ddt * chunk * top) + img * (B + chunk)
    kept = {"KV cache": kv[-1], "activations": 4 * rows0 * max(spec.tokens) * spec.width} if cuda_graphs else {}
    stages.append(("decode", {**kept, "decode": decode}))
    name, parts = max(stages, key=lambda st: sum(st[1].values()))
    return Estimate(f"{spec.name} {conf.canonical()} at batch {batch} (peak: {name})", device,
                    {**resident, **parts})


def predict(est: Callable[[int], Estimate], limit_bytes: int, cap: int) -> Prediction:
    """The largest batch in 0..cap whose estimate is within ``limit_bytes`` (estimates grow with the batch)."""
    lo, hi = 0, cap + 1
    if est(1).total > limit_bytes:
        hi = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if est(mid).total <= limit_bytes else (lo, mid)
    b = max(lo, 1)
    slope = (est(b + 1).total - est(b).total) if b < cap else (est(b).total - est(b - 1).total if b > 1 else 0)
    return Prediction(lo, limit_bytes, est(0).total, float(slope), dict(est(max(lo, 1)).parts))


# ----------------------------------------------------------------------------- the search

def search(probe: Callable[[int], Probe], first: int, cap: int, limit_bytes: int | None = None,
           bytes_per_image: float | None = None, granularity: int = 1) -> list[Probe]:
    """Probes until the largest fitting batch in 1..cap is known within ``granularity``; returns them in order.

    Invariant: ``lo`` fits (0 trivially), ``hi`` does not (cap + 1 assumed). The next batch interpolates the
    measured peaks to ``limit_bytes`` (a secant over the two measured probes nearest the limit, else
    ``bytes_per_image`` from the nearest one). The bracket's midpoint replaces the interpolation when it falls
    outside the bracket, after two interpolated probes in a row whose outcome contradicted it, and after four in
    a row that did not halve a bracket with a measured upper end, so a wrong model costs O(log cap) probes."""
    if cap < 1 or granularity < 1:
        raise UsageError(f"maxbatch: --max-batch and --granularity must be >= 1 (got {cap}, {granularity})")
    lo, hi = 0, cap + 1
    probes: list[Probe] = []
    measured: dict[int, int] = {}
    guess, expect, misses, streak = min(max(1, int(first)), cap), None, 0, 0
    while hi - lo > granularity:
        b = min(max(guess, lo + 1), hi - 1)
        width = hi - lo
        r = probe(b)
        probes.append(r)
        lo, hi = (b, hi) if r.fits else (lo, b)
        if r.peak_bytes is not None:
            measured[b] = int(r.peak_bytes)
        # an interpolated probe whose outcome contradicted the interpolation, twice running, or four that did
        # not halve a bracket with a real upper end (cap + 1 is none): the model is off, bisect once
        misses = misses + 1 if expect is not None and r.fits != expect else 0
        streak = streak + 1 if expect is not None and hi <= cap and hi - lo > width / 2 else 0
        nxt, expect = None, None
        if misses < 2 and streak < 4:
            nxt = _interpolate(measured, limit_bytes, bytes_per_image)
            expect = True                                       # the interpolated largest fitting batch
        if nxt is not None and not lo < nxt < hi:
            # outside the bracket: its neighbour when that end is measured (or is 0 or the cap), else none
            if nxt <= lo and (lo in measured or lo == 0):
                nxt, expect = lo + 1, False
            elif nxt >= hi and (hi in measured or hi > cap):
                nxt, expect = hi - 1, True
            else:
                nxt = None
        if nxt is None:
            guess, expect, misses, streak = (lo + hi) // 2, None, 0, 0
        else:
            guess = nxt
    return probes


def _interpolate(measured: dict[int, int], limit: int | None, slope: float | None) -> int | None:
    if limit is None or not measured:
        return None
    near = sorted(measured, key=lambda b: abs(measured[b] - limit))[:2]
    if len(near) == 2 and near[0] != near[1] and measured[near[0]] != measured[near[1]]:
        s = (measured[near[0]] - measured[near[1]]) / (near[0] - near[1])
    else:
        s = slope
    if not s or s <= 0 or not math.isfinite(s):
        return None
    b0 = near[0]
    return int(b0 + math.floor((limit - measured[b0]) / s))


def largest(probes: list[Probe]) -> int:
    return max((p.batch for p in probes if p.fits), default=0)


# ----------------------------------------------------------------------------- running it

def _limit(cfg: MaxBatchConfig) -> tuple[int, str, bool]:
    """(limit bytes, where it came from, whether the worker must enforce it)."""
    if cfg.memory_limit_gb is not None:
        if not (math.isfinite(cfg.memory_limit_gb) and cfg.memory_limit_gb > 0):
            raise UsageError(f"--memory-limit: must be a positive number of GiB, got {cfg.memory_limit_gb}")
        return int(cfg.memory_limit_gb * GiB), f"--memory-limit {cfg.memory_limit_gb:g} GiB", True
    if cfg.device.startswith("cuda"):
        import os

        from varbench.measuring.memory import Nvml

        # NVML's index of the GPU, without torch: a CUDA context in this parent would take the probes' memory
        n = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        vis = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        nv = Nvml(nvml_index=int(vis[n]) if n < len(vis) and vis[n].isdigit() else n)
        total, used = nv.device_total_bytes(), nv.device_used_bytes()
        nv.close()
        if total is None or used is None:        # no torch.cuda here: the parent would hold a context
            raise EnvironmentUnavailable(f"maxbatch: cannot read the GPU's free memory ({nv.reason}); pass "
                                         "--memory-limit GB")
        return (total - used - CONTEXT_RESERVE,
                f"NVML free memory less a {CONTEXT_RESERVE / GiB:g} GiB context reserve", False)
    avail = available_bytes("cpu")
    if avail is None:
        raise EnvironmentUnavailable("maxbatch: cannot read the available memory; pass --memory-limit GB")
    return int(HEADROOM * avail), f"{HEADROOM:.0%} of the available memory", True


ProgressFn = Callable[[str, dict[str, Any]], None]


def run_maxbatch(cfg: MaxBatchConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Predict, then search; returns the result (a ``maxbatch`` row without ``kind``): predicted vs measured
    batch, the estimate and the measured peak at the measured batch, every probe."""
    import time

    from varbench.measuring import sweep
    from varbench.target import resolve_spec, resolve_weights

    if cfg.max_batch < 1 or cfg.granularity < 1:
        raise UsageError(f"--max-batch and --granularity must be >= 1 (got {cfg.max_batch}, {cfg.granularity})")
    spec = resolve_spec(cfg.model)
    conf = _configuration(cfg, spec)
    depth, switch, select = conf.descriptor()
    limit, limit_source, enforce = _limit(cfg)
    cuda = cfg.device.startswith("cuda")
    est = lambda b: estimate(spec, conf, b, cfg.dtype, cfg.device, cfg.cuda_graphs, cfg.keep_skipped,  # noqa: E731
                             cfg.ckpt is not None)
    pred = predict(est, limit, cfg.max_batch)
    scfg = sweep.SweepConfig(model=spec.name, ckpt=cfg.ckpt, vae=cfg.vae, methods=[conf.canonical()],
                             batches=[1], dtype=cfg.dtype, device=cfg.device, repeats=1, min_seconds=0.0, warmup=0,
                             keep_skipped=cfg.keep_skipped, allow_random=cfg.allow_random, seed=cfg.seed,
                             nvml_pass=False, cuda_graphs=cfg.cuda_graphs, compile=cfg.compile, threads=cfg.threads)
    weights = resolve_weights(scfg.target())
    point0 = sweep.expand_grid(scfg, weights)[0]
    ram = None if cuda else available_bytes("cpu")
    if progress:
        progress("predicted", {"prediction": pred, "limit_source": limit_source})

    def probe(batch: int) -> Probe:
        guess = est(batch).total
        if ram is not None and guess > HEADROOM * ram:       # CPU: the probe would run past the machine
            r = Probe(batch, False, "guard", None, guess, 0.0, f"analytic estimate {guess / GiB:.2f} GiB exceeds "
                      f"the machine's available memory; not run")
        else:
            point = {**point0, "batch": int(batch), "energy_seconds": 0}
            if enforce:
                point["memory_limit_bytes"] = int(limit)
            t0 = time.perf_counter()
            res = sweep.run_point(point, cfg.timeout_s)
            secs = time.perf_counter() - t0
            status = str(res.get("status"))
            peak = res.get("peak_allocated_bytes") if cuda else res.get("rss_peak_growth_bytes")
            if status == "error" and not _oom_like(str(res.get("error"))):
                raise RegressionFailed(f"maxbatch probe at batch {batch} failed: {res.get('error')}")
            fits = status == "ok"
            r = Probe(batch, fits, "ok" if fits else "oom", int(peak) if peak is not None else None, guess,
                      round(secs, 2), str(res.get("error") or ""))
        if progress:
            progress("probe", asdict(r))
        return r

    probes = search(probe, pred.batch or 1, cfg.max_batch, limit, pred.bytes_per_image or None, cfg.granularity)
    best = largest(probes)
    at = next((p for p in probes if p.batch == best and p.fits), None)
    return {
        "model": spec.name, "weights": weights.label, "method": conf.canonical(), "depth": depth, "switch": switch,
        "select": select, "dtype": cfg.dtype, "device": cfg.device, "cuda_graphs": cfg.cuda_graphs,
        "compile": cfg.compile, "keep_skipped": cfg.keep_skipped, "memory_limit_bytes": int(limit),
        "limit_source": limit_source,
        "mechanism": ("cuda-memory-fraction" if enforce else "device") if cuda else "cpu-rss-peak",
        "predicted_batch": pred.batch, "measured_batch": best, "capped": best >= cfg.max_batch,
        "max_batch": cfg.max_batch, "granularity": cfg.granularity,
        "predicted_over_measured": pred.batch / best if best else None,
        "estimate_parts": pred.parts, "estimate_fixed_bytes": pred.fixed_bytes,
        "estimate_bytes_per_image": pred.bytes_per_image,
        "predicted_bytes_at_measured": est(best).total if best else None,
        "measured_peak_bytes": at.peak_bytes if at else None,
        "probes": [asdict(p) for p in probes], "n_probes": len(probes),
        "weights_notice": weights.notice,
    }


def _oom_like(error: str) -> bool:
    """Failures that are memory exhaustion under another name (cuBLAS workspace, a killed CPU worker)."""
    e = error.lower()
    return any(s in e for s in ("out of memory", "alloc_failed", "cublas_status_alloc", "sigkill"))
