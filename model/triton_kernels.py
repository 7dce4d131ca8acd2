"""Hand-written Triton kernels for the CUDA generation path (imported only where Triton is available).

``qkv_norm_into_cache``: one program per token row reads that row's q, k and v (3·H·c contiguous values) once,
writes the unit q times the per-head scale, and writes unit k and v into the KV cache's slots. The Inductor-fused
version of the same function ran at 1.2-1.5 TB/s on the H100 (per-element index arithmetic on the cache's
run-time strides); here the cache offsets are computed once per row. docs/performance.md, "The fast path".
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _qkv_norm_rows(qkv_ptr, mul_ptr, q_ptr, k_ptr, v_ptr, L,
                   k_sb, k_sl, k_sh, v_sb, v_sl, v_sh,
                   H: tl.constexpr, C: tl.constexpr, HP: tl.constexpr, CP: tl.constexpr, HAS_MUL: tl.constexpr):
    r = tl.program_id(0)
    b = r // L
    l = r - b * L
    h = tl.arange(0, HP)[:, None]
    c = tl.arange(0, CP)[None, :]
    mask = (h < H) & (c < C)
    src = qkv_ptr + r.to(tl.int64) * (3 * H * C) + h * C + c
    q = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    k = tl.load(src + H * C, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(src + 2 * H * C, mask=mask, other=0.0)
    q = q / tl.sqrt(tl.sum(q * q, axis=1)[:, None] + 1e-24)
    k = k / tl.sqrt(tl.sum(k * k, axis=1)[:, None] + 1e-24)
    if HAS_MUL:
        q = q * tl.load(mul_ptr + h, mask=h < H, other=0.0).to(tl.float32)
    tl.store(q_ptr + r.to(tl.int64) * (H * C) + h * C + c, q.to(q_ptr.dtype.element_ty), mask=mask)
    k_dst = k_ptr + b.to(tl.int64) * k_sb + l.to(tl.int64) * k_sl + h * k_sh + c
    v_dst = v_ptr + b.to(tl.int64) * v_sb + l.to(tl.int64) * v_sl + h * v_sh + c
    tl.store(k_dst, k.to(k_ptr.dtype.element_ty), mask=mask)
    tl.store(v_dst, v.to(v_ptr.dtype.element_ty), mask=mask)


def qkv_norm_into_cache(qkv_R3Hc: torch.Tensor, mul_1H1: torch.Tensor, k_dst_BLHc: torch.Tensor,
                        v_dst_BLHc: torch.Tensor) -> torch.Tensor:
    """Same contract as ``kernels.qk_norm_into``: q (rows, H, c) returned; unit k and v written into the
    (B, L, H, c) slot views (last dim contiguous); the norms are computed in float32 and rounded once."""
    rows, three, H, C = qkv_R3Hc.shape
    B, L = k_dst_BLHc.shape[:2]
    assert three == 3 and rows == B * L and qkv_R3Hc.is_contiguous()
    assert k_dst_BLHc.stride(-1) == 1 and v_dst_BLHc.stride(-1) == 1
    q_RHc = torch.empty(rows, H, C, dtype=qkv_R3Hc.dtype, device=qkv_R3Hc.device)
    mul = mul_1H1.reshape(H).contiguous()
    _qkv_norm_rows[(rows,)](qkv_R3Hc, mul, q_RHc, k_dst_BLHc, v_dst_BLHc, L,
                            k_dst_BLHc.stride(0), k_dst_BLHc.stride(1), k_dst_BLHc.stride(2),
                            v_dst_BLHc.stride(0), v_dst_BLHc.stride(1), v_dst_BLHc.stride(2),
                            H=H, C=C, HP=triton.next_power_of_2(H), CP=triton.next_power_of_2(C), HAS_MUL=True,
                            num_warps=4)
    return q_RHc


@triton.jit
def _tiny_attention(q_ptr, k_ptr, v_ptr, o_ptr, L, N, scale,
                    q_sb, q_sh, q_sl, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, o_sb, o_sh, o_sl,
                    H: tl.constexpr, C: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    m = tl.arange(0, BM)[:, None]
    n = tl.arange(0, BN)[:, None]
    c = tl.arange(0, C)[None, :]
    q = tl.load(q_ptr + b * q_sb + h * q_sh + m * q_sl + c, mask=m < L, other=0.0)
    k = tl.load(k_ptr + b * k_sb + h * k_sh + n * k_sn + c, mask=n < N, other=0.0)
    v = tl.load(v_ptr + b * v_sb + h * v_sh + n * v_sn + c, mask=n < N, other=0.0)
    s = tl.dot(q, tl.trans(k)) * scale
    s = tl.where(tl.arange(0, BN)[None, :] < N, s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    o = tl.dot(p.to(v.dtype), v)
    tl.store(o_ptr + b * o_sb + h * o_sh + m * o_sl + c, o.to(o_ptr.dtype.element_ty), mask=m < L)


def tiny_attention(q_BHLc: torch.Tensor, k_BHnc: torch.Tensor, v_BHnc: torch.Tensor, scale: float) -> torch.Tensor:
    """Unmasked attention for few queries over few keys (L <= 64, n <= 128: VAR's first six scales), one program
    per (row, head) holding all scores in registers. SDPA's kernels pay a fixed cost per (row, head) tile that
    dominates here (44-77 us a call at d30 batch 64 on the H100). Output (B, H, L, c) as a view of (B, L, H, c)
    memory, so the projection's input reshape is free."""
    B, H, L, C = q_BHLc.shape
    N = k_BHnc.shape[2]
    o = torch.empty(B, L, H, C, dtype=q_BHLc.dtype, device=q_BHLc.device).transpose(1, 2)
    _tiny_attention[(B * H,)](q_BHLc, k_BHnc, v_BHnc, o, L, N, float(scale),
                              q_BHLc.stride(0), q_BHLc.stride(1), q_BHLc.stride(2),
                              k_BHnc.stride(0), k_BHnc.stride(1), k_BHnc.stride(2),
                              v_BHnc.stride(0), v_BHnc.stride(1), v_BHnc.stride(2),
                              o.stride(0), o.stride(1), o.stride(2),
                              H=H, C=C, BM=max(16, triton.next_power_of_2(L)), BN=max(16, triton.next_power_of_2(N)),
                              num_warps=4)
    return o
