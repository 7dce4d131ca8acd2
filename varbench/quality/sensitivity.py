"""The scale × depth ablation matrix (DESIGN "Quality metrics", VARIANT_PAPER "Sensitivity protocol").

Each cell runs a d-block subnet on some scales and the full network elsewhere:
``single`` (only scale s), ``from`` (scales >= s: VARiant's switch family) or ``groups`` (a group of scales; the
paper's protocol is a 50%-depth subnet on the first, middle and last third). A cell is scored against the full
network without any dataset: per-scale KL teacher-forced on the full network's own samples, and coupled sampling
(same labels, seed, Gumbel noise) giving token agreement and PSNR/SSIM; optionally toy accuracy/FD or FID.
The full network's samples and logits are computed once and reused by every cell; finished cells are skipped.

Besides the matrix, candidates are scored the same way: efficiency methods (``methods``: ``NAME:k=v`` strings of
``model.methods``, rows of mode "method") and per-scale depth schedules (``schedules``, e.g. from ``varbench
plan``'s plan.json, rows of mode "schedule"). Coupled sampling holds for every method: the sampler draws its
Gumbel noise per scale in the shape (images, pn², V) whatever the plan (guidance-skip runs one row per image but
samples as many images; code and the KV policies change the logits, not the draw). The KL of a schedule-only
method is teacher-forced as for the matrix; a method that changes the plan (guidance-skip, scale-window, kv-fp8,
code) is teacher-forced through cached generation under its plan (``plan_logits``: the full network's tokens fed
scale by scale through the pipeline's ``ScaleStep``), since the uncached forward knows nothing of KV windows, fp8
caches or a refiner.

The KL is ``guided`` by default: between the distributions the sampler really draws from (CFG with the ramp
t = cfg·si/(S−1), top-k then top-p, renormalised; ``metrics.sampled_kl_per_sample_scale`` says how differing
supports are handled); ``conditional`` is the softmax of the conditional logits alone. Every row carries a 95%
interval over its samples (``ci_low``, ``ci_high``, ``n``, ``ci_method``; ``varbench.quality.intervals``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from model.schedule import DepthSchedule
from model.spec import SPECS, VARSpec
from varbench.measuring import analytic
from varbench.quality.matrices import CANDIDATE_MODES, write_candidates, write_matrices  # noqa: F401
from varbench.quality.sensitivity_cells import (  # noqa: F401 - the cells, parsed and planned (re-exported)
    MODES, Cell, candidate_cells, cell_depths, check_groups, default_groups, parse_groups, parse_scales, plan_cells)
from varbench.quality import intervals, metrics
from varbench.quality.intervals import Interval
from varbench import results
from varbench.errors import UsageError
from varbench.schema import SENSITIVITY
from varbench.target import (ModelTarget, portable_config, resolve_device, resolve_dtype, resolve_spec,
                             resolve_weights)

log = logging.getLogger(__name__)

METRICS = ("fidelity", "kl", "fid", "toy")       # kl: the KL alone (teacher forcing, no generation per cell)
FIDELITY = ("kl", "token_agreement", "psnr", "ssim")     # row metrics; units and directions: varbench.schema.METRICS
KL_KINDS = ("guided", "conditional")
FD_RESAMPLES = 200       # a Fréchet distance per resample (metrics.frechet_to): percentile bootstrap, ~0.4 s a cell
ROWS_FILE = SENSITIVITY.rows_file
REFERENCE_FILE = "reference.pt"
# a row's identity for resume: same model, weights, sampling settings and cell -> already measured
KEY_FIELDS = SENSITIVITY.key_fields

Progress = Callable[[str, int, int, dict], None]


@dataclass
class SensitivityConfig:
    model: str | VARSpec = "var-d30"
    ckpt: str | None = None
    vae: str | None = None
    depths: Sequence[int] | None = None          # None: 2,4,8,16 below D (groups mode: round(D/2))
    scales: str | Sequence[int] = "all"
    mode: str = "single"
    groups: Sequence[tuple[int, int]] | None = None   # inclusive (lo, hi); None: thirds
    select: str = "isometric"
    samples: int = 16
    batch: int = 8
    metric: str = "fidelity"
    seed: int = 0
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    allow_random: bool = False
    device: str = "auto"
    dtype: str | None = None                     # None: fp32 on CPU, bf16 on CUDA
    fid_ref: str | None = None                   # .npz (mu, sigma) or image folder; None: the full network
    inception_weights: str | None = None         # --metric fid: torch-fidelity's Inception weights file
    compile: bool | None = None                  # torch.compile the kernels; None: on for CUDA (off on a CPU)
    kl: str = "guided"                           # guided: the sampled (CFG, top-k/p) distribution; conditional
    methods: Sequence[str] | None = None         # method configurations (model.methods); replace the matrix
    schedules: Sequence[dict] | None = None      # per-scale schedules: {"depths", "select", "plan",
    #                                              "predicted_loss", "plan_metric"} (a plan.json); replace it too

    def target(self) -> ModelTarget:
        """The model to score, device (auto -> cuda if present) and dtype (None -> bf16 on CUDA) resolved."""
        device = resolve_device(self.device)
        return ModelTarget(self.model, self.ckpt, self.vae, self.allow_random, resolve_dtype(self.dtype, device),
                           device, self.seed)


def metric_names(metric: str) -> list[str]:
    """Row metrics of a --metric choice: the data-free fidelity metrics with every choice but ``kl``, which is the
    KL alone (a teacher-forced pass per cell and batch, no coupled generation: the fast matrix)."""
    if metric not in METRICS:
        raise UsageError(f"--metric: {metric!r} is not one of {', '.join(METRICS)}")
    if metric == "kl":
        return ["kl"]
    return list(FIDELITY) + {"fidelity": [], "toy": ["toy_acc", "toy_fd"], "fid": ["fid"]}[metric]


def _toy_image_size() -> int:
    return SPECS["var-toy"].image_size


def check_metric_available(metric: str, spec: VARSpec, samples: int) -> None:
    """Fail before any sampling when --metric fid/toy cannot work: missing extra, wrong images, too few."""
    if metric in ("fid", "toy") and samples < 2:
        raise UsageError(f"--metric {metric} fits a Gaussian to the samples: use --samples >= 2")
    if metric == "fid" and importlib.util.find_spec("torch_fidelity") is None:
        raise UsageError("--metric fid needs the optional extra torch-fidelity: pip install torch-fidelity")
    if metric == "toy":
        if spec.image_size != _toy_image_size():
            raise UsageError(f"--metric toy judges {_toy_image_size()}px var-toy images; {spec.name} makes "
                             f"{spec.image_size}px images (use --metric fidelity or fid)")
        try:
            from varbench.quality import toy_metric  # noqa: F401 - lazy: needs the toy classifier
        except ImportError as e:
            raise UsageError(f"--metric toy is not available ({e})") from None


# ---- reference ------------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """The full network's samples (per batch) and its teacher-forced next-scale logits on them (guided or
    conditional, as ``SensitivityConfig.kl`` says)."""
    labels: list[torch.Tensor]
    seeds: list[int]
    indices: list[list[torch.Tensor]]
    images: list[torch.Tensor]
    logits: list[torch.Tensor]
    # per run, not saved: what every cell scores against the same way (the FID extractor and reference statistics)
    memo: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reference_meta(cfg: SensitivityConfig, spec: VARSpec, weights: str, dtype: torch.dtype,
                    device_type: str) -> dict:
    """What the cached samples depend on (Gumbel noise differs between CPU and CUDA generators)."""
    return {"model": spec.name, "weights": weights, "samples": cfg.samples, "batch": cfg.batch, "seed": cfg.seed,
            "cfg": float(cfg.cfg), "top_k": cfg.top_k, "top_p": float(cfg.top_p), "dtype": str(dtype),
            "device": device_type}


def compute_reference(pipe, cfg: SensitivityConfig, out_dir: Path, progress: Progress | None) -> Reference:
    """Generate with the full schedule (labels = arange % classes, seed + batch index), cache indices/images to
    reference.pt, and teacher-force the full network on its own samples."""
    spec, full = pipe.spec, DepthSchedule.full(pipe.spec)
    labels_all = torch.arange(cfg.samples) % spec.num_classes
    starts = list(range(0, cfg.samples, cfg.batch))
    meta = _reference_meta(cfg, spec, pipe.weights, pipe.dtype, pipe.device.type)
    path = out_dir / REFERENCE_FILE
    cached = None
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            cached = cached if cached.get("meta") == meta else None
        except Exception as e:  # noqa: BLE001 - a bad cache is recomputed, never trusted
            log.warning("ignoring %s (%s)", path, e)
            cached = None
    ref = Reference([], [], [], [], [])
    for bi, b0 in enumerate(starts):
        labels_B = labels_all[b0:b0 + cfg.batch]
        seed_b = cfg.seed + bi
        if cached is not None:
            idx = [i[b0:b0 + cfg.batch] for i in cached["indices"]]
            images = cached["images"][b0:b0 + cfg.batch]
        else:
            out = pipe.generate(labels_B, cfg=cfg.cfg, top_k=cfg.top_k, top_p=cfg.top_p, seed=seed_b, schedule=full)
            idx, images = [i.cpu() for i in out.indices], out.images.float().cpu()
        ref.labels.append(labels_B)
        ref.seeds.append(seed_b)
        ref.indices.append(idx)
        ref.images.append(images)
        ref.logits.append(next_scale_logits(pipe, labels_B, idx, full, cfg).cpu())
        if progress:
            progress("reference", bi + 1, len(starts), {"cached": cached is not None})
    if cached is None:
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"meta": meta, "indices": [torch.cat(t) for t in zip(*ref.indices)],
                    "images": torch.cat(ref.images)}, tmp)
        os.replace(tmp, path)             # a crash never leaves a half-written cache
    return ref


# ---- one cell ---------------------------------------------------------------------------------------------------
Scored = tuple[float, "list[float] | None", Interval]     # (value, per-scale list or None, 95% interval)


def next_scale_logits(pipe, labels_B: torch.Tensor, idx: list[torch.Tensor], schedule: DepthSchedule,
                      cfg: SensitivityConfig) -> torch.Tensor:
    """Teacher-forced (B, L, V) float32 logits the KL compares: conditional, or CFG-guided as the sampler sees them
    (one pass over [labels | null class] on the same token maps, as generation feeds both halves)."""
    if cfg.kl not in KL_KINDS:
        raise UsageError(f"--kl: {cfg.kl!r} is not one of {', '.join(KL_KINDS)}")
    if cfg.kl == "conditional":
        return pipe.teacher_forcing(labels_B, idx, schedule).float()
    B = labels_B.shape[0]
    both = pipe.teacher_forcing(torch.cat((labels_B, torch.full_like(labels_B, pipe.spec.num_classes))),
                                [torch.cat((i, i)) for i in idx], schedule)
    return metrics.guided_logits(both[:B], both[B:], pipe.spec.begin_ends, cfg.cfg)


@torch.no_grad()
def plan_logits(pipe, labels_B: torch.Tensor, idx: list[torch.Tensor], schedule: DepthSchedule,
                cfg: SensitivityConfig, plan) -> torch.Tensor:
    """Teacher-forced (B, L, V) float32 logits under an inference plan: ``generate`` fed the given tokens
    instead of sampling (KV policies, fp8 cache, guidance-skip rows, a refiner all act). Guided: what the sampler
    draws from (the CFG ramp; conditional alone on scales without guidance); conditional: the conditional
    logits."""
    if cfg.kl not in KL_KINDS:
        raise UsageError(f"--kl: {cfg.kl!r} is not one of {', '.join(KL_KINDS)}")
    out = pipe.generate(labels_B, cfg=cfg.cfg, top_k=cfg.top_k, top_p=cfg.top_p, schedule=schedule, plan=plan,
                        decode=False, return_logits=True, teacher_indices=idx,
                        logits_kind="conditional" if cfg.kl == "conditional" else "guided")
    return torch.cat(out.logits, dim=1)


def _kl(ref_BLV: torch.Tensor, other_BLV: torch.Tensor, spec: VARSpec, cfg: SensitivityConfig) -> torch.Tensor:
    ref_BLV = ref_BLV.to(other_BLV.device)
    if cfg.kl == "conditional":
        return metrics.kl_per_sample_scale(ref_BLV, other_BLV, spec.begin_ends)
    return metrics.sampled_kl_per_sample_scale(ref_BLV, other_BLV, spec.begin_ends, cfg.top_k, cfg.top_p)


def _mean_scored(per_sample_scale: torch.Tensor) -> Scored:
    """Mean over scales per sample, then over samples; the interval is a bootstrap over the samples."""
    per_sample = per_sample_scale.double().mean(1).numpy()
    per_scale = [float(v) for v in per_sample_scale.double().mean(0)]
    return float(per_sample.mean()), per_scale, intervals.bootstrap_interval(per_sample)


def evaluate_schedule(pipe, ref: Reference, schedule: DepthSchedule, cfg: SensitivityConfig,
                      names: Sequence[str]) -> dict[str, Scored]:
    """All metrics of one schedule against the reference: name -> (value, per-scale list or None, interval)."""
    return evaluate_configuration(pipe, ref, schedule, cfg, names)


def evaluate_configuration(pipe, ref: Reference, schedule: DepthSchedule, cfg: SensitivityConfig,
                           names: Sequence[str], plan=None) -> dict[str, Scored]:
    """``evaluate_schedule`` under an inference plan (a method's plan fields; None: the pipeline's plan): coupled
    generations with ``plan``, the KL teacher-forced under it (``plan_logits``) when it differs from the
    pipeline's."""
    spec = pipe.spec
    own = plan is None or plan == pipe.plan
    kl, agree, mse, ssim, images = [], [], [], [], []
    generate = any(m != "kl" for m in names)       # the KL alone needs no coupled generation
    for labels_B, seed_b, idx, img, logits_ref in zip(ref.labels, ref.seeds, ref.indices, ref.images, ref.logits):
        logits = (next_scale_logits(pipe, labels_B, idx, schedule, cfg) if own
                  else plan_logits(pipe, labels_B, idx, schedule, cfg, plan))
        kl.append(_kl(logits_ref, logits, spec, cfg).cpu())
        if not generate:
            continue
        out = pipe.generate(labels_B, cfg=cfg.cfg, top_k=cfg.top_k, top_p=cfg.top_p, seed=seed_b, schedule=schedule,
                            plan=None if own else plan)
        agree.append(metrics.token_agreement_per_sample_scale(idx, [i.cpu() for i in out.indices]))
        gen = out.images.float().cpu()
        mse.append(((gen.double() - img.double()) ** 2).flatten(1).mean(1))
        ssim.append(metrics.ssim_per_image(gen, img).cpu())
        images.append(gen)
    if not generate:
        return {"kl": _mean_scored(torch.cat(kl))}
    mse_n, ssim_n = torch.cat(mse).numpy(), torch.cat(ssim).numpy()
    psnr_of = lambda a: metrics.psnr_from_mse(float(a.mean()))   # noqa: E731 - PSNR of the pooled MSE
    res: dict[str, Scored] = {
        "kl": _mean_scored(torch.cat(kl)), "token_agreement": _mean_scored(torch.cat(agree)),
        "psnr": (psnr_of(mse_n), None, intervals.bootstrap_interval(mse_n, psnr_of)),
        "ssim": (float(ssim_n.mean()), None, intervals.bootstrap_interval(ssim_n))}
    res.update(_extra_metrics(torch.cat(images), torch.cat(ref.labels), ref, cfg, names, pipe.device))
    return res


def _extra_metrics(images: torch.Tensor, labels: torch.Tensor, ref: Reference, cfg: SensitivityConfig,
                   names: Sequence[str], device: torch.device) -> dict[str, Scored]:
    out: dict[str, Scored] = {}
    if "toy_acc" in names or "toy_fd" in names:
        from varbench.quality import toy_metric  # lazy: needs the toy classifier (checked by check_metric_available)
        correct, feats = toy_metric.toy_scores(images, labels)
        k, n = int(correct.sum()), int(correct.size)
        out["toy_acc"] = (k / n, None, intervals.wilson_interval(k, n))
        fd_of = lambda ix: toy_metric.fd_of_features(feats[ix.astype(int)])   # noqa: E731 - resample images
        out["toy_fd"] = (float(toy_metric.fd_of_features(feats)), None,
                         intervals.bootstrap_interval(np.arange(n), fd_of, n_resamples=FD_RESAMPLES,
                                                      method="percentile"))
    if "fid" in names:            # with the feature-bootstrap interval of `varbench fid` (quality/fid.py)
        from varbench.quality.fid import fid_interval

        key = ("fid", str(device), cfg.inception_weights, cfg.fid_ref)
        if key not in ref.memo:         # once per run: the Inception network and the reference's statistics
            extract = metrics.inception_extractor(str(device), cfg.inception_weights)
            ref.memo[key] = extract, metrics.reference_stats(cfg.fid_ref if cfg.fid_ref else torch.cat(ref.images),
                                                             extract)
        extract, (mu_r, sigma_r) = ref.memo[key]
        feats = metrics.image_features(images, extract)
        if feats.shape[1] != mu_r.shape[0]:
            raise UsageError(f"reference statistics are {mu_r.shape[0]}-d but the features are {feats.shape[1]}-d")
        out["fid"] = (metrics.frechet_distance(*metrics.gaussian_stats(feats), mu_r, sigma_r), None,
                      fid_interval(feats, mu_r, sigma_r, device=str(device)))
    return out


# ---- the matrix ---------------------------------------------------------------------------------------------------
def run_sensitivity(cfg: SensitivityConfig, out_dir: str | os.PathLike,
                    progress: Progress | None = None) -> list[dict[str, Any]]:
    """Fill the matrix: rows appended to out_dir/sensitivity.jsonl (resumable), matrices as CSV, a manifest.
    Returns this configuration's rows (resumed and new). ``progress(event, done, total, info)`` with events
    'plan', 'reference', 'cell'."""
    from varbench.target import load_pipeline    # looked up per call: tests count the loads

    spec = resolve_spec(cfg.model)
    if cfg.samples < 1 or cfg.batch < 1:
        raise UsageError(f"--samples and --batch must be >= 1 (got {cfg.samples}, {cfg.batch})")
    cells, names = plan_cells(cfg, spec), metric_names(cfg.metric)
    if cfg.kl not in KL_KINDS:
        raise UsageError(f"--kl: {cfg.kl!r} is not one of {', '.join(KL_KINDS)}")
    check_metric_available(cfg.metric, spec, cfg.samples)
    target = cfg.target()
    device = torch.device(target.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = resolve_weights(target)
    pipe = load_pipeline(target, weights)
    pipe.set_plan(compiled=device.type == "cuda" if cfg.compile is None else bool(cfg.compile))
    base = {"kind": "sensitivity", "model": spec.name, "weights": weights.label, "select": cfg.select,
            "samples": cfg.samples, "batch": cfg.batch, "seed": cfg.seed, "cfg": cfg.cfg, "top_k": cfg.top_k,
            "top_p": cfg.top_p, "dtype": target.dtype, "device": device.type,
            "fid_ref": cfg.fid_ref if "fid" in names else None}
    rows_path = out / ROWS_FILE
    # a row written before intervals existed is not finished: it is measured again, with its interval
    done = {results.row_key(r, KEY_FIELDS): r for r in results.read_rows(rows_path)
            if r.get("kind") == "sensitivity" and "ci_low" in r}
    ref_names = [m for m in names if m in ("toy_acc", "toy_fd") or (m == "fid" and cfg.fid_ref)]
    ref_row = _row(base, "reference", None, None, spec.depth, tuple(range(spec.depth)), DepthSchedule.full(spec), spec)

    def labelled(row0: dict, m: str) -> dict:
        """The row of metric m: kl rows say which KL (``kl_kind``), the others carry null."""
        return {**row0, "metric": m, "kl_kind": cfg.kl if m == "kl" else None}

    def missing(row0: dict, wanted: Sequence[str]) -> list[str]:
        return [m for m in wanted if results.row_key(labelled(row0, m), KEY_FIELDS) not in done]

    todo = [c for c in cells if missing(_cell_row(base, c, spec), names)]
    ref_todo = missing(ref_row, ref_names)
    info = {"cells": len(cells), "todo": len(todo), "samples": cfg.samples, "metrics": names,
            "weights": weights.label, "model": spec.name,
            "mode": "methods" if cfg.methods or cfg.schedules else cfg.mode,
            "generations": (len({c.key for c in todo}) + 1) * cfg.samples if todo or ref_todo else 0}
    log.info("sensitivity: %d cells x %d samples (%d to run)", len(cells), cfg.samples, len(todo))
    if progress:
        progress("plan", 0, len(todo), info)
    results.write_manifest(out, {"kind": "sensitivity", "config": _config_dict(cfg, spec), "plan": info,
                                 "inference_plan": pipe.plan.as_dict()})
    if todo or ref_todo:
        ref = compute_reference(pipe, cfg, out, progress)
        if ref_todo:
            vals = _extra_metrics(torch.cat(ref.images), torch.cat(ref.labels), ref, cfg, ref_todo, device)
            for m in ref_todo:
                extra = {}
                if m == "toy_fd":   # FD of as many real images: the floor at this sample count (toy_metric)
                    from varbench.quality import toy_metric
                    extra["real_fd"] = float(toy_metric.real_fd(cfg.samples))
                _append(rows_path, done, {**labelled(ref_row, m), "value": vals[m][0], "cell_seconds": None,
                                          **vals[m][2].fields(), **extra})
        cache: dict[tuple, tuple[dict, float]] = {}
        for i, c in enumerate(todo):
            row0 = _cell_row(base, c, spec)
            if c.key not in cache:
                _sync(device)
                t0 = time.perf_counter()
                if c.plan_changes or c.refiner:
                    with _refiner(pipe, c.refiner, target):
                        vals = evaluate_configuration(pipe, ref, c.schedule, cfg, names,
                                                      pipe.plan.replace(**dict(c.plan_changes)))
                else:
                    vals = evaluate_schedule(pipe, ref, c.schedule, cfg, names)
                _sync(device)
                cache[c.key] = (vals, time.perf_counter() - t0)
            vals, secs = cache[c.key]
            for m in missing(row0, names):
                value, per_scale, ci = vals[m]
                _append(rows_path, done, {**labelled(row0, m), "value": value, "per_scale": per_scale,
                                          "cell_seconds": secs, **ci.fields()})
            if progress:
                progress("cell", i + 1, len(todo), {"label": c.label, "depth": c.depth, "seconds": secs})
    rows = [done[results.row_key(labelled(ref_row, m), KEY_FIELDS)] for m in ref_names]
    rows += [done[results.row_key(labelled(_cell_row(base, c, spec), m), KEY_FIELDS)]
             for c in cells for m in names]
    if cfg.methods or cfg.schedules:
        write_candidates(rows, out)
    else:
        write_matrices(rows, out, cfg.mode)
    return rows


@contextlib.contextmanager
def _refiner(pipe, name: str | None, target: ModelTarget):
    """The code method's refiner loaded beside the pipeline (same device, dtype, weights policy) while a
    candidate runs, then dropped."""
    if name is None:
        yield
        return
    from varbench.target import load_pipeline
    rt = dataclasses.replace(target, model=name, ckpt=None, vae=None)
    if resolve_spec(name).name == pipe.spec.name:
        rt = target                                 # the model as its own refiner: the same weights
    other = load_pipeline(rt, resolve_weights(rt))
    pipe.set_refiner(other.var)
    try:
        yield
    finally:
        pipe.set_refiner(None)


def _row(base: dict, mode: str, scale: int | None, group: tuple[int, int] | None, depth: int,
         layers: tuple[int, ...], schedule: DepthSchedule, spec: VARSpec) -> dict:
    return {**base, "mode": mode, "scale": scale, "group": f"{group[0]}-{group[1]}" if group else None,
            "depth": depth, "layers": list(layers), "schedule": schedule.describe(),
            "kv_bytes": analytic.kv_peak_bytes(spec, schedule, batch=1, dtype=torch.bfloat16),
            "flops": analytic.flops(spec, schedule, batch=1, cfg=True)}


def _cell_row(base: dict, c: Cell, spec: VARSpec) -> dict:
    row = _row(base, c.mode, c.scale, c.group, c.depth, c.layers, c.schedule, spec)
    if c.method is None:
        return row
    from model.plan import InferencePlan
    plan = InferencePlan.plain().replace(**dict(c.plan_changes))
    if c.refiner:
        ref = resolve_spec(c.refiner)
        kv = max(analytic.code_kv_bytes_per_scale(spec, ref, batch=1, dtype=torch.bfloat16, plan=plan))
        fl = analytic.code_flops(spec, ref, batch=1, cfg=True, plan=plan)
    else:
        kv = analytic.kv_peak_bytes(spec, c.schedule, batch=1, dtype=torch.bfloat16, plan=plan)
        fl = analytic.flops(spec, c.schedule, batch=1, cfg=True, plan=plan)
    return {**row, "method": c.method, "kv_bytes": kv, "flops": fl,
            **{k: v for k, v in c.extra.items() if v is not None}}


def _append(path: Path, done: dict, row: dict) -> None:
    results.append_row(path, row)
    done[results.row_key(row, KEY_FIELDS)] = row


def _config_dict(cfg: SensitivityConfig, spec: VARSpec) -> dict:
    d = portable_config(dataclasses.asdict(cfg))
    d["model"] = spec.name
    return d
