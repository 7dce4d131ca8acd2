"""AdamW with the official VAR parameter groups and the "lin0" learning-rate schedule (VAR_REFERENCE §6).

Peak lr = tblr · global_batch / 256; linear warm-up from wp0·peak; then flat at peak for ``flat_frac`` of the
post-warm-up iterations and a linear decay to wpe·peak at the last iteration. ``lr_at`` is a pure function so the
schedule is testable and a resumed run recomputes exactly the same value for every iteration.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

# Substrings that put a parameter in the no-decay group (official trainer's list).
NO_DECAY_KEYS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
                 "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")


def peak_lr(tblr: float, global_batch: int) -> float:
    """Linear scaling rule of the official trainer: tblr is the lr for a global batch of 256."""
    return tblr * global_batch / 256


def no_decay(name: str, param: torch.Tensor) -> bool:
    """1-D tensors, biases and the embedding/scale names of NO_DECAY_KEYS skip weight decay."""
    return param.ndim <= 1 or name.endswith("bias") or any(k in name for k in NO_DECAY_KEYS)


def param_groups(named_params: Iterable[tuple[str, torch.Tensor]], weight_decay: float) -> list[dict]:
    """Two groups: decayed (weights, class_emb.weight) and not decayed; frozen params are left out."""
    decay, skip, decay_names, skip_names = [], [], [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        name = _strip_wrapper_prefix(name)
        if no_decay(name, p):
            skip.append(p)
            skip_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    log.debug("weight decay on %d tensors, off on %d", len(decay), len(skip))
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": skip, "weight_decay": 0.0, "names": skip_names},
    ]


def _strip_wrapper_prefix(name: str) -> str:
    for prefix in ("module.", "_fsdp_wrapped_module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


def build_adamw(model: nn.Module, lr: float, weight_decay: float = 0.05,
                betas: tuple[float, float] = (0.9, 0.95), fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW(betas 0.9/0.95), fused on CUDA (the official ``--afuse``), decay only on the decay group."""
    groups = [{k: v for k, v in g.items() if k != "names"}
              for g in param_groups(model.named_parameters(), weight_decay)]
    if fused is None:
        fused = any(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


def lr_at(it: int, total_iters: int, warmup_iters: int, peak: float, wp0: float = 0.005, wpe: float = 0.01,
          flat_frac: float = 0.05) -> float:
    """Learning rate at iteration ``it`` (0-based) of ``total_iters``: warm-up, flat, linear decay ("lin0")."""
    if total_iters <= 0:
        raise ValueError(f"total_iters must be positive, got {total_iters}")
    warmup_iters = max(0, min(int(warmup_iters), total_iters - 1))
    if it < warmup_iters:
        return peak * (wp0 + (1.0 - wp0) * it / warmup_iters)
    span = total_iters - 1 - warmup_iters
    passed = 1.0 if span <= 0 else min(1.0, (it - warmup_iters) / span)
    if passed < flat_frac:
        return peak
    rest = (1.0 - passed) / (1.0 - flat_frac)
    return peak * (wpe + (1.0 - wpe) * rest)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
