"""Static, schedule-sized KV cache for cached generation (no per-scale ``torch.cat`` growth).

Each block holds exactly the tokens it processes under the schedule. Allocation plan (docs/interfaces.md):
release scales R = {last active scale of each block that stops before the last scale} (empty with
``keep_skipped``); between release scales a segment begins, released blocks' buffers are dropped and every live
block holds capacity for all tokens it processes up to the segment's end. A full schedule is therefore one static
allocation; VARiant(d, N) reallocates once, at the switch, after freeing the skipped blocks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedule import DepthSchedule
from .spec import VARSpec


def segment_ends(spec: VARSpec, schedule: DepthSchedule, keep_skipped: bool) -> list[int]:
    """Last scale of each allocation segment (sorted, always ends with S−1)."""
    S = spec.num_scales
    releases = set()
    if not keep_skipped:
        for b in range(spec.depth):
            last = schedule.last_active(b)
            if 0 <= last < S - 1:
                releases.add(last)
    return sorted(releases | {S - 1})


KV_LAYOUTS = ("head", "token")
KV_LAYOUT = "head"      # the default memory layout of new caches (see KVCache)


class KVCache:
    """Per-block K/V buffers seen as (rows, H, capacity, head_dim); rows = 2·batch with CFG.

    ``layout`` is the memory behind that view. "head" (the default) is that shape, contiguous. "token" is
    (rows, capacity, H, head_dim) memory, transposed: then an append is one contiguous block per row, where the
    (B, H, l, c) views of the projections otherwise need a strided copy (32 ms of a d30 batch-64 generation on the
    H100, ~2.4x what its bytes need). Attention reads FlashAttention's native layout. It is an option, not the
    default, because its speed has not been measured on a GPU yet (docs/speed_notes.md, session 3).
    """

    def __init__(self, spec: VARSpec, schedule: DepthSchedule, batch: int, dtype: torch.dtype,
                 device: torch.device | str, keep_skipped: bool = False, k_dtype: torch.dtype | None = None,
                 cfg: bool = True, layout: str | None = None):
        self.layout = layout or KV_LAYOUT
        if self.layout not in KV_LAYOUTS:
            raise ValueError(f"KV layout {self.layout!r} is not one of {', '.join(KV_LAYOUTS)}")
        self.spec, self.schedule = spec, schedule.validate(spec)
        self.rows = batch * (2 if cfg else 1)
        self.dtype, self.k_dtype = dtype, (k_dtype or dtype)
        self.device, self.keep_skipped = torch.device(device), keep_skipped
        self.seg_ends = segment_ends(spec, schedule, keep_skipped)
        D = spec.depth
        self.k: list[torch.Tensor | None] = [None] * D
        self.v: list[torch.Tensor | None] = [None] * D
        self.filled = [0] * D
        self.last = [schedule.last_active(b) for b in range(D)]
        self._segment = -1

    # ---- plan --------------------------------------------------------------------------------------------
    def capacity(self, block: int, upto_scale: int) -> int:
        """Tokens block processes at scales <= upto_scale."""
        return sum(self.spec.tokens[si] for si in self.schedule.active_scales(block) if si <= upto_scale)

    def _alive(self, block: int, si: int) -> bool:
        last = self.last[block]
        return last >= 0 and (self.keep_skipped or last >= si)

    def begin_scale(self, si: int) -> None:
        """Free blocks past their last scale and (re)allocate at the start of a segment."""
        seg = next(j for j, end in enumerate(self.seg_ends) if si <= end)
        if seg == self._segment:
            return
        self._segment = seg
        end = self.seg_ends[seg]
        for b in range(self.spec.depth):
            if not self._alive(b, si):
                self.k[b] = self.v[b] = None
        for b in range(self.spec.depth):
            if self._alive(b, si):
                self._grow(b, self.capacity(b, end))

    def _grow(self, b: int, cap: int) -> None:
        old_k, old_v = self.k[b], self.v[b]
        have = 0 if old_k is None else old_k.shape[2]
        if cap <= have:
            return
        new_k, new_v = self._empty(cap, self.k_dtype), self._empty(cap, self.dtype)
        n = self.filled[b]
        if old_k is not None and n:
            new_k[:, :, :n].copy_(old_k[:, :, :n])
            new_v[:, :, :n].copy_(old_v[:, :, :n])
        self.k[b] = self.v[b] = None
        del old_k, old_v
        self.k[b], self.v[b] = new_k, new_v

    def _empty(self, cap: int, dtype: torch.dtype) -> torch.Tensor:
        H, c = self.spec.heads, self.spec.head_dim
        if self.layout == "token":
            return torch.empty((self.rows, cap, H, c), dtype=dtype, device=self.device).transpose(1, 2)
        return torch.empty((self.rows, H, cap, c), dtype=dtype, device=self.device)

    # ---- use ---------------------------------------------------------------------------------------------
    def append(self, b: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this scale's K/V at the block's running offset; return views of everything cached so far."""
        n0 = self.filled[b]
        n1 = n0 + k_BHlc.shape[2]
        k_buf, v_buf = self.k[b], self.v[b]
        if k_buf is None or n1 > k_buf.shape[2]:
            raise RuntimeError(f"KV cache overflow in block {b}: begin_scale() was not called for this scale")
        k_buf[:, :, n0:n1].copy_(k_BHlc)
        v_buf[:, :, n0:n1].copy_(v_BHlc)
        self.filled[b] = n1
        return k_buf[:, :, :n1], v_buf[:, :, :n1]

    def attend_fn(self, b: int):
        def attend(q, k, v, scale):
            k_all, v_all = self.append(b, k, v)
            if k_all.dtype != q.dtype:
                k_all = k_all.to(q.dtype)
            return F.scaled_dot_product_attention(q, k_all, v_all, scale=scale)
        return attend

    def nbytes(self) -> int:
        """Bytes held by the cache's buffers right now."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def release(self) -> None:
        self.k = [None] * self.spec.depth
        self.v = [None] * self.spec.depth
