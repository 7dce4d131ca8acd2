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
from torch.nn.attention import SDPBackend, sdpa_kernel

from .kernels import Kernels, kernels_for
from .plan import InferencePlan
from .schedule import DepthSchedule
from .spec import VARSpec


FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0          # largest finite e4m3 value
FP8_FIRST_WRITE = 224.0  # a block's first write maps each head's amax here: 2x headroom for later scales


def window_keeps(window: tuple[int, int] | None, kept_scale: int, si: int) -> bool:
    """Whether scale ``kept_scale``'s KV is still held (and attended to) at scale ``si`` under ``window``."""
    if window is None:
        return True
    anchors, recent = window
    return kept_scale < anchors or kept_scale > si - recent


def window_tokens(spec: VARSpec, active: tuple[int, ...], si: int, window: tuple[int, int] | None) -> int:
    """Tokens a block holds after writing scale ``si`` (``active``: the scales it processes)."""
    return sum(spec.tokens[s] for s in active if s <= si and window_keeps(window, s, si))


def segment_ends(spec: VARSpec, schedule: DepthSchedule, keep_skipped: bool, cfg_until: int | None = None
                 ) -> list[int]:
    """Last scale of each allocation segment (sorted, always ends with S−1). ``cfg_until``: scales from there on
    run without CFG, so (unless buffers are kept) a segment starts there and the buffers shrink to one row per
    image."""
    S = spec.num_scales
    releases = set()
    if not keep_skipped:
        for b in range(spec.depth):
            last = schedule.last_active(b)
            if 0 <= last < S - 1:
                releases.add(last)
        if cfg_until is not None and 0 < cfg_until < S:
            releases.add(cfg_until - 1)
    return sorted(releases | {S - 1})


class KVCache:
    """Per-block K/V buffers seen as (rows, H, capacity, head_dim); rows = 2·batch with CFG.

    ``plan`` (default: the plain plan) gives the memory behind that view and how attention runs over it.
    ``plan.kv_layout`` "token" (the default) is (rows, capacity, H, head_dim) memory,
    transposed: a scale's slots are one contiguous block per row, which the fused q/k-norm kernel writes unit k and
    v into directly (``CachedAttend.from_qkv_rows``), and attention reads FlashAttention's native layout. "head"
    is the (rows, H, capacity, c) shape contiguous; appends are then strided copies from the projections (32 ms
    of a d30 batch-64 generation on the H100, ~2.4x what their bytes need). docs/performance.md, "The fast path".

    ``plan.cfg_until`` (guidance-skip): from that scale on only the conditional rows run; the views shrink to them
    and, unless ``keep_skipped``, the buffers are reallocated with one row per image. ``plan.kv_fp8``: K and V are
    stored in float8 e4m3 with one scale per block and head, fixed at the block's first write (amax → 224, values
    clamped to ±448); reads dequantise to the compute dtype. ``nbytes`` counts the K/V buffers (the scales are
    2·H floats per block, not counted). ``plan.kv_window`` (scale-window): at each scale the scales that left the
    window are dropped and the later ones moved down (the buffers stay static, sized for the largest window).
    """

    def __init__(self, spec: VARSpec, schedule: DepthSchedule, batch: int, dtype: torch.dtype,
                 device: torch.device | str, keep_skipped: bool = False, k_dtype: torch.dtype | None = None,
                 cfg: bool = True, plan: InferencePlan | None = None):
        self.plan = plan or InferencePlan.plain()
        self.layout = self.plan.kv_layout
        self.kernels: Kernels = kernels_for(self.plan)
        self.spec, self.schedule = spec, schedule.validate(spec)
        self.batch, self.cfg = batch, cfg
        self.rows = batch * (2 if cfg else 1)
        self.cfg_until = self.plan.cfg_until if cfg else None
        self.dtype, self.k_dtype = dtype, (k_dtype or dtype)
        self.store_k, self.store_v = (FP8, FP8) if self.plan.kv_fp8 else (self.k_dtype, dtype)
        self.device, self.keep_skipped = torch.device(device), keep_skipped
        self.seg_ends = segment_ends(spec, schedule, keep_skipped, self.cfg_until)
        D = spec.depth
        self.k: list[torch.Tensor | None] = [None] * D
        self.v: list[torch.Tensor | None] = [None] * D
        self.k_scale: list[torch.Tensor | None] = [None] * D     # fp8: (1, H, 1, 1) float32 per block
        self.v_scale: list[torch.Tensor | None] = [None] * D
        self.filled = [0] * D
        self.held: list[list[tuple[int, int]]] = [[] for _ in range(D)]   # (scale, tokens) in cache order
        self.window = self.plan.kv_window
        self.last = [schedule.last_active(b) for b in range(D)]
        self._segment = -1
        self._scale = -1
        self.live_rows = self.rows

    def rows_at(self, si: int) -> int:
        """Rows that run at scale ``si``: 2·batch with CFG, batch from ``cfg_until`` on."""
        return self.batch if self.cfg_until is not None and si >= self.cfg_until else self.rows

    # ---- plan --------------------------------------------------------------------------------------------
    def capacity(self, block: int, upto_scale: int) -> int:
        """Tokens the block must hold at scales <= upto_scale: all it processes, or the largest window."""
        active = self.schedule.active_scales(block)
        if self.window is None:
            return sum(self.spec.tokens[si] for si in active if si <= upto_scale)
        return max((window_tokens(self.spec, active, si, self.window) for si in active if si <= upto_scale),
                   default=0)

    def _slide_window(self, si: int) -> None:
        """Drop the scales that left the window (a contiguous middle run: anchors stay in front, the recent
        scales behind) and move the recent ones down."""
        for b in range(self.spec.depth):
            held = self.held[b]
            drop = [i for i, (s_, _) in enumerate(held) if not window_keeps(self.window, s_, si)]
            if not drop or self.k[b] is None:
                continue
            a = sum(n for _, n in held[:drop[0]])
            d = a + sum(n for _, n in held[drop[0]:drop[-1] + 1])
            n_all = self.filled[b]
            for buf in (self.k[b], self.v[b]):
                buf[:, :, a:a + n_all - d].copy_(buf[:, :, d:n_all].clone())
            self.held[b] = held[:drop[0]] + held[drop[-1] + 1:]
            self.filled[b] = n_all - (d - a)

    def _alive(self, block: int, si: int) -> bool:
        last = self.last[block]
        return last >= 0 and (self.keep_skipped or last >= si)

    def begin_scale(self, si: int) -> None:
        """Free blocks past their last scale and (re)allocate at the start of a segment."""
        seg = next(j for j, end in enumerate(self.seg_ends) if si <= end)
        self._scale = si
        if self.window is not None:
            self._slide_window(si)
        self.live_rows = self.rows_at(si)
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
        rows = self.rows if self.keep_skipped else self.live_rows    # kept buffers never shrink
        if cap <= have and (old_k is None or old_k.shape[0] == rows):
            return
        new_k, new_v = self._empty(cap, self.store_k, rows), self._empty(cap, self.store_v, rows)
        n = self.filled[b]
        if old_k is not None and n:
            new_k[:, :, :n].copy_(old_k[:rows, :, :n])
            new_v[:, :, :n].copy_(old_v[:rows, :, :n])
        self.k[b] = self.v[b] = None
        del old_k, old_v
        self.k[b], self.v[b] = new_k, new_v

    def _empty(self, cap: int, dtype: torch.dtype, rows: int) -> torch.Tensor:
        H, c = self.spec.heads, self.spec.head_dim
        if self.layout == "token":
            return torch.empty((rows, cap, H, c), dtype=dtype, device=self.device).transpose(1, 2)
        return torch.empty((rows, H, cap, c), dtype=dtype, device=self.device)

    # ---- use ---------------------------------------------------------------------------------------------
    def reserve(self, b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Claim the next ``n`` token slots of block ``b``: (rows, H, n, c) K/V views of them, to be written by the
        caller."""
        n0 = self.filled[b]
        n1 = n0 + n
        k_buf, v_buf = self.k[b], self.v[b]
        if k_buf is None or n1 > k_buf.shape[2]:
            raise RuntimeError(f"KV cache overflow in block {b}: begin_scale() was not called for this scale")
        self.filled[b] = n1
        if self.window is not None:                  # only the sliding window needs the per-scale layout
            self.held[b].append((self._scale, n))
        r = self.live_rows
        return k_buf[:r, :, n0:n1], v_buf[:r, :, n0:n1]

    def prefix(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, H, n, c) views of everything block ``b`` has cached (the live rows; fp8: dequantised copies)."""
        n, r = self.filled[b], self.live_rows
        k, v = self.k[b][:r, :, :n], self.v[b][:r, :, :n]
        if self.plan.kv_fp8:
            return k.to(self.dtype) * self.k_scale[b].to(self.dtype), v.to(self.dtype) * self.v_scale[b].to(self.dtype)
        return k, v

    def append(self, b: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this scale's K/V at the block's running offset; return views of everything cached so far."""
        first = self.filled[b] == 0
        k_slot, v_slot = self.reserve(b, k_BHlc.shape[2])
        if self.plan.kv_fp8:
            if first:
                self.k_scale[b], self.v_scale[b] = _fp8_scale(k_BHlc), _fp8_scale(v_BHlc)
            k_slot.copy_((k_BHlc.float() / self.k_scale[b]).clamp(-FP8_MAX, FP8_MAX))
            v_slot.copy_((v_BHlc.float() / self.v_scale[b]).clamp(-FP8_MAX, FP8_MAX))
        else:
            k_slot.copy_(k_BHlc)
            v_slot.copy_(v_BHlc)
        return self.prefix(b)

    def attend_fn(self, b: int) -> "CachedAttend":
        return CachedAttend(self, b)

    def nbytes(self) -> int:
        """Bytes held by the cache's buffers right now."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def release(self) -> None:
        """Drop every buffer and start over: the next ``begin_scale(0)`` allocates the first segment."""
        D = self.spec.depth
        self.k, self.v = [None] * D, [None] * D
        self.k_scale, self.v_scale = [None] * D, [None] * D
        self.filled, self.held = [0] * D, [[] for _ in range(D)]
        self._segment = self._scale = -1
        self.live_rows = self.rows


def _fp8_scale(x_BHlc: torch.Tensor) -> torch.Tensor:
    """Per-head scale (1, H, 1, 1) float32 mapping this write's amax to ``FP8_FIRST_WRITE`` (a zero head: 1)."""
    amax = x_BHlc.detach().float().abs().amax(dim=(0, 2, 3), keepdim=True)
    return torch.where(amax > 0, amax / FP8_FIRST_WRITE, torch.ones_like(amax))


def cached_attention(q_BHLc: torch.Tensor, k_BHnc: torch.Tensor, v_BHnc: torch.Tensor, scale: float,
                     plan: InferencePlan) -> torch.Tensor:
    """Unmasked attention of this scale's queries over the cached keys, by size (thresholds from ``plan``):
    - one key (the first scale): the output is that key's value, exactly what softmax over one score gives;
    - up to ``plan.tiny_attn_max_keys`` keys on CUDA (VAR's first six scales): one Triton program per (row, head)
      (``triton_kernels.tiny_attention``); SDPA's kernels pay a fixed cost per (row, head) tile that dominates
      there: 44-77 us a call at d30 batch 64 on the H100;
    - otherwise up to ``plan.small_attn_max_keys``: the memory-efficient SDPA kernel (44-48 us where cuDNN took
      67-77 us at batch 64; 5.3 vs 6.5 us at batch 1); from 91 keys on cuDNN is faster (the SDPA default)."""
    n, L, c = k_BHnc.shape[2], q_BHLc.shape[2], q_BHLc.shape[3]
    if k_BHnc.dtype != q_BHLc.dtype:
        k_BHnc = k_BHnc.to(q_BHLc.dtype)
    if n == 1:
        return v_BHnc.expand(q_BHLc.shape)
    if q_BHLc.is_cuda and not torch.is_grad_enabled():
        if n <= plan.tiny_attn_max_keys and L <= 64 and c in (16, 32, 64, 128) \
                and q_BHLc.dtype in (torch.bfloat16, torch.float16) and v_BHnc.dtype == q_BHLc.dtype:
            from .triton_kernels import tiny_attention     # the plan sets the threshold only where Triton imports
            return tiny_attention(q_BHLc, k_BHnc, v_BHnc, scale)
        if n <= plan.small_attn_max_keys:
            with sdpa_kernel(_SMALL_BACKENDS, set_priority=True):
                return F.scaled_dot_product_attention(q_BHLc, k_BHnc, v_BHnc, scale=scale)
    return F.scaled_dot_product_attention(q_BHLc, k_BHnc, v_BHnc, scale=scale)


_SMALL_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                   SDPBackend.MATH]


class CachedAttend:
    """Block ``b``'s attention against the cache: called with this scale's (q, k, v) it appends k/v and attends;
    ``from_qkv_rows`` is the fused form for cosine attention, where the q/k norms write unit k and v straight into
    the cache slots (token layout, one pass instead of a norm and two strided copies)."""

    def __init__(self, cache: KVCache, b: int):
        self.cache, self.b = cache, b

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        k_all, v_all = self.cache.append(self.b, k, v)
        return cached_attention(q, k_all, v_all, scale, self.cache.plan)

    def fuses_qkv(self) -> bool:
        """The fused q/k-norm cache write: token layout, and the cache stores what the projections give (not fp8)."""
        return self.cache.layout == "token" and not self.cache.plan.kv_fp8

    def from_qkv_rows(self, qkv_R3Hc: torch.Tensor, mul_1H1: torch.Tensor, B: int, L: int, scale: float
                      ) -> torch.Tensor:
        return self.attend_q(self.write_qkv_rows(qkv_R3Hc, mul_1H1, L), B, L, scale)

    def write_qkv_rows(self, qkv_R3Hc: torch.Tensor, mul_1H1: torch.Tensor, L: int) -> torch.Tensor:
        """The fused q/k norms: unit k and v written into this scale's slots; returns q (rows, H, c). The qkv rows
        are dead after this (``SelfAttention`` drops them before attending: half the attention's transients)."""
        k_slot, v_slot = self.cache.reserve(self.b, L)
        return self.cache.kernels.qk_norm_into(qkv_R3Hc, mul_1H1, k_slot.transpose(1, 2),
                                               v_slot.transpose(1, 2))      # slots viewed (rows, L, H, c)

    def attend_q(self, q_RHc: torch.Tensor, B: int, L: int, scale: float) -> torch.Tensor:
        """Attention of this scale's q (``write_qkv_rows``) over the block's cached keys."""
        H, c = q_RHc.shape[1:]
        k_all, v_all = self.cache.prefix(self.b)
        return cached_attention(q_RHc.view(B, L, H, c).transpose(1, 2), k_all, v_all, scale, self.cache.plan)
