"""The progressive supernet training loop (VAR_REFERENCE §6 + VARIANT_PAPER "Training recipe").

One step: tokenise with the frozen VQ-VAE (fp32, no grad) unless the data is pre-tokenised; teacher forcing under
the step's depth schedule(s); cross-entropy averaged over all L tokens; grad clip; AdamW; lr set every iteration.

Exactness: every random draw is a function of (seed, step) or lives in a checkpointed RNG — data order
(``data.rank_batches``), class dropout (drawn here over the *global* batch, then sliced per rank), the global torch RNG
(re-seeded per step and rank; drop path uses it), the strategy's depth draws — so ``--resume`` reproduces the
uninterrupted run and W processes reproduce one process with the same global batch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import spec as spec_mod
from ..schedule import DepthSchedule
from . import data as data_mod
from . import distributed as dist_mod
from . import state as state_mod
from .optim import build_adamw, lr_at, peak_lr, set_lr
from .strategy import STRATEGIES, Strategy, StrategyConfig, valid_subnet_depths

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OFFICIAL_TBLR = 1e-4          # lr per 256 images of the official trainer, linearly scaled with the batch
SCRATCH_LR = 1e-3             # --init random: the recipe that trained var-toy (AdamW, batch 256) ...
SCRATCH_REF_BATCH = 256       # ... scaled by sqrt(batch / 256) below it, so a small batch still learns


def peak_lr_of(cfg: "TrainConfig") -> float:
    """--lr, else --tblr·batch/256, else a from-scratch lr for --init random (the official tblr at batch 16 is
    6e-6: a random model learns nothing in a short run) and the official tblr for an initialised model."""
    if cfg.lr is not None:
        return cfg.lr
    if cfg.tblr is not None:
        return peak_lr(cfg.tblr, cfg.batch)
    if cfg.init == "random":
        return SCRATCH_LR * min(1.0, cfg.batch / SCRATCH_REF_BATCH) ** 0.5
    return peak_lr(OFFICIAL_TBLR, cfg.batch)


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint so ``--resume`` needs nothing else."""

    model: str = "var-tiny"
    init: str = "random"                 # "random" or an official .pth / our .safetensors
    vae: str | None = None               # None: shipped toy VAE (var-toy), official file (HF cache), else random
    data: str = "synthetic"              # "synthetic", an ImageNet-layout folder or a pre-tokenised folder
    synthetic_size: int = 20_000
    val_size: int = 256
    strategy: str = "progressive"
    p: float = 0.2                       # fixed strategy
    p0: float = 0.2                      # progressive phase 1
    e1: float = 5.0
    e2: float = 15.0
    e3: float = 10.0
    depths: list[int] | None = None      # subnet depths; None -> {2,4,8,16} ∩ 2..D−1
    depth_weights: list[float] | None = None
    switch: int | None = None            # None -> round(0.6·S): the paper's 6 of 10 scales
    select: str = "isometric"
    distill: bool = False
    distill_weight: float = 1.0
    epochs: int | None = None            # None -> E1+E2+E3 (progressive) or 1
    batch: int = 16                      # global batch
    max_steps: int | None = None
    schedule_steps: int | None = None    # steps the lr schedule and phases span; None -> the run's own length
                                         # (max_steps compresses the epoch plan). A checkpoint keeps the value
                                         # it ran with, so --resume continues the same schedule
    lr: float | None = None              # absolute peak lr; None -> tblr·batch/256, or from scratch (below)
    tblr: float | None = None            # None -> 1e-4 (official) with --init FILE; from scratch: SCRATCH_LR
    wd: float = 0.05
    warmup: int | None = None            # iterations; None -> 2% of the run (the official ep/50)
    wp0: float = 0.005
    wpe: float = 0.01
    grad_clip: float = 2.0
    precision: str = "auto"              # auto = bf16 on CUDA, fp32 on CPU
    label_smoothing: float = 0.0
    cond_drop: float | None = None       # None -> spec.cond_drop_rate (0.1)
    drop_path: float | None = None       # None -> spec.drop_path_rate
    log_every: int = 10
    val_every: int = 0                   # 0 -> only at the end
    val_batches: int = 4
    save_every: int = 0                  # 0 -> only at the end
    save_final: bool = True              # False: no checkpoint at the end (benchmarks; d30 writes ~24 GB)
    seed: int = 0
    out: str = "runs/train"
    device: str = "auto"
    workers: int = 0
    fsdp: bool = False
    grad_checkpoint: bool = False        # recompute block activations in backward (d30 batch 32 on 80 GB)
    compile: bool = False                # torch.compile each block (CUDA; fuses the element-wise passes)
    resume: str | None = None            # a run folder: continue exactly from its checkpoint

    def validate(self) -> "TrainConfig":
        """Cheap checks before anything heavy: each failure is a one-line ValueError."""
        spec = spec_mod.get(self.model)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("batch", "log_every", "val_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "max_steps", "schedule_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing {self.label_smoothing} is outside [0, 1)")
        for name in ("cond_drop", "drop_path"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"{name} {v} is outside [0, 1)")
        if self.data != "synthetic" and not Path(self.data).expanduser().is_dir():
            raise ValueError(f"data folder {self.data} does not exist (give an ImageNet-layout folder or 'synthetic')")
        if self.init != "random" and not self.resume and not Path(self.init).expanduser().is_file():
            raise ValueError(f"--init file {self.init} does not exist (or use 'random')")
        if self.vae not in (None, "random") and not Path(self.vae).expanduser().is_file():
            raise ValueError(f"--vae file {self.vae} does not exist")
        Strategy(spec, self.strategy_config(), self.seed)        # validates p, depths, switch, ...
        return self

    def strategy_config(self) -> StrategyConfig:
        return StrategyConfig(self.strategy, self.p, self.p0, self.e1, self.e2, self.e3,
                              tuple(self.depths) if self.depths else None,
                              tuple(self.depth_weights) if self.depth_weights else None, self.switch_for(),
                              self.select)

    def switch_for(self) -> int:
        return self.switch if self.switch is not None else round(0.6 * spec_mod.get(self.model).num_scales)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Unknown keys are a ValueError naming them (a typo in train.toml must not be ignored)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(d) - names)
    if bad:
        raise ValueError(f"unknown training option(s): {', '.join(bad)}")
    return TrainConfig(**d)


# ---- building ---------------------------------------------------------------------------------------------------
def _build_models(cfg: TrainConfig, device: torch.device):
    """VAR (class dropout off inside: done by the loop over the global batch) and the frozen VQ-VAE."""
    from ..pipeline import VARPipeline

    spec = spec_mod.get(cfg.model)
    train_spec = dataclasses.replace(
        spec, cond_drop_rate=0.0,
        drop_path_rate=spec.drop_path_rate if cfg.drop_path is None else cfg.drop_path)
    pipe = VARPipeline.from_spec(train_spec, device="cpu", seed=cfg.seed)
    var, vae = pipe.var, pipe.vae
    if cfg.init != "random" and not cfg.resume:                 # a resumed run loads its checkpoint instead
        state_mod.load_init(var, cfg.init, f"VAR ({spec.name}) from --init")
    vae_path = cfg.vae
    if vae_path is None:          # the one weights resolution: shipped (var-toy), else official (HF cache / hub)
        from ..checkpoint import WeightsNotFound
        from ..pipeline import locate_weights

        try:
            vae_path = str(locate_weights(spec)[2])
        except WeightsNotFound:
            if spec.official:     # an official model trains on its published tokenizer or not at all
                raise
    if vae_path in (None, "random"):
        log.warning("VQ-VAE of %s has RANDOM weights: tokens are not meaningful images", spec.name)
    else:
        state_mod.load_init(vae, vae_path, "VQ-VAE")
    vae.requires_grad_(False)
    return spec, train_spec, var.to(device).train(), vae.to(device).eval(), vae_path or "random"


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def _tokens(batch, vae, device: torch.device, is_tokens: bool):
    """(labels_B, x_BLCv, gt_BL): VQ-VAE in fp32 outside autocast, like the official trainer."""
    first, labels = batch
    if is_tokens:
        idx_list = [t.to(device, non_blocking=True) for t in first]
    else:
        with torch.autocast(device.type, enabled=False):
            idx_list = vae.img_to_idx(first.to(device, non_blocking=True).float())
    x_BLCv = vae.quantize.idx_to_var_input(idx_list)
    return labels.to(device), x_BLCv, torch.cat(idx_list, dim=1)


def _class_dropout(labels_B: torch.Tensor, p: float, num_classes: int, seed: int, step: int, env) -> torch.Tensor:
    """Label -> num_classes (the CFG null class) with probability p, drawn over the global batch then sliced."""
    if p <= 0:
        return labels_B
    B = labels_B.shape[0]
    g = torch.Generator().manual_seed(seed * 2_654_435_761 + step)
    drop = (torch.rand(B * env.world, generator=g) < p)[env.rank * B:(env.rank + 1) * B].to(labels_B.device)
    return torch.where(drop, num_classes, labels_B)


def _ce(logits_BLV: torch.Tensor, gt_BL: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits_BLV.reshape(-1, logits_BLV.shape[-1]), gt_BL.reshape(-1),
                           label_smoothing=smoothing)


def _kl(student_BLV: torch.Tensor, teacher_BLV: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per token, averaged over tokens (in-place distillation, off by default)."""
    t = F.log_softmax(teacher_BLV.float(), -1)
    return (t.exp() * (t - F.log_softmax(student_BLV.float(), -1))).sum(-1).mean()


def _train_step(model, batch, plan, cfg: TrainConfig, ctx: dict, step: int) -> dict[str, Any]:
    """All passes of one step (earlier passes under no_sync, the full pass last), clip, optimizer step."""
    env, vae, opt, scaler = ctx["env"], ctx["vae"], ctx["opt"], ctx["scaler"]
    torch.manual_seed(cfg.seed * 1_000_003 + step * 7919 + env.rank)      # drop path: a function of (step, rank)
    labels_B, x_BLCv, gt_BL = _tokens(batch, vae, env.device, ctx["is_tokens"])
    labels_B = _class_dropout(labels_B, ctx["cond_drop"], ctx["spec"].num_classes, cfg.seed, step, env)
    teacher = None
    if cfg.distill and any(p.schedule is not None for p in plan.passes):
        with torch.no_grad(), _autocast(env.device, ctx["precision"]):
            teacher = model(labels_B, x_BLCv, schedule=None, checkpoint_blocks=cfg.grad_checkpoint).detach()
    losses, n = [], len(plan.passes)
    for k, p in enumerate(plan.passes):
        with dist_mod.no_sync(model, skip=k < n - 1):
            with _autocast(env.device, ctx["precision"]):
                logits_BLV = model(labels_B, x_BLCv, schedule=p.schedule, checkpoint_blocks=cfg.grad_checkpoint)
                loss = _ce(logits_BLV, gt_BL, cfg.label_smoothing)
                total = loss
                if teacher is not None and p.schedule is not None:
                    total = total + cfg.distill_weight * _kl(logits_BLV, teacher)
            scaler.scale(total / n).backward()
        losses.append(loss.detach())
    scaler.unscale_(opt)
    clip = getattr(model, "clip_grad_norm_", None) if cfg.fsdp else None
    params = [q for q in model.parameters() if q.grad is not None]
    grad_norm = clip(cfg.grad_clip) if clip else torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    if scaler.is_enabled() and scaler.get_scale() > 32768.0:             # official cap on the fp16 loss scale
        scaler.update(32768.0)
    opt.zero_grad(set_to_none=True)
    return {"losses": losses, "grad_norm": grad_norm.detach()}


@torch.no_grad()
def evaluate(model, val_ds, cfg: TrainConfig, ctx: dict) -> dict[str, float]:
    """Validation CE (no class dropout, no drop path) per schedule: the full net and each subnet depth."""
    spec, env = ctx["spec"], ctx["env"]
    net = model if cfg.fsdp else dist_mod.unwrap(model)
    net.eval()
    scheds: dict[str, tuple[int, DepthSchedule | None]] = {"full": (spec.depth, None)}
    for d in valid_subnet_depths(spec, cfg.depths):
        scheds[f"d{d}"] = (d, DepthSchedule.variant(spec, d, cfg.switch_for(), cfg.select))
    sums = {k: 0.0 for k in scheds}
    count = 0
    loader = data_mod.make_loader(val_ds, data_mod.fixed_batches(val_ds, cfg.batch, cfg.val_batches), 0, False)
    for batch in loader:
        labels_B, x_BLCv, gt_BL = _tokens(batch, ctx["vae"], env.device, ctx["is_tokens"])
        for name, (_, sched) in scheds.items():
            with _autocast(env.device, ctx["precision"]):
                logits = net(labels_B, x_BLCv, schedule=sched)
            sums[name] += _ce(logits, gt_BL, 0.0).item() * labels_B.shape[0]
        count += labels_B.shape[0]
    net.train()
    return {k: v / max(count, 1) for k, v in sums.items()} | {"_depths": {k: d for k, (d, _) in scheds.items()}}


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def train(cfg: TrainConfig, on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics. Rank 0 writes metrics.jsonl and checkpoints."""
    cfg.validate()
    env = dist_mod.init_distributed(cfg.device, force=cfg.fsdp)
    try:
        return _train(cfg, env, on_log)
    finally:
        dist_mod.cleanup(env)


def _train(cfg: TrainConfig, env, on_log) -> dict[str, Any]:
    out = Path(cfg.out).expanduser()
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if env.device.type == "cuda" else "fp32")
    spec, train_spec, var, vae, vae_path = _build_models(cfg, env.device)
    train_ds, val_ds = data_mod.build_datasets(cfg.data, spec.image_size, spec.num_classes, spec.patch_nums,
                                               cfg.seed, cfg.synthetic_size, cfg.val_size)
    is_tokens = bool(getattr(train_ds, "tokens", False))
    ipe = len(train_ds) // cfg.batch
    if ipe < 1:
        raise ValueError(f"the data set has {len(train_ds)} samples, fewer than one global batch of {cfg.batch}")
    if cfg.batch % env.world:
        raise ValueError(f"global batch {cfg.batch} is not divisible by {env.world} processes")
    strategy = Strategy(spec, cfg.strategy_config(), cfg.seed)
    epochs = cfg.epochs or (math.ceil(strategy.default_epochs) if cfg.strategy == "progressive" else 1)
    total = epochs * ipe
    stop = min(total, cfg.max_steps) if cfg.max_steps else total
    # --max-steps below the epoch plan compresses it: the lr schedule spans the steps that will run and the
    # progressive phases are laid over them in proportion, so a short run warms up, ramps p and finishes
    sched_steps = cfg.schedule_steps or stop
    if sched_steps < total and env.is_main and not cfg.resume:
        note = (f"{sched_steps} steps are fewer than the {total} of {epochs} epochs: the lr schedule and the "
                f"{cfg.strategy} phases are compressed to {sched_steps} steps")
        log.info(note)
        if on_log:
            on_log({"kind": "notice", "message": note})       # shown to the user, not a metrics row
    warmup = cfg.warmup if cfg.warmup is not None else round(sched_steps / 50)
    peak = peak_lr_of(cfg)

    def sched_epoch(step: int, ep_f: float) -> float:
        return ep_f if sched_steps == total else epochs * step / sched_steps

    step, epoch, start_batch = 0, 0, 0
    resumed = None
    if cfg.resume:
        model_sd, optim_sd, scaler_sd, meta = state_mod.load_checkpoint(cfg.resume, env.device)
        if meta["config"]["model"] != cfg.model:
            raise ValueError(f"checkpoint is for {meta['config']['model']}, not {cfg.model}")
        from ..checkpoint import load_strict

        load_strict(var, model_sd, "VAR (resume)")
        strategy.load_state_dict(meta["strategy"])
        step, epoch, start_batch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        resumed = (optim_sd, scaler_sd)
        log.info("resuming at step %d (epoch %d, batch %d)", step, epoch, start_batch)

    find_unused = dist_mod.needs_find_unused(spec, strategy.schedules.values())
    from ..var import AdaLNSelfAttn, compile_blocks

    if cfg.compile:
        compile_blocks(var)

    model = dist_mod.wrap_model(var, env, find_unused=find_unused, fsdp=cfg.fsdp, block_cls=AdaLNSelfAttn)
    opt = build_adamw(model, peak, cfg.wd)
    scaler = torch.amp.GradScaler(env.device.type, init_scale=2.0 ** 11, growth_interval=1000,
                                  enabled=precision == "fp16")
    if resumed:
        state_mod.load_optim_state(model, opt, resumed[0], cfg.fsdp)
        scaler.load_state_dict(resumed[1]) if resumed[1] else None
    ctx = {"env": env, "vae": vae, "opt": opt, "scaler": scaler, "spec": spec, "precision": precision,
           "is_tokens": is_tokens,
           "cond_drop": spec.cond_drop_rate if cfg.cond_drop is None else cfg.cond_drop}
    weights = cfg.init if cfg.init != "random" else "random"
    base = {"model": spec.name, "weights": weights, "vae": vae_path, "strategy": cfg.strategy}
    metrics = out / "metrics.jsonl"
    if env.is_main and not cfg.resume:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        metrics.unlink(missing_ok=True)

    def emit(row: dict) -> None:
        if env.is_main:
            _append(metrics, row)
            if on_log:
                on_log(row)

    def save() -> None:
        msd = state_mod.model_state(model, cfg.fsdp)
        osd = state_mod.optim_state(model, opt, cfg.fsdp)
        if env.is_main:
            meta = {"config": dataclasses.asdict(cfg) | {"schedule_steps": sched_steps}, "step": step, "epoch": epoch, "batch_in_epoch": start_batch,
                    "strategy": strategy.state_dict(), "total_steps": total, "schedule_steps": sched_steps}
            state_mod.save_checkpoint(out, msd, osd, scaler.state_dict(), meta)
        dist_mod.barrier(env)

    def validate_now() -> dict[str, float]:
        res = evaluate(model, val_ds, cfg, ctx)
        depths = res.pop("_depths")
        for name, loss in res.items():
            emit(base | {"kind": "val", "step": step, "epoch": round(epoch + start_batch / ipe, 4),
                         "schedule": name, "depth": depths[name], "loss": loss})
        return res

    last: dict[str, Any] = {}
    val_res: dict[str, float] = {}
    t_log, steps_since = time.perf_counter(), 0
    while step < stop and epoch < epochs:
        batches = data_mod.rank_batches(len(train_ds), cfg.batch, cfg.seed, epoch, start_batch, env.rank, env.world)
        loader = data_mod.make_loader(train_ds, batches, cfg.workers, env.device.type == "cuda")
        for bi, batch in enumerate(loader, start=start_batch):
            ep_f = epoch + bi / ipe
            lr = lr_at(step, sched_steps, warmup, peak, cfg.wp0, cfg.wpe)
            set_lr(opt, lr)
            plan = strategy.plan(sched_epoch(step, ep_f))
            res = _train_step(model, batch, plan, cfg, ctx, step)
            step, steps_since = step + 1, steps_since + 1
            epoch, start_batch = (epoch, bi + 1) if bi + 1 < ipe else (epoch + 1, 0)
            if step % cfg.log_every == 0 or step == stop or step == 1:
                vals = dist_mod.all_reduce_mean([float(torch.stack(res["losses"]).mean())] +
                                                [float(x) for x in res["losses"]], env)
                dt = time.perf_counter() - t_log
                last = base | {"kind": "train", "step": step, "total_steps": stop, "epoch": round(ep_f, 4),
                               "loss": vals[0], "lr": lr, "subnet_p": plan.subnet_p, "depth": plan.depth,
                               "pass_depths": [p.depth for p in plan.passes], "pass_losses": vals[1:],
                               "grad_norm": float(res["grad_norm"]), "images_per_s": cfg.batch * steps_since / dt}
                emit(last)
                t_log, steps_since = time.perf_counter(), 0
            if val_ds is not None and cfg.val_every and step % cfg.val_every == 0 and step < stop:
                val_res = validate_now()
            if cfg.save_every and step % cfg.save_every == 0 and step < stop:
                save()
            if step >= stop:
                break
    if val_ds is not None:
        val_res = validate_now()
    if cfg.save_final:
        save()
    return {"step": step, "epoch": epoch, "loss": last.get("loss"), "lr": last.get("lr"),
            "images_per_s": last.get("images_per_s"), "val": val_res, "out": str(out), "total_steps": total,
            "schedule_steps": sched_steps, "peak_lr": peak}
