"""The per-scale transformer step of cached generation, behind one interface with two implementations.

``VARPipeline.generate`` has one loop body; what runs each scale's blocks and head is a ``ScaleStep``:
``EagerStep`` here (the blocks run as Python calls against a schedule-sized KV cache that frees skipped blocks),
``CollaborativeStep`` (a drafter model, then a refiner: the code method) or ``model.cuda_graphs.GraphedScales``
(captured per-scale graphs whose captures free and regrow the cache as the eager step does).
Hooks, sampling and the next-scale input are the loop's, so both paths fire the same hooks in the same order.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .kernels import Kernels, kernels_for
from .kv_cache import KVCache
from .plan import InferencePlan
from .schedule import DepthSchedule


class ScaleLogits(Protocol):
    """One scale's output; logits are produced on demand for batch chunks, so the float32 logits of a large
    batch never exist all at once (1.4 GB at d30 batch 64) on the eager path."""

    def rows(self) -> int:
        """Tokens per row at this scale (pn²)."""

    def pair(self, b0: int, b1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(conditional, unconditional) float32 logits (b1 − b0, pn², V) of images b0..b1; unconditional is None
        on a scale that runs without guidance."""


class ScaleStep(Protocol):
    """Runs the transformer for one scale of one generation (CFG rows: 2·batch)."""

    cache: KVCache

    def start(self, cond_BD: torch.Tensor, labels_2B: torch.Tensor | None = None) -> None:
        """A new generation with class embeddings ``cond_BD`` (2B, C) of ``labels_2B`` (conditional rows, then the
        null class)."""

    def begin_scale(self, si: int) -> None:
        """Before scale ``si``'s hooks: the cache holds what the scale needs."""

    def input_buffer(self, si: int) -> torch.Tensor | None:
        """Where the loop writes scale ``si``'s input rows (a graph's static input), or None: a new tensor."""

    def run(self, si: int, x_BlC: torch.Tensor, latent_BlCv: torch.Tensor | None = None) -> ScaleLogits:
        """The blocks of scale ``si`` on its input (2B, pn², C) float32, then the head. ``latent_BlCv``: the VQ-VAE
        latent the input was embedded from (None at scale 0), for steps that embed with another model."""

    def finish(self) -> None:
        """After the last scale (the eager cache frees its buffers; a graphed one keeps its pool for the next call)."""


class HiddenLogits:
    """The final hidden state of a scale; the head runs on batch chunks when asked."""

    def __init__(self, var, h_2BlC: torch.Tensor, cond_BD: torch.Tensor, kernels: Kernels, batch: int):
        self.var, self.h, self.cond, self.kernels, self.batch = var, h_2BlC, cond_BD, kernels, batch

    def rows(self) -> int:
        return self.h.shape[1]

    def pair(self, b0: int, b1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        B = self.batch
        if self.h.shape[0] == B:                 # no guidance at this scale: conditional rows only
            return self.var.get_logits(self.h[b0:b1], self.cond[b0:b1], self.kernels), None
        rows = torch.cat((self.h[b0:b1], self.h[B + b0:B + b1]))
        cond = torch.cat((self.cond[b0:b1], self.cond[B + b0:B + b1]))
        return self.var.get_logits(rows, cond, self.kernels).chunk(2)


class FullLogits:
    """Logits (2B, pn², V) that exist already (a graph's static output)."""

    def __init__(self, logits_2BlV: torch.Tensor, batch: int):
        self.logits, self.batch = logits_2BlV, batch

    def rows(self) -> int:
        return self.logits.shape[1]

    def pair(self, b0: int, b1: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        B = self.batch
        if self.logits.shape[0] == B:
            return self.logits[b0:b1], None
        return self.logits[b0:b1], self.logits[B + b0:B + b1]


class EagerStep:
    """The blocks as Python calls; the KV cache reallocates at the schedule's segment boundaries."""

    def __init__(self, var, schedule: DepthSchedule, batch: int, dtype: torch.dtype, device: torch.device,
                 plan: InferencePlan, keep_skipped: bool = False, k_dtype: torch.dtype | None = None):
        self.var, self.schedule = var, schedule
        self.kernels = kernels_for(plan)
        self.cache = KVCache(var.spec, schedule, batch, dtype, device, keep_skipped=keep_skipped, k_dtype=k_dtype,
                             plan=plan)
        self.batch = batch
        self.cond_BD: torch.Tensor | None = None
        self.mods: dict | None = None
        self.mods_cond: dict | None = None

    def start(self, cond_BD: torch.Tensor, labels_2B: torch.Tensor | None = None) -> None:
        self.cond_BD = cond_BD
        self.mods = self.var.modulations(self.var.cond_for_blocks(cond_BD), self.schedule.used_blocks())
        self.mods_cond = None                          # the conditional rows' slices, built at the first unguided scale

    def begin_scale(self, si: int) -> None:
        self.cache.begin_scale(si)

    def input_buffer(self, si: int) -> None:
        return None

    def run(self, si: int, x_BlC: torch.Tensor, latent_BlCv: torch.Tensor | None = None) -> ScaleLogits:
        guided = x_BlC.shape[0] != self.batch          # guidance-skip scales carry the conditional rows only
        if not guided and self.mods_cond is None:
            self.mods_cond = {b: tuple(m[:self.batch] for m in mod) for b, mod in self.mods.items()}
        mods, cond = (self.mods, self.cond_BD) if guided else (self.mods_cond, self.cond_BD[:self.batch])
        h_BlC = self.var.step(x_BlC, mods, self.schedule.layers[si], self.cache)
        return HiddenLogits(self.var, h_BlC, cond, self.kernels, self.batch)

    def finish(self) -> None:
        self.cache.release()
        self.cond_BD = self.mods = self.mods_cond = None


class CollaborativeStep:
    """CoDe-style collaborative decoding: the drafter (the pipeline's model) runs scales < ``refine_from``, then
    the refiner (another spec sharing the VQ-VAE, the scales and the classes) takes over. At the hand-over the
    drafter's cache is freed and the refiner's is prefilled by running its blocks over the drafted scales'
    inputs, built with the refiner's own embeddings from the same VQ-VAE latents. Eager only."""

    def __init__(self, drafter, refiner, refine_from: int, batch: int, dtype: torch.dtype, device: torch.device,
                 plan: InferencePlan, keep_skipped: bool = False, k_dtype: torch.dtype | None = None):
        self.N, self.batch, self.plan = refine_from, batch, plan
        self.drafter = EagerStep(drafter, DepthSchedule.prefix(drafter.spec, refine_from), batch, dtype, device,
                                 plan, keep_skipped, k_dtype)
        self.refiner = EagerStep(refiner, DepthSchedule.full(refiner.spec), batch, dtype, device, plan,
                                 keep_skipped, k_dtype)
        self.latents: list[torch.Tensor | None] = []      # each drafted scale's VQ-VAE input (None at scale 0)
        self.labels_2B: torch.Tensor | None = None

    @property
    def cache(self):
        return self.drafter.cache if self._scale < self.N else self.refiner.cache

    def start(self, cond_BD: torch.Tensor, labels_2B: torch.Tensor | None = None) -> None:
        if labels_2B is None:
            raise ValueError("collaborative decoding needs the labels (the refiner embeds them itself)")
        self._scale, self.labels_2B, self.latents = 0, labels_2B, []
        self.drafter.start(cond_BD)
        self.refiner.start(self.refiner.var.class_emb(labels_2B))

    def _refiner_input(self, si: int, latent_BlCv: torch.Tensor | None) -> torch.Tensor:
        var = self.refiner.var
        lvl_pos_1LC = var.lvl_pos()
        if si == 0:
            cond = self.refiner.cond_BD
            return cond.float().unsqueeze(1) + var.pos_start.float() + lvl_pos_1LC[:, :1]
        b0, b1 = var.spec.begin_ends[si]
        x = var.embed_words(latent_BlCv) + lvl_pos_1LC[:, b0:b1]
        return x.repeat(2, 1, 1) if self.refiner.cache.rows_at(si) != self.batch else x

    def begin_scale(self, si: int) -> None:
        self._scale = si
        if si < self.N:
            self.drafter.begin_scale(si)
            return
        if si == self.N:                                  # hand-over: free the drafter, prefill the refiner
            self.drafter.cache.release()
            for s, latent in enumerate(self.latents):
                self.refiner.begin_scale(s)
                self.refiner.run(s, self._refiner_input(s, latent))
        self.refiner.begin_scale(si)

    def input_buffer(self, si: int) -> None:
        return None

    def run(self, si: int, x_BlC: torch.Tensor, latent_BlCv: torch.Tensor | None = None) -> ScaleLogits:
        if si < self.N:
            self.latents.append(latent_BlCv)
            return self.drafter.run(si, x_BlC)
        return self.refiner.run(si, self._refiner_input(si, latent_BlCv))

    def finish(self) -> None:
        self.drafter.finish()
        self.refiner.finish()
        self.latents = []
