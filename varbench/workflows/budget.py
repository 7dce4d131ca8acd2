"""Memory budgets before large allocations: an analytic estimate of what a run needs against what the device has.

Without this, ``train --model var-d30 --stage vqvae --device cpu`` grows until the kernel kills it, silently. The
estimates are upper-bound-ish sums of the analytic sizes (``varbench.measuring.analytic``: parameters, KV cache)
and of the activations the backward pass keeps; they decide only whether a run can fit at all, so they err high.
The CLI's ``--no-memory-check`` skips the refusal (an estimate can be wrong; the user may know better).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varbench.errors import UsageError

GiB = 1024 ** 3
HEADROOM = 0.9                  # of the available memory a run may plan to use
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Estimate:
    """What a run needs on one device: named parts in bytes, and the device they live on."""

    what: str
    device: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in self.parts.items() if v >= GiB // 20)
        return f"{self.what} needs about {self.total / GiB:.1f} GiB ({parts or 'all parts small'}; GiB, analytic)"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_limit() -> int | None:
    """The memory limit of this container (cgroup v2, else v1), minus what it already uses; None if unlimited."""
    for limit_f, used_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                             "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_f).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                return None
            return int(raw) - int(Path(used_f).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def available_bytes(device: str) -> int | None:
    """Free memory of ``device`` (cpu: MemAvailable, capped by the cgroup limit; cuda[:N]: the driver's free
    bytes); None when it cannot be read (the check is then skipped)."""
    if device.startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except Exception:  # noqa: BLE001 - no driver info: no check
            return None
    vals = [v for v in (_meminfo_available(), _cgroup_limit()) if v is not None]
    return min(vals) if vals else None


def check_fits(est: Estimate, command: str, skip: bool = False) -> None:
    """A UsageError (exit 2) with the estimate when it cannot fit the device's available memory (``skip``: the
    user's ``--no-memory-check``)."""
    if skip:
        return
    avail = available_bytes(est.device)
    if avail is None or est.total <= HEADROOM * avail:
        return
    raise UsageError(f"{command}: {est.describe()}, but {est.device} has {avail / GiB:.1f} GiB available; "
                     f"lower --batch, choose a smaller --model or another device "
                     f"(--no-memory-check runs it anyway)")


# ---- estimates ---------------------------------------------------------------------------------------------
def _vae_activation_elems(vspec: Any, image_size: int) -> int:
    """Activation elements per image the VQ-VAE's backward keeps: per resolution level, ~8 tensors of its size
    per ResNet block (norm in/out, SiLU, conv out, twice), encoder blocks + decoder blocks (+1) + up/down."""
    total = 0
    for i, mult in enumerate(vspec.ch_mult):
        res = image_size // (2 ** i)
        per = vspec.ch * mult * res * res
        total += per * (8 * vspec.num_res_blocks + 8 * (vspec.num_res_blocks + 1) + 4)
    return total


def vqvae_train_estimate(cfg: Any) -> Estimate:
    """``train --stage vqvae``: fp32 weights, grads and AdamW moments (16 B/param) + kept activations."""
    from model import spec as spec_mod
    from varbench.measuring import analytic
    from varbench.target import resolve_device

    spec = spec_mod.get(cfg.model)
    p = analytic.vae_params(spec.vae, spec.num_scales)
    act = 4 * cfg.batch * _vae_activation_elems(spec.vae, spec.image_size)
    return Estimate(f"{spec.name} VQ-VAE training at batch {cfg.batch}", resolve_device(cfg.device, local_rank=0),
                    {"weights+grads+AdamW": 16 * p, "activations": act})


def train_estimate(cfg: Any) -> Estimate:
    """``train --stage var``: 16 B/param of the VAR (fp32 weights, grads, AdamW) + the frozen VQ-VAE + per-block
    activations of one rank's batch (all blocks, or one plus each block's input with --grad-checkpoint)."""
    from model import spec as spec_mod
    from varbench.measuring import analytic
    from varbench.target import resolve_device

    spec = spec_mod.get(cfg.model)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    b = max(1, cfg.batch // world)
    a = 2 if cfg.precision in ("bf16", "fp16") else 4
    L, C = spec.L, spec.width
    per_block = b * L * (14 * C + 2 * spec.mlp_hidden) * a + b * spec.heads * L * L * a   # attention weights
    kept = per_block * spec.depth if not cfg.grad_checkpoint else per_block + b * L * C * 4 * spec.depth
    logits = 3 * b * L * spec.vae.vocab_size * 4
    params = 16 * analytic.params(spec) // (world if cfg.fsdp else 1)
    device = resolve_device(cfg.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return Estimate(f"{spec.name} training at batch {b} per process", device,
                    {"weights+grads+AdamW": params, "VQ-VAE": 4 * analytic.vae_params(spec.vae, spec.num_scales),
                     "activations": kept, "logits": logits})


def inference_estimate(spec: Any, batch: int, dtype: str, device: str, from_file: bool, what: str) -> Estimate:
    """One generation (sweep point, trace): weights built in fp32 then cast on the CPU (plus the loaded state
    dict when read from a file), the full network's KV cache with CFG (the largest any depth needs), the last
    scale's logits, the VQ-VAE and its decoder's widest activations."""
    from varbench.measuring import analytic

    import torch

    p = analytic.params(spec)
    if device.startswith("cuda"):        # built (and loaded) on the host; the device holds the cast copy only
        build = DTYPE_BYTES[dtype] * p
    else:
        build = 4 * p * (2 if from_file else 1) + (DTYPE_BYTES[dtype] * p if dtype != "fp32" else 0)

    kv = analytic.kv_peak_bytes(spec, None, batch, {"bf16": torch.bfloat16, "fp16": torch.float16,
                                                   "fp32": torch.float32}[dtype])
    logits = 2 * 2 * batch * spec.tokens[-1] * spec.vae.vocab_size * 4
    top = spec.vae.ch * max(spec.vae.ch_mult[:1]) * spec.image_size ** 2      # the decoder's widest tensor
    decode = 3 * 4 * batch * top                                             # no grad: ~3 alive at once
    return Estimate(what, device, {"weights": build, "KV cache": kv, "logits": logits,
                                   "VQ-VAE": 4 * analytic.vae_params(spec.vae, spec.num_scales) + decode})
