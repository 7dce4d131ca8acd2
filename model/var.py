"""The VAR transformer (VAR_REFERENCE §1-§2), schedule-aware.

State-dict keys and shapes equal the official FoundationVision/VAR ones. Two entry points:
- ``forward`` (teacher forcing): every block runs only on the tokens of the scales where the schedule makes it
  active, with block-causal attention among those tokens (prefix attention per scale, no mask tensor);
- ``step``: one scale of cached generation against a :class:`~model.kv_cache.KVCache`.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .kernels import PLAIN_KERNELS, Kernels
from .schedule import DepthSchedule
from .spec import VARSpec

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def drop_path(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Stochastic depth, timm semantics: per-sample keep mask scaled by 1/keep. ``keep`` is a 0-d tensor, not a
    float, so a compiled block does not specialise (and recompile) on each block's rate."""
    mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep
    return x * (mask / keep).to(x.dtype)


class SelfAttention(nn.Module):
    """Cosine (L2-normalised) attention with a clamped per-head scale; q/v biases, a zero k-bias buffer."""

    def __init__(self, spec: VARSpec):
        super().__init__()
        C, H = spec.width, spec.heads
        self.heads, self.head_dim, self.l2 = H, spec.head_dim, spec.attn_l2_norm
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        if self.l2:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), math.log(4.0)))
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(C, C)

    def _consts(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The qkv bias [q_bias, 0, v_bias] and the clamped per-head scale exp(min(s, log 100)) as (1, H, 1).
        At inference they are cached and refreshed in place when a parameter changes (``_version``), so CUDA
        graphs that captured them stay valid: recomputed per block and scale they were ~100 tiny kernels a scale,
        a fixed cost that dominates the small scales."""
        H = self.heads
        if torch.is_grad_enabled():
            return self._make_consts(H)
        key = (self.q_bias._version, self.v_bias._version, self.q_bias.data_ptr(), self.q_bias.dtype,
               self.scale_mul_1H11._version if self.l2 else 0)
        cached = self.__dict__.get("_consts_cache")
        if cached is None or cached[1][0].device != self.q_bias.device or cached[1][0].dtype != self.q_bias.dtype:
            cached = [key, self._make_consts(H)]
            self.__dict__["_consts_cache"] = cached
        elif cached[0] != key:
            for old, new in zip(cached[1], self._make_consts(H)):
                if old is not None:
                    old.copy_(new)
            cached[0] = key
        return cached[1]

    def _make_consts(self, H: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        mul = self.scale_mul_1H11.clamp_max(math.log(100.0)).exp().view(1, H, 1) if self.l2 else None
        return bias, mul

    def _qkv_rows(self, x_BLC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, L, C = x_BLC.shape
        bias, mul_1H1 = self._consts()
        return F.linear(x_BLC, self.mat_qkv.weight, bias).view(B * L, 3, self.heads, self.head_dim), mul_1H1

    def qkv(self, x_BLC: torch.Tensor, kernels: Kernels = PLAIN_KERNELS
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, H, L, c) views of (B, L, H, c) memory (FlashAttention's native layout); with L2 norm, q
        carries the head scale and k is unit-norm (what is cached). The norms run on the (B, L, H, c) slices of the
        qkv output, whose rows are contiguous and in output order: normalising the permuted (B, H, L, c) views
        instead gave a fused kernel that ran up to 6x slower than its bandwidth on the H100."""
        B, L, C = x_BLC.shape
        H, c = self.heads, self.head_dim
        qkv_R3Hc, mul_1H1 = self._qkv_rows(x_BLC)
        v_BLHc = qkv_R3Hc[:, 2].view(B, L, H, c)
        if self.l2:     # one (rows, 3, H, c) input whose only varying size is the row count: compiler-friendly
            q_RHc, k_RHc = kernels.qk_norm(qkv_R3Hc, mul_1H1)
            q_BLHc, k_BLHc = q_RHc.view(B, L, H, c), k_RHc.view(B, L, H, c)
        else:
            q_BLHc, k_BLHc = qkv_R3Hc[:, 0].view(B, L, H, c), qkv_R3Hc[:, 1].view(B, L, H, c)
        return q_BLHc.transpose(1, 2), k_BLHc.transpose(1, 2), v_BLHc.transpose(1, 2)

    def forward(self, x_BLC: torch.Tensor, attend: Attend, kernels: Kernels = PLAIN_KERNELS,
                ln: tuple[torch.Tensor, torch.Tensor, float, torch.dtype] | None = None) -> torch.Tensor:
        """``ln`` = (scale, shift, eps, dtype): ``x_BLC`` is the residual stream and the block's AdaLN runs here,
        so its output dies with the qkv projection instead of living through the attention (inference memory:
        with the qkv rows dropped once k and v are cached, 4 of the 6 bf16 copies of the scale remain)."""
        B, L, C = x_BLC.shape
        fuses = getattr(attend, "fuses_qkv", None)
        if self.l2 and fuses is not None and fuses() and not torch.is_grad_enabled():
            # cached generation: the norms write k/v into the cache
            qkv_R3Hc, mul_1H1 = self._qkv_rows(x_BLC if ln is None else kernels.ln_modulate(x_BLC, *ln))
            q_RHc = attend.write_qkv_rows(qkv_R3Hc, mul_1H1, L)
            qkv_R3Hc = None                                   # dead: k, v are in the cache, q is out
            o_BHLc = attend.attend_q(q_RHc, B, L, self.scale)
            q_RHc = None
        else:
            q, k, v = self.qkv(x_BLC if ln is None else kernels.ln_modulate(x_BLC, *ln), kernels)
            o_BHLc = attend(q, k, v, self.scale)
            q = k = v = None
        return self.proj(o_BHLc.transpose(1, 2).reshape(B, L, C))


def ffn_chunk_rows(chunk_elems: int, hidden: int) -> int:
    """Rows per MLP chunk at inference: at most ``chunk_elems`` hidden elements, whole 256-row tiles when larger."""
    rows = max(1, chunk_elems // hidden)
    return rows - rows % 256 if rows > 256 else rows


class FFN(nn.Module):
    def __init__(self, spec: VARSpec):
        super().__init__()
        self.fc1 = nn.Linear(spec.width, spec.mlp_hidden)
        self.fc2 = nn.Linear(spec.mlp_hidden, spec.width)

    def forward(self, x: torch.Tensor, kernels: Kernels = PLAIN_KERNELS) -> torch.Tensor:
        """At inference, rows in chunks of ``kernels.plan.ffn_chunk_elems`` hidden elements (one pass below)."""
        rows = x.numel() // x.shape[-1]
        hidden = rows * self.fc1.out_features
        chunk = kernels.plan.ffn_chunk_elems
        if torch.is_grad_enabled() or hidden <= chunk:
            return self.fc2(kernels.linear_gelu(x, self.fc1.weight, self.fc1.bias))
        # inference on a large batch: the hidden activation (fc1 out, and GELU out where the epilogue is not used)
        # is the biggest transient of the last scale (1.64 GiB each at d30 batch 224); row chunks bound it
        x2 = x.reshape(rows, x.shape[-1])
        out = x.new_empty(rows, self.fc2.out_features)
        step = ffn_chunk_rows(chunk, self.fc1.out_features)
        w2_t = self.fc2.weight.t()
        for r0 in range(0, rows, step):     # fc2 writes its rows in place (F.linear is this addmm)
            torch.addmm(self.fc2.bias, kernels.linear_gelu(x2[r0:r0 + step], self.fc1.weight, self.fc1.bias), w2_t,
                        out=out[r0:r0 + step])
        return out.view(*x.shape[:-1], self.fc2.out_features)


class AdaLNSelfAttn(nn.Module):
    """x += γ1·attn(LN(x)(1+s1)+b1); x += γ2·ffn(LN(x)(1+s2)+b2); modulation order γ1 γ2 s1 s2 b1 b2."""

    def __init__(self, spec: VARSpec, drop_path_rate: float):
        super().__init__()
        C = spec.width
        self.C, self.shared = C, spec.shared_aln
        self.drop_path_rate = drop_path_rate
        self._keep_by_device: dict[torch.device, torch.Tensor] = {}   # keep_prob's tensors (not state)
        self.ln_wo_grad = nn.LayerNorm(C, eps=spec.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(spec)
        self.ffn = FFN(spec)
        if self.shared:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def modulation(self, cond_BD_or_gss: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.shared:
            return (cond_BD_or_gss + self.ada_gss).unbind(2)
        return self.ada_lin(cond_BD_or_gss).view(-1, 1, 6, self.C).unbind(2)

    def forward(self, x_BLC: torch.Tensor, cond_BD_or_gss: torch.Tensor, attend: Attend,
                mod: tuple[torch.Tensor, ...] | None = None, keep: torch.Tensor | None = None,
                kernels: Kernels = PLAIN_KERNELS) -> torch.Tensor:
        """``keep``: 1 − drop-path rate as a 0-d tensor (training; VAR.forward passes it), None = no drop path.
        ``kernels``: the inference plan's kernel table (the plain ops by default)."""
        g1, g2, s1, s2, b1, b2 = mod if mod is not None else self.modulation(cond_BD_or_gss)
        eps, wdt = self.ln_wo_grad.eps, self.ffn.fc1.weight.dtype
        K = kernels
        if keep is None and K.plan.residual_in_place and not torch.is_grad_enabled():
            # inference: the stream is updated where it lies (the caller's input is overwritten), so neither the
            # scale's input nor a block's input stays alive next to the new stream, and each transient dies as
            # soon as it is read (docs/performance.md, "Memory")
            h = self.attn(x_BLC, attend, K, ln=(s1, b1, eps, wdt))
            y = K.residual_ln_modulate_(x_BLC, h, g1, s2, b2, eps, wdt)
            h = None
            K.gated_residual_(x_BLC, self.ffn(y, K), g2)
            return x_BLC
        h = self.attn(K.ln_modulate(x_BLC, s1, b1, eps, wdt), attend, K)
        if keep is None:
            x_BLC, y = K.residual_ln_modulate(x_BLC, h, g1, s2, b2, eps, wdt)
        else:
            x_BLC = self._residual(x_BLC, h, g1, keep, K)
            y = K.ln_modulate(x_BLC, s2, b2, eps, wdt)
        return self._residual(x_BLC, self.ffn(y, K), g2, keep, K)

    @staticmethod
    def _residual(x_BLC: torch.Tensor, h_BLC: torch.Tensor, gamma: torch.Tensor,
                  keep: torch.Tensor | None, kernels: Kernels) -> torch.Tensor:
        if keep is not None:
            return x_BLC + drop_path(h_BLC * gamma, keep)
        return kernels.gated_residual(x_BLC, h_BLC, gamma)

    def keep_prob(self, device: torch.device) -> torch.Tensor | None:
        """The drop-path keep probability as a 0-d tensor while training with a rate > 0, else None."""
        if not (self.training and self.drop_path_rate > 0):
            return None
        if device not in self._keep_by_device:  # one host-to-device copy per device, not one per step
            self._keep_by_device[device] = torch.tensor(1.0 - self.drop_path_rate, device=device)
        return self._keep_by_device[device]


class SharedAdaLin(nn.Linear):
    """The d36 shared AdaLN projection: output viewed as (B, 1, 6, C)."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, spec: VARSpec):
        super().__init__()
        self.C = spec.width
        self.ln_wo_grad = nn.LayerNorm(spec.width, eps=spec.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(spec.width, 2 * spec.width))

    def forward(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Computed in float32 like the official head, whatever the weight dtype."""
        scale, shift = self.ada_lin(cond_BD).float().view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(h_BLC.float()).mul(1 + scale).add_(shift)


def prefix_attention(ends: Sequence[int]) -> Attend:
    """Block-causal attention without a mask: queries of scale s see the prefix of keys up to the end of s.
    One function object per ``ends`` (cached), so a compiled block sees the same argument every step."""
    return _prefix_attention(tuple(ends))


@functools.lru_cache(maxsize=256)
def _prefix_attention(ends: tuple[int, ...]) -> Attend:

    def attend(q, k, v, scale):
        if len(ends) == 1:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        outs, start = [], 0
        for end in ends:
            outs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end],
                                                       scale=scale))
            start = end
        return torch.cat(outs, dim=2)

    return attend


def masked_attention(ends: Sequence[int], device: torch.device) -> Attend:
    """The same block-causal attention as one SDPA call with a boolean mask. Used when gradients flow: the
    backward of ``prefix_attention``'s per-scale q/k/v slices materialises full-size zero gradients for every
    slice (measured on an H100, var-d16 batch 64: 380 ms a step with prefix attention, 290 ms with the mask)."""
    return _masked_attention(tuple(ends), torch.device(device))


@functools.lru_cache(maxsize=64)
def _masked_attention(ends: tuple[int, ...], device: torch.device) -> Attend:
    lvl = torch.repeat_interleave(torch.arange(len(ends)),
                                  torch.diff(torch.tensor((0,) + ends)))
    allowed_11LL = (lvl.view(-1, 1) >= lvl.view(1, -1)).view(1, 1, len(lvl), len(lvl)).to(device)

    def attend(q, k, v, scale):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_11LL, scale=scale)

    return attend


def block_causal(ends: Sequence[int], device: torch.device) -> Attend:
    """Teacher-forcing attention: one masked SDPA while training (fast backward), per-scale prefix SDPA without
    a mask otherwise (no L×L mask to read at inference)."""
    return masked_attention(ends, device) if torch.is_grad_enabled() else prefix_attention(ends)


def compile_blocks(var: nn.Module, backend: str = "inductor") -> None:
    """torch.compile each block in place (static shapes): Inductor fuses the AdaLN, residual and GELU passes in
    forward and backward. The blocks share compiled graphs (drop path is a tensor argument, not a guard)."""
    for blk in var.blocks:
        blk.compile(dynamic=False, backend=backend)


def _maybe_checkpoint(blk: nn.Module, ckpt: bool, *args):
    if not ckpt:
        return blk(*args)
    return torch.utils.checkpoint.checkpoint(blk, *args, use_reentrant=False)


class VAR(nn.Module):
    """The VAR transformer of one spec. Holds no VQ-VAE (the official state dict has none either)."""

    def __init__(self, spec: VARSpec):
        super().__init__()
        self.spec = spec
        C, L, S = spec.width, spec.L, spec.num_scales
        self.word_embed = nn.Linear(spec.vae.z_channels, C)
        self.class_emb = nn.Embedding(spec.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, spec.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(S, C)
        lvl = torch.tensor(spec.level_of_token, dtype=torch.long)
        self.register_buffer("lvl_1L", lvl.view(1, L))
        mask = torch.where(lvl.view(L, 1) >= lvl.view(1, L), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, L, L))
        if spec.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C))
        n = max(spec.depth - 1, 1)
        dpr = [spec.drop_path_rate * i / n for i in range(spec.depth)]
        self.blocks = nn.ModuleList(AdaLNSelfAttn(spec, dpr[i]) for i in range(spec.depth))
        self.head_nm = AdaLNBeforeHead(spec)
        self.head = nn.Linear(C, spec.vae.vocab_size)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ---- init (VAR_REFERENCE §1.7) ----------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        s, std = self.spec, self.spec.init_std
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        self.head.weight.mul_(s.init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(s.init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        C, rescale = s.width, math.sqrt(2 * s.depth)
        for blk in self.blocks:
            blk.attn.proj.weight.div_(rescale)
            blk.ffn.fc2.weight.div_(rescale)
            if blk.shared:
                blk.ada_gss[:, :, 2:].mul_(s.init_adaln)
                blk.ada_gss[:, :, :2].mul_(s.init_adaln_gamma)
            else:
                lin = blk.ada_lin[-1]
                lin.weight[2 * C:].mul_(s.init_adaln)
                lin.weight[:2 * C].mul_(s.init_adaln_gamma)
                lin.bias.zero_()

    # ---- shared pieces ----------------------------------------------------------------------------------
    # The residual stream and the embeddings stay float32 whatever the weight dtype (as under autocast); only the
    # block matmuls run in the weight dtype. bf16 sums here flip ~3% of greedy tokens at d16.
    def lvl_pos(self) -> torch.Tensor:
        """(1, L, C) float32: level embedding + absolute position of every token."""
        return self.lvl_embed.weight.float()[self.lvl_1L] + self.pos_1LC.float()

    def embed_words(self, x_BlCv: torch.Tensor) -> torch.Tensor:
        """VQ-VAE latents (B, l, Cvae) -> token embeddings (B, l, C), float32."""
        return F.linear(x_BlCv.float(), self.word_embed.weight.float(), self.word_embed.bias.float())

    def cond_for_blocks(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.shared_ada_lin(cond_BD) if self.spec.shared_aln else cond_BD

    @torch.no_grad()
    def refresh_inference_consts(self, kernels: Kernels = PLAIN_KERNELS) -> None:
        """Bring the inference caches derived from parameters (qkv biases, head scales, the split head weight) up
        to date in place: CUDA graph replays read them without running the Python that would."""
        for blk in self.blocks:
            blk.attn._consts()
        if kernels.plan.split_head and self.head.weight.is_cuda and self.head.weight.dtype == torch.bfloat16:
            from .kernels import head_weight
            head_weight(self.head.weight, self.head.bias)

    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor, kernels: Kernels = PLAIN_KERNELS
                   ) -> torch.Tensor:
        """Head in float32 whatever the weight dtype: greedy/top-k choices hinge on small logit gaps."""
        h = self.head_nm(h_BLC, cond_BD)
        return kernels.head_logits(h, self.head.weight, self.head.bias).float()   # float32 under autocast too

    # ---- teacher forcing --------------------------------------------------------------------------------
    def forward(self, label_B: torch.Tensor, x_BLCv: torch.Tensor, schedule: DepthSchedule | None = None,
                checkpoint_blocks: bool = False, kernels: Kernels = PLAIN_KERNELS) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) float32 for the inputs of ``VectorQuantizer.idx_to_var_input``.

        ``checkpoint_blocks`` recomputes each block's activations in the backward pass (activation
        checkpointing: d30 training at batch 32 on one 80 GB GPU). ``kernels``: an inference plan's table
        (``VARPipeline.teacher_forcing`` passes its plan's; training keeps the plain ops)."""
        s = self.spec
        if self.training and s.cond_drop_rate > 0:
            drop = torch.rand(label_B.shape[0], device=label_B.device) < s.cond_drop_rate
            label_B = torch.where(drop, s.num_classes, label_B)
        cond_BD = self.class_emb(label_B)
        lvl_pos_1LC = self.lvl_pos()
        sos_B1C = cond_BD.float().unsqueeze(1) + self.pos_start.float() + lvl_pos_1LC[:, :1]
        x_BLC = torch.cat((sos_B1C, self.embed_words(x_BLCv) + lvl_pos_1LC[:, 1:]), dim=1)
        cond = self.cond_for_blocks(cond_BD)
        ckpt = checkpoint_blocks and torch.is_grad_enabled()
        if schedule is None:
            full_ends = [e for _, e in s.begin_ends]
            attend = block_causal(full_ends, x_BLC.device)
            for blk in self.blocks:
                x_BLC = _maybe_checkpoint(blk, ckpt, x_BLC, cond, attend, None, blk.keep_prob(x_BLC.device),
                                          kernels)
        else:
            schedule.validate(s)
            for b, blk in enumerate(self.blocks):
                x_BLC = self._run_block_on_active(blk, b, x_BLC, cond, schedule, ckpt, kernels)
        return self.get_logits(x_BLC, cond_BD, kernels)

    def _run_block_on_active(self, blk: AdaLNSelfAttn, b: int, x_BLC: torch.Tensor, cond: torch.Tensor,
                             schedule: DepthSchedule, ckpt: bool = False, kernels: Kernels = PLAIN_KERNELS
                             ) -> torch.Tensor:
        scales = schedule.active_scales(b)
        if not scales:
            return x_BLC
        be = self.spec.begin_ends
        ends, total = [], 0
        for si in scales:
            total += be[si][1] - be[si][0]
            ends.append(total)
        attend, keep = block_causal(ends, x_BLC.device), blk.keep_prob(x_BLC.device)
        if total == self.spec.L:
            return _maybe_checkpoint(blk, ckpt, x_BLC, cond, attend, None, keep, kernels)
        idx = torch.cat([torch.arange(*be[si], device=x_BLC.device) for si in scales])
        out = _maybe_checkpoint(blk, ckpt, x_BLC.index_select(1, idx), cond, attend, None, keep, kernels)
        return x_BLC.index_copy(1, idx, out)

    # ---- cached generation: one scale -------------------------------------------------------------------
    def modulations(self, cond: torch.Tensor, blocks: tuple[int, ...]) -> dict[int, tuple[torch.Tensor, ...]]:
        """AdaLN vectors of the given blocks; they depend only on the class, so generation computes them once."""
        return {b: self.blocks[b].modulation(cond) for b in blocks}

    def step(self, x_BlC: torch.Tensor, mods: dict[int, tuple[torch.Tensor, ...]], layers: tuple[int, ...],
             cache) -> torch.Tensor:
        """Run the blocks ``layers`` on one scale's tokens, attending to (and appending to) the KV cache, with the
        kernels of the cache's inference plan."""
        kernels = cache.kernels
        for b in layers:
            x_BlC = self.blocks[b](x_BlC, None, cache.attend_fn(b), mods[b], None, kernels)
        return x_BlC
