"""Trainer for the toy multi-scale VQ-VAE (``varbench train --stage vqvae``): the tokenizer the toy VAR is trained on.

Loss = reconstruction (L1 or MSE on [−1,1] images) + vq_weight · the quantizer's VQ loss (VAR_REFERENCE §4); AdamW;
codebook entries whose usage EMA falls below a threshold are restarted from encoder outputs every ``restart_every``
steps (otherwise a small codebook collapses to a handful of codes). Single process; the data order is the trainer's
seeded epoch permutation, so a run is reproducible from its seed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt_io
from .. import spec as spec_mod
from . import data as data_mod

log = logging.getLogger(__name__)


@dataclass
class VQVAETrainConfig:
    model: str = "var-toy"               # the VQ-VAE of this spec (and its patch_nums) is trained
    data: str = "synthetic"
    synthetic_size: int = 20_000
    steps: int = 2000
    batch: int = 32
    lr: float = 3e-4
    wd: float = 0.0
    recon: str = "l1"                    # l1 | mse
    vq_weight: float = 1.0
    restart_every: int = 100             # 0 -> never
    restart_threshold: float = 1e-3
    grad_clip: float = 1.0
    log_every: int = 50
    seed: int = 0
    out: str = "runs/vqvae"
    device: str = "auto"
    workers: int = 0

    def validate(self) -> "VQVAETrainConfig":
        spec_mod.get(self.model)
        if self.recon not in ("l1", "mse"):
            raise ValueError(f"recon loss {self.recon!r} is not one of l1, mse")
        for name in ("steps", "batch", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data != "synthetic" and not Path(self.data).expanduser().is_dir():
            raise ValueError(f"data folder {self.data} does not exist (give an ImageNet-layout folder or 'synthetic')")
        return self


def _batches(n: int, cfg: VQVAETrainConfig):
    """Endless (epoch, batch) stream over the seeded epoch permutations."""
    epoch = 0
    while True:
        for b in data_mod.rank_batches(n, cfg.batch, cfg.seed, epoch, 0, 0, 1):
            yield epoch, b
        epoch += 1


def train_vqvae(cfg: VQVAETrainConfig, on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train; write ``vae.safetensors`` (official key names) + ``vae.json`` (config, steps, final losses) in out."""
    from varbench.target import resolve_device
    from ..vqvae import VQVAE

    cfg.validate()
    spec = spec_mod.get(cfg.model)
    device = torch.device(resolve_device(cfg.device, local_rank=0))
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    train_ds, _ = data_mod.build_datasets(cfg.data, spec.image_size, spec.num_classes, spec.patch_nums, cfg.seed,
                                          cfg.synthetic_size, val_size=0)
    if len(train_ds) < cfg.batch:
        raise ValueError(f"the data set has {len(train_ds)} images, fewer than one batch of {cfg.batch}")
    torch.manual_seed(cfg.seed)
    vae = VQVAE(spec.vae, spec.patch_nums).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.wd)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    keyed = data_mod.EpochKeyed(train_ds)
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    row: dict[str, Any] = {}
    t0 = t_log = time.perf_counter()
    since = 0
    stream = _batches(len(train_ds), cfg)
    for step in range(1, cfg.steps + 1):
        epoch, keys = next(stream)
        img = torch.stack([keyed[k][0] for k in keys]).to(device)
        recon, vq_loss, info = vae(img)
        rec = F.l1_loss(recon, img) if cfg.recon == "l1" else F.mse_loss(recon, img)
        loss = rec + cfg.vq_weight * vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        restarted, since = 0, since + 1
        if cfg.restart_every and step % cfg.restart_every == 0:
            with torch.no_grad():
                restarted = vae.restart_dead_codes(vae.encode(img), cfg.restart_threshold, gen)
        if step % cfg.log_every == 0 or step == cfg.steps or step == 1:
            dt = time.perf_counter() - t_log
            row = {"kind": "vqvae", "model": spec.name, "step": step, "total_steps": cfg.steps, "epoch": epoch,
                   "loss": loss.item(), "recon_loss": rec.item(), "vq_loss": vq_loss.item(),
                   "usage": info["usage_S"].mean().item(), "perplexity": info["perplexity_S"].mean().item(),
                   "restarted": restarted, "images_per_s": cfg.batch * since / dt}
            with metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if on_log:
                on_log(row)
            t_log, since = time.perf_counter(), 0
    vae.eval()
    ckpt_io.save_safetensors(vae, out / "vae.safetensors", {"model": spec.name, "steps": str(cfg.steps)})
    result = {"config": dataclasses.asdict(cfg), "steps": cfg.steps, "final": row,
              "wall_s": time.perf_counter() - t0, "weights": str(out / "vae.safetensors")}
    (out / "vae.json").write_text(json.dumps(result, indent=2))
    return result
