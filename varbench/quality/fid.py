"""FID and Inception score of real samples under a locked protocol (``varbench fid``, issue 19 point 3).

The standard protocol is the one published ImageNet-256 numbers use: 50 images per class × 1000 classes = 50,000
samples at cfg 1.5, top-k 900, top-p 0.96, Inception features (torch-fidelity's port of the TF FID network, from a
local weights file), against ADM's reference statistics (``VIRTUAL_imagenet256_labeled.npz``: ``mu``, ``sigma``).
``samples`` below that gives a proxy, labelled as one: FID is biased upwards at small n, so a proxy is only
comparable with proxies of the same n. Every row records the whole protocol.

Generation is sharded: the label list (label i = i mod classes) is cut into shards of ``shard_images``; under
torchrun rank r generates the shards k with k mod world = r, and each finished shard is one atomically written
``.npz`` (uint8 images HWC + labels), so a killed run continues from the shards on disk, with or without torchrun.
A batch's sampling seed is ``seed·2³² + its first image index``: the images do not depend on the world size.
Once every shard exists (rank 0, after a barrier, or a later call) the features are extracted, FID is the Fréchet
distance of their Gaussian to the reference (``metrics.frechet_distance``, the one ``sensitivity --metric fid``
uses), with a 95% interval from a feature-level bootstrap (resample the feature rows, refit, recompute the
distance; the resamples' spread centred on the estimate: ``fid_interval``; the images are not regenerated, so it
covers the sampling of the n images given the generator, not other seeds or weights), and the Inception score over 10 splits of the logits (mean and split std, as
torch-fidelity's ``isc``).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from varbench import results
from varbench.errors import UsageError
from varbench.quality import intervals, metrics
from varbench.schema import FID
from varbench.target import (ModelTarget, check_select, check_switch, file_sha256, resolve_depths, resolve_device,
                             resolve_dtype, resolve_spec, resolve_weights)

log = logging.getLogger(__name__)

STANDARD = {"per_class": 50, "classes": 1000, "cfg": 1.5, "top_k": 900, "top_p": 0.96}
ROWS_FILE = FID.rows_file
SAMPLES_DIR = "samples"
REF_CACHE_DIR = "ref-stats"
FID_RESAMPLES = 100        # one resample at 50,000 x 2048 on an H200: 0.19 s (measured), ~20 s an interval
IS_SPLITS = 10
IS_SHUFFLE_SEED = 2020     # torch-fidelity's default: splits of a seeded permutation
FEATURE_BATCH = 200
KEY_FIELDS = FID.key_fields
NEEDS_WEIGHTS = ("--inception-weights PATH is required: the FID Inception weights "
                 "(pt_inception-2015-12-05-6726825d.pth, torch-fidelity's release file)")

Progress = Callable[[str, int, int, dict], None]


@dataclass
class FidConfig:
    """One ``varbench fid`` call: the configurations to score and the protocol they are scored under."""

    model: Any = "var-d30"                       # registry name or VARSpec
    ckpt: str | None = None
    vae: str | None = None
    depths: Sequence[int] | None = None          # None (and no methods): the full network
    switches: Sequence[int] | None = None        # None: the model's default switch
    select: str = "isometric"
    methods: Sequence[str] | None = None         # NAME:k=v+... (model/methods.py); replaces depths/switches
    samples: int | None = None                   # None: per_class × the model's classes (the standard 50k)
    per_class: int = STANDARD["per_class"]
    batch: int = 50
    shard_images: int = 1000
    seed: int = 0
    cfg: float = STANDARD["cfg"]
    top_k: int = STANDARD["top_k"]
    top_p: float = STANDARD["top_p"]
    ref: str | None = None                       # an ADM-style .npz (mu, sigma) or an ImageFolder directory
    inception_weights: str | None = None
    resamples: int = FID_RESAMPLES
    is_splits: int = IS_SPLITS
    max_shards: int | None = None                # generate at most this many new shards per rank, then stop
    allow_random: bool = False
    device: str = "auto"
    dtype: str | None = None

    def target(self, local_rank: int | None = None) -> ModelTarget:
        device = resolve_device(self.device, local_rank)
        return ModelTarget(self.model, self.ckpt, self.vae, self.allow_random, resolve_dtype(self.dtype, device),
                           device, self.seed)


@dataclass(frozen=True)
class Extractor:
    """uint8 (N, 3, H, W) images -> (N, D) features and (N, C) class logits (None: no Inception score)."""

    name: str
    weights: str | None
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Dist:
    """Where this process stands among the generating processes (torchrun's rank and world; 1 alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int | None = None                # the GPU of this process on its host (torchrun's LOCAL_RANK)
    barrier: Callable[[], None] = lambda: None


def inception_extractor(device: str, weights_path: str | None) -> Extractor:
    """torch-fidelity's FID Inception (pool features + unbiased logits in one pass) from ``--inception-weights``."""
    if not weights_path:
        raise UsageError(NEEDS_WEIGHTS)
    net = metrics.inception_network(device, weights_path, outputs=("2048", "logits_unbiased"))
    label = f"file:{Path(weights_path).name}@{file_sha256(weights_path)[:12]}"

    def fn(x_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = net(x_u8.to(device))
        return pool, logits
    return Extractor(metrics.INCEPTION_NAME, label, fn)


def have_torch_fidelity() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def shutdown(dist: Dist) -> None:
    """Leave the process group ``distributed`` started (a no-op alone)."""
    import torch.distributed as tdist

    if dist.world > 1 and tdist.is_initialized():
        tdist.destroy_process_group()


def distributed() -> Dist:
    """torchrun's RANK / WORLD_SIZE through torch.distributed (a gloo group: only barriers cross it, and its
    timeout covers a whole generation); a lone process is rank 0 of 1."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=6))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.barrier)


# ---- the protocol ---------------------------------------------------------------------------------------------
def protocol(n: int, classes: int, cfg: float, top_k: int, top_p: float) -> str:
    """"standard" for 50 per class × 1000 classes at cfg 1.5, top-k 900, top-p 0.96; anything else "proxy"."""
    std = STANDARD
    return ("standard" if classes == std["classes"] and n == std["per_class"] * std["classes"]
            and float(cfg) == std["cfg"] and int(top_k) == std["top_k"] and float(top_p) == std["top_p"]
            else "proxy")


def configurations(cfg: FidConfig, spec: Any) -> list[Any]:
    """The Configurations to score: ``methods``, else the variant grid (switches × depths), else the full net."""
    from model import methods as methods_mod

    if cfg.methods:
        out = []
        for text in cfg.methods:
            try:
                out.append(methods_mod.parse(text, spec))
            except methods_mod.MethodError as e:
                raise UsageError(f"--method: {e}") from None
        return list(dict.fromkeys(out))
    depths = resolve_depths(spec, cfg.depths) if cfg.depths is not None else [spec.depth]
    switches = [check_switch(spec, s) for s in cfg.switches] if cfg.switches else [check_switch(spec, None)]
    sel = check_select(cfg.select)
    return list(dict.fromkeys(methods_mod.variant(spec, d, sw, sel) for sw in switches for d in depths))


def check_config(cfg: FidConfig, spec: Any) -> int:
    """Bad input -> UsageError before anything is loaded; returns n (images per configuration)."""
    n = cfg.samples if cfg.samples is not None else cfg.per_class * spec.num_classes
    if n < 2:
        raise UsageError(f"--samples: FID fits a Gaussian to the samples, use >= 2 (got {n})")
    for name, v in (("--batch", cfg.batch), ("--shard-images", cfg.shard_images), ("--per-class", cfg.per_class),
                    ("--resamples", cfg.resamples), ("--is-splits", cfg.is_splits)):
        if v < 1:
            raise UsageError(f"{name} must be >= 1 (got {v})")
    if cfg.is_splits > n:
        raise UsageError(f"--is-splits {cfg.is_splits} exceeds the {n} samples")
    if cfg.max_shards is not None and cfg.max_shards < 0:
        raise UsageError(f"--max-shards must be >= 0 (got {cfg.max_shards})")
    if not cfg.ref:
        raise UsageError("--ref is required: an ADM-style .npz with mu and sigma (VIRTUAL_imagenet256_labeled.npz) "
                         "or an ImageFolder directory of real images")
    ref = Path(cfg.ref)
    if str(cfg.ref).endswith(".npz"):
        if not ref.is_file():
            raise UsageError(f"--ref: {cfg.ref} is not a file")
    elif not ref.is_dir():
        raise UsageError(f"--ref: {cfg.ref} is neither an .npz file nor a directory of images")
    if cfg.inception_weights is not None and not Path(cfg.inception_weights).is_file():
        raise UsageError(f"--inception-weights: {cfg.inception_weights} is not a file")
    configurations(cfg, spec)
    return n


# ---- shards -----------------------------------------------------------------------------------------------------
def labels_for(n: int, classes: int) -> np.ndarray:
    """Label i = i mod classes: every class equally often, and any contiguous shard covers the classes evenly."""
    return np.arange(n, dtype=np.int64) % classes


def shard_ranges(n: int, shard_images: int) -> list[tuple[int, int]]:
    return [(b, min(n, b + shard_images)) for b in range(0, n, shard_images)]


def shard_path(samples_dir: Path, k: int, n_shards: int) -> Path:
    return samples_dir / f"shard-{k:05d}-of-{n_shards:05d}.npz"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez through a temp file + fsync + os.replace: a shard on disk under its name is complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_shards(pipe: Any, conf: Any, gen: dict, samples_dir: Path, dist: Dist, max_new: int | None,
                    progress: Progress | None = None) -> int:
    """Generate this rank's missing shards (at most ``max_new``); returns how many were written."""
    n, S, B = gen["n"], gen["shard_images"], gen["batch"]
    labels = labels_for(n, gen["classes"])
    ranges = shard_ranges(n, S)
    todo = missing_shards(samples_dir, n, S, dist)
    if max_new is not None:
        todo = todo[:max_new]
    schedule = conf.schedule()
    for i, k in enumerate(todo):
        b0, b1 = ranges[k]
        imgs = []
        for s in range(b0, b1, B):
            lab = torch.from_numpy(labels[s:min(b1, s + B)])
            out = pipe.generate(lab, cfg=gen["cfg"], top_k=gen["top_k"], top_p=gen["top_p"],
                                seed=gen["seed"] * (1 << 32) + s, schedule=schedule)
            imgs.append(metrics._to_uint8(out.images).permute(0, 2, 3, 1).numpy())
        _save_npz(shard_path(samples_dir, k, len(ranges)), images=np.concatenate(imgs), labels=labels[b0:b1])
        if progress:
            progress("shard", i + 1, len(todo), {"shard": k, "of": len(ranges), "rank": dist.rank})
    return len(todo)


def missing_shards(samples_dir: Path, n: int, shard_images: int, dist: Dist | None = None) -> list[int]:
    """Shards not on disk yet (of ``dist``'s rank only, when given)."""
    ranges = shard_ranges(n, shard_images)
    return [k for k in range(len(ranges)) if not shard_path(samples_dir, k, len(ranges)).exists()
            and (dist is None or k % dist.world == dist.rank)]


def shard_features(samples_dir: Path, n: int, shard_images: int, extractor: Extractor
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and logits) of every shard's images, in shard order; float64."""
    feats, logits = [], []
    ranges = shard_ranges(n, shard_images)
    for k, (b0, b1) in enumerate(ranges):
        with np.load(shard_path(samples_dir, k, len(ranges))) as z:
            images = z["images"]
        if images.shape[0] != b1 - b0:
            raise UsageError(f"{shard_path(samples_dir, k, len(ranges))}: {images.shape[0]} images, expected "
                             f"{b1 - b0}; delete it and rerun to regenerate it")
        f, lg = _extract(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), extractor)
        feats.append(f)
        logits.append(lg)
    return np.concatenate(feats), (None if any(x is None for x in logits) else np.concatenate(logits))


def _extract(images_u8: torch.Tensor, extractor: Extractor) -> tuple[np.ndarray, np.ndarray | None]:
    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, images_u8.shape[0], FEATURE_BATCH):
            f, lg = extractor.fn(images_u8[i:i + FEATURE_BATCH])
            feats.append(f.double().cpu().flatten(1).numpy())
            logits.append(None if lg is None else lg.double().cpu().flatten(1).numpy())
    return np.concatenate(feats), (None if any(x is None for x in logits) else np.concatenate(logits))


# ---- reference statistics -----------------------------------------------------------------------------------------
def reference(ref: str, extractor: Extractor, out_dir: Path) -> tuple[np.ndarray, np.ndarray, str, int | None]:
    """(mu, sigma, label, images) of the reference: an .npz read as is (``metrics.reference_stats``), or an
    ImageFolder's features computed once and cached under ``out_dir/ref-stats/``, keyed by the images' content
    and the extractor."""
    p = Path(ref)
    if str(ref).endswith(".npz"):
        mu, sigma = metrics.reference_stats(p, extractor.fn)
        with np.load(p) as z:
            count = int(z["n"]) if "n" in z.files else None
        return mu, sigma, f"npz:{p.name}@{file_sha256(p)[:12]}", count
    files, content = _folder_content(p)
    label = f"folder:{p.name}@{content}"
    cache = out_dir / REF_CACHE_DIR / f"{p.name}-{content}-{_hash([extractor.name, extractor.weights])}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return np.asarray(z["mu"]), np.asarray(z["sigma"]), label, int(z["n"])
    feats = [_extract(_load_images(chunk, p), extractor)[0] for chunk in
             (files[i:i + FEATURE_BATCH] for i in range(0, len(files), FEATURE_BATCH))]
    mu, sigma = metrics.gaussian_stats(np.concatenate(feats))
    cache.parent.mkdir(parents=True, exist_ok=True)
    _save_npz(cache, mu=mu, sigma=sigma, n=np.asarray(len(files)))
    return mu, sigma, label, len(files)


def _load_images(files: Sequence[Path], root: Path) -> torch.Tensor:
    from PIL import Image

    arrs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len({a.shape for a in arrs}) != 1:
        raise UsageError(f"--ref: images under {root} have different sizes ({sorted({a.shape for a in arrs})[:2]}); "
                         "resize or centre-crop them first")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


# ---- the statistics ---------------------------------------------------------------------------------------------
def inception_score(logits_NC: np.ndarray, splits: int = IS_SPLITS, seed: int = IS_SHUFFLE_SEED
                    ) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split of a seeded permutation: (mean, std over splits), torch-fidelity's
    ``isc`` definition (Salimans et al. 2016)."""
    from scipy.special import log_softmax

    x = np.asarray(logits_NC, np.float64)
    N = x.shape[0]
    if splits > N:
        raise UsageError(f"--is-splits {splits} exceeds the {N} samples")
    x = x[np.random.RandomState(seed).permutation(N)]
    log_p = log_softmax(x, axis=1)
    scores = []
    for i in range(splits):
        lp = log_p[i * N // splits:(i + 1) * N // splits]
        log_q = np.log(np.exp(lp).mean(0, keepdims=True))
        scores.append(float(np.exp((np.exp(lp) * (lp - log_q)).sum(1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


def resampled_fd(feats_ND: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, device: str = "cpu"
                 ) -> Callable[[np.ndarray], float]:
    """FD to the reference of the feature rows taken ``w[i]`` times each (a bootstrap resample as multiplicities):
    the mean and covariance refit by one weighted matmul on ``device``, the trace term ``eigvalsh(r Σ r)`` with
    r = Σ_ref^½ computed once (``metrics.frechet_to``'s identity). Equal to ``frechet_distance`` of the repeated
    rows (tested)."""
    dev = torch.device(device)
    F_ = torch.from_numpy(np.ascontiguousarray(feats_ND, np.float64)).to(dev)
    r = torch.from_numpy(metrics._psd_sqrt(np.asarray(sigma_ref, np.float64))).to(dev)
    mu_r = torch.from_numpy(np.asarray(mu_ref, np.float64)).to(dev)
    tr_r = float(np.trace(sigma_ref))

    def fd(w_N: np.ndarray) -> float:
        w = torch.from_numpy(np.asarray(w_N, np.float64)).to(dev)
        mu = w @ F_ / w.sum()
        X = F_ - mu
        cov = (X * w[:, None]).T @ X / (w.sum() - 1)
        m = r @ cov @ r
        tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
        d = mu - mu_r
        return max(0.0, float(d @ d + cov.trace() + tr_r - 2 * tr_covmean))
    return fd


def fid_interval(feats_ND: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, resamples: int = FID_RESAMPLES,
                 seed: int = intervals.SEED, device: str = "cpu", level: float = intervals.LEVEL
                 ) -> intervals.Interval:
    """95% interval of the FD from a bootstrap over the feature rows, centred on the estimate.

    Each resample draws n rows with replacement (multinomial multiplicities, seeded) and recomputes the distance
    (``resampled_fd``). The interval is the estimate minus/plus the resamples' spread below and above their
    median: a resample repeats ~37% of its rows, which biases its FD upwards, so the raw percentile interval sits
    above the estimate (at 2048-d often entirely); the spread is what another draw of n images moves the number
    by (coverage checked in the tests). It covers the sampling of the n images, not other seeds or weights.
    """
    n = feats_ND.shape[0]
    fd = resampled_fd(feats_ND, mu_ref, sigma_ref, device)
    est = metrics.frechet_distance(*metrics.gaussian_stats(feats_ND), mu_ref, sigma_ref)
    rng = np.random.default_rng(seed)
    boot = np.array([fd(rng.multinomial(n, np.full(n, 1.0 / n))) for _ in range(resamples)])
    a = (1 - level) / 2
    q_lo, med, q_hi = np.quantile(boot, [a, 0.5, 1 - a])
    return intervals.Interval(float(max(0.0, est - (med - q_lo))), float(est + (q_hi - med)), n,
                              "feature-bootstrap-centred")


def score(feats: np.ndarray, logits: np.ndarray | None, mu_r: np.ndarray, sigma_r: np.ndarray, resamples: int,
          is_splits: int, device: str = "cpu") -> dict[str, Any]:
    """FID (the shared ``metrics.frechet_distance``), its interval, and the Inception score of the logits."""
    if feats.shape[1] != mu_r.shape[0]:
        raise UsageError(f"reference statistics are {mu_r.shape[0]}-d but the features are {feats.shape[1]}-d "
                         "(another feature network?)")
    mu, sigma = metrics.gaussian_stats(feats)
    ci = fid_interval(feats, mu_r, sigma_r, resamples, device=device)
    is_mean, is_std = inception_score(logits, is_splits) if logits is not None else (None, None)
    return {"fid": metrics.frechet_distance(mu, sigma, mu_r, sigma_r), **ci.fields(), "resamples": resamples,
            "is_mean": is_mean, "is_std": is_std, "is_splits": is_splits, "feature_dim": int(feats.shape[1])}


# ---- the run ----------------------------------------------------------------------------------------------------
def run_fid(cfg: FidConfig, out_dir: str | os.PathLike, extractor: Extractor | None = None,
            dist: Dist | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Generate the missing shards of every configuration (this rank's share), then, on rank 0 once all shards
    exist, score them: rows appended to ``out_dir/fid.jsonl``; a configuration whose row exists is skipped.

    ``extractor`` defaults to the Inception of ``cfg.inception_weights``. Returns {"rows": finished rows,
    "incomplete": [{method, missing, shards}]}: ``max_shards`` cut the generation short (or, without torchrun,
    another process's shards are not there yet); a rerun continues from the shards on disk."""
    from varbench.measuring import analytic
    from varbench.target import load_pipeline

    dist = dist or Dist()
    spec = resolve_spec(cfg.model)
    n = check_config(cfg, spec)
    if extractor is None:
        if not cfg.inception_weights:          # before hours of generation, not after
            raise UsageError(NEEDS_WEIGHTS)
        if not have_torch_fidelity():
            raise UsageError("FID needs the optional extra torch-fidelity: pip install torch-fidelity")
        ext_id = (metrics.INCEPTION_NAME, _file_label(cfg.inception_weights))
    else:
        ext_id = (extractor.name, extractor.weights)
    confs = configurations(cfg, spec)
    target = cfg.target(dist.local_rank)
    device = torch.device(target.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = resolve_weights(target)            # random weights only with allow_random: FID of noise is no number
    ref_label = _ref_label(cfg.ref)
    gen_base = {"model": spec.name, "weights": weights.label, "n": n, "classes": spec.num_classes,
                "cfg": float(cfg.cfg), "top_k": int(cfg.top_k), "top_p": float(cfg.top_p), "seed": cfg.seed,
                "batch": cfg.batch, "shard_images": cfg.shard_images, "dtype": target.dtype, "device": device.type}
    scoring = {"ref": ref_label, "extractor": ext_id[0], "extractor_weights": ext_id[1],
               "resamples": cfg.resamples, "is_splits": cfg.is_splits}
    rows_path = out / ROWS_FILE
    if dist.rank == 0:
        results.write_manifest(out, {"kind": "fid", "config": _config_dict(cfg, spec), "world_size": dist.world})
    pipe, base_plan, ext, ref_stats = None, None, extractor, None
    finished, incomplete = [], []
    for conf in confs:
        gen = {**gen_base, "method": conf.canonical()}
        key = results.row_key({**gen, **scoring}, KEY_FIELDS)
        done = next((r for r in results.read_rows(rows_path, ROWS_FILE)
                     if r.get("kind") == "fid" and results.row_key(r, KEY_FIELDS) == key), None)
        if done is not None:
            finished.append(done)
            continue
        samples_dir = out / SAMPLES_DIR / f"{spec.name}-{_hash(gen)}"
        samples_dir.mkdir(parents=True, exist_ok=True)
        if dist.rank == 0:
            results.atomic_write_text(samples_dir / "meta.json", json.dumps(gen, indent=2, sort_keys=True) + "\n")
        refiner_label = None
        if missing_shards(samples_dir, n, cfg.shard_images, dist):
            if pipe is None:
                pipe = load_pipeline(target, weights)
                base_plan = pipe.plan
            refiner_label = _apply_method(pipe, base_plan, conf, target)
            results.atomic_write_text(samples_dir / "plan.json", json.dumps(pipe.plan.as_dict(), sort_keys=True))
            generate_shards(pipe, conf, gen, samples_dir, dist, cfg.max_shards, progress)
        dist.barrier()
        if dist.rank != 0:
            continue
        missing = missing_shards(samples_dir, n, cfg.shard_images)
        if missing:
            incomplete.append({"method": gen["method"], "missing": len(missing),
                               "shards": len(shard_ranges(n, cfg.shard_images))})
            continue
        if ext is None:
            ext = inception_extractor(str(device), cfg.inception_weights)
        t0 = time.perf_counter()
        if ref_stats is None:
            ref_stats = reference(cfg.ref, ext, out)
        mu_r, sigma_r, _, ref_n = ref_stats
        if progress:
            progress("features", 0, 1, {"method": gen["method"]})
        feats, logits = shard_features(samples_dir, n, cfg.shard_images, ext)
        scored = score(feats, logits, mu_r, sigma_r, cfg.resamples, cfg.is_splits, str(device))
        depth, switch, select = conf.descriptor()
        schedule = conf.schedule()
        plan_file = samples_dir / "plan.json"
        row = {"kind": "fid", **gen, **scoring,
               "protocol": protocol(n, spec.num_classes, cfg.cfg, cfg.top_k, cfg.top_p),
               "per_class": n / spec.num_classes, "image_size": spec.image_size, "depth": depth, "switch": switch,
               "select": select, "layers": list(conf.layers()), "schedule": schedule.describe(),
               "method_params": conf.params(),
               "kv_bytes": analytic.kv_peak_bytes(spec, schedule, batch=1, dtype=torch.bfloat16),
               "flops": analytic.flops(spec, schedule, batch=1, cfg=True), "ref_n": ref_n, **scored,
               "plan": json.loads(plan_file.read_text()) if plan_file.exists() else None,
               "samples_dir": str(samples_dir.relative_to(out)), "stats_seconds": time.perf_counter() - t0,
               "world_size": dist.world}
        if conf.refiner():
            row["refiner_weights"] = refiner_label or _refiner_weights(conf, target).label
        if weights.notice:
            row["weights_notice"] = weights.notice
        results.append_row(rows_path, row)
        finished.append(row)
        if progress:
            progress("done", 1, 1, row)
    return {"rows": finished, "incomplete": incomplete}


def _file_label(path: str | os.PathLike) -> str:
    return f"file:{Path(path).name}@{file_sha256(path)[:12]}"


def _ref_label(ref: str) -> str:
    """npz:<file>@sha256 for statistics, folder:<name>@<sha256 over the images' names and contents>."""
    p = Path(ref)
    if str(ref).endswith(".npz"):
        return f"npz:{p.name}@{file_sha256(p)[:12]}"
    return f"folder:{p.name}@{_folder_content(p)[1]}"


def _folder_content(p: Path) -> tuple[list[Path], str]:
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in metrics.IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"--ref: no images ({', '.join(metrics.IMAGE_SUFFIXES)}) under {p}")
    return files, _hash([(str(f.relative_to(p)), file_sha256(f)) for f in files])


def _refiner_weights(conf: Any, target: ModelTarget) -> Any:
    return resolve_weights(dataclasses.replace(target, model=conf.refiner(), ckpt=None, vae=None))


def _apply_method(pipe: Any, base_plan: Any, conf: Any, target: ModelTarget) -> str | None:
    """The configuration's plan fields (and the code method's refiner) on the pipeline, as the sweep worker
    applies them; from the plan the pipeline was loaded with, so one configuration's fields never leak into the
    next. Returns the refiner's weights label."""
    from varbench.target import load_pipeline

    label = None
    pipe.set_refiner(None)
    if conf.refiner():
        rw = _refiner_weights(conf, target)
        pipe.set_refiner(load_pipeline(dataclasses.replace(target, model=conf.refiner(), ckpt=None, vae=None),
                                       rw).var)
        label = rw.label
    pipe.set_plan(base_plan.replace(**conf.plan_changes(), **({"cuda_graphs": False} if conf.refiner() else {})))
    return label


def _config_dict(cfg: FidConfig, spec: Any) -> dict:
    from varbench.target import portable_config

    d = portable_config(dataclasses.asdict(cfg))
    d["model"] = spec.name
    for k in ("ref", "inception_weights"):
        if d.get(k):
            d[k] = Path(str(d[k])).name
    return d
