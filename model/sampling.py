"""Token sampling: top-k then top-p (the official order), drawn by Gumbel-max.

Gumbel-max with the noise drawn over the whole vocabulary from an explicit generator is distributed exactly like a
multinomial draw, and couples two runs: the same seed under two schedules whose distributions agree gives the same
tokens. top-k uses ``torch.topk`` (no full sort of the vocabulary); top-p runs on the k survivors.
"""
from __future__ import annotations

import torch

from .kernels import PLAIN_KERNELS, Kernels


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
                 kernels: Kernels = PLAIN_KERNELS) -> torch.Tensor:
    return kernels.gumbel(torch.rand(shape, generator=generator, device=device, dtype=torch.float32))


def top_p_keep(sorted_logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep mask over logits sorted descending: keep while the mass strictly above an entry is < top_p.

    Equivalent to the official rule (sort ascending, drop entries whose cumulative mass <= 1 − top_p, always keep
    the largest).
    """
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs
    keep = mass_above < top_p
    keep[..., 0] = True
    return keep


def sample_tokens(logits_BlV: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator,
                  kernels: Kernels = PLAIN_KERNELS) -> torch.Tensor:
    """One token per position, (B, l) int64. ``top_k=1`` is greedy and draws no noise."""
    if top_k == 1:
        return logits_BlV.argmax(dim=-1)
    V = logits_BlV.shape[-1]
    noise_BlV = gumbel_noise(tuple(logits_BlV.shape), generator, logits_BlV.device, kernels)
    if 0 < top_k < V:
        vals, ids = logits_BlV.topk(top_k, dim=-1, sorted=True)
    elif 0 < top_p < 1:
        vals, ids = logits_BlV.sort(dim=-1, descending=True)
    else:
        return (logits_BlV + noise_BlV).argmax(dim=-1)
    if 0 < top_p < 1:
        vals = vals.masked_fill(~top_p_keep(vals, top_p), -torch.inf)
    choice = (vals + noise_BlV.gather(-1, ids)).argmax(dim=-1, keepdim=True)
    return ids.gather(-1, choice).squeeze(-1)
