"""Hand-written Triton kernels for the CUDA generation path (imported only where Triton is available).

``qkv_norm_into_cache``: one program per token row reads that row's q, k and v (3·H·c contiguous values) once,
writes the unit q times the per-head scale, and writes unit k and v into the KV cache's slots. The Inductor-fused
version of the same function ran at 1.2-1.5 TB/s on the H100 (per-element index arithmetic on the cache's
run-time strides); here the cache offsets are computed once per row. docs/speed_notes.md, session 4.
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
