"""The element-wise pieces of a block as pure functions, optionally fused by ``torch.compile`` on CUDA, and two
CUDA inference matmuls with fused epilogues, gathered per inference plan into one ``Kernels`` table.

Eager, each piece is 2-5 kernels over the whole activation; at d30 batch 64 these passes cost more than the
attention. A plan with ``compiled`` gets Inductor-fused versions (one kernel each; automatic dynamic shapes, so the
10 scales share one compilation per piece). The fused CUDA matmuls fall back to the plain ops on CPU and under
autograd. Measured effects:
docs/performance.md, "The fast path".
"""
from __future__ import annotations

import functools
import math
import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .plan import InferencePlan


def ln_modulate(x_BLC: torch.Tensor, scale_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """AdaLN: LN(x)·(1+scale) + shift (LayerNorm without affine), cast to ``out_dtype`` (the matmul dtype): the
    compiled version reads the float32 residual once and writes bf16 once (eager: four passes)."""
    y = torch.addcmul(shift_B1C, F.layer_norm(x_BLC, (x_BLC.shape[-1],), eps=eps), 1 + scale_B1C)
    return y if out_dtype is None else y.to(out_dtype)


def gated_residual(x_BLC: torch.Tensor, h_BLC: torch.Tensor, gamma_B1C: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(x_BLC, h_BLC, gamma_B1C)


def residual_ln_modulate(x_BLC: torch.Tensor, h_BLC: torch.Tensor, gamma_B1C: torch.Tensor, scale_B1C: torch.Tensor,
                         shift_B1C: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """x' = x + γ·h and the next sub-layer's input AdaLN(x'): compiled, one pass reads x once instead of twice."""
    x_BLC = gated_residual(x_BLC, h_BLC, gamma_B1C)
    return x_BLC, ln_modulate(x_BLC, scale_B1C, shift_B1C, eps, out_dtype)


def gated_residual_(x_BLC: torch.Tensor, h_BLC: torch.Tensor, gamma_B1C: torch.Tensor) -> None:
    """x += γ·h in place (``plan.residual_in_place``): the same values as ``gated_residual``, no new stream."""
    x_BLC.addcmul_(h_BLC, gamma_B1C)


def residual_ln_modulate_(x_BLC: torch.Tensor, h_BLC: torch.Tensor, gamma_B1C: torch.Tensor,
                          scale_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float,
                          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``residual_ln_modulate`` with x updated in place; returns AdaLN(x') only (x' is x)."""
    gated_residual_(x_BLC, h_BLC, gamma_B1C)
    return ln_modulate(x_BLC, scale_B1C, shift_B1C, eps, out_dtype)


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| over the last dim (F.normalize, eps 1e-12) as one fused RMS-norm kernel: rms_norm(x)/sqrt(c)."""
    c = x.shape[-1]
    return F.rms_norm(x, (c,), eps=1e-24 / c).mul_(1.0 / math.sqrt(c))


def qk_norm(qkv_R3Hc: torch.Tensor, mul_1H1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine attention inputs from the qkv rows: unit q times the clamped per-head scale, unit k; (rows, H, c)."""
    return unit_norm(qkv_R3Hc[:, 0]).mul(mul_1H1), unit_norm(qkv_R3Hc[:, 1])


def qk_norm_into(qkv_R3Hc: torch.Tensor, mul_1H1: torch.Tensor, k_dst: torch.Tensor, v_dst: torch.Tensor
                 ) -> torch.Tensor:
    """``qk_norm`` that also writes unit k and v into ``k_dst``/``v_dst`` (KV-cache slots shaped (B, L, H, c)) and
    returns q (rows, H, c). Compiled, the norms and both cache writes are one kernel; its inputs' offsets and
    strides vary with the scale and the block's capacity (automatic dynamic, a few compilations in all)."""
    k_dst.copy_(unit_norm(qkv_R3Hc[:, 1]).view(k_dst.shape))
    v_dst.copy_(qkv_R3Hc[:, 2].view(v_dst.shape))
    return unit_norm(qkv_R3Hc[:, 0]).mul(mul_1H1)


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniform samples: −log(−log u), u clamped away from 0 and 1 (one pass compiled)."""
    return -torch.log(-torch.log(u.clamp(min=1e-20, max=1.0 - 1e-7)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(tanh)(x Wᵀ + b), the plain two-kernel version."""
    return gelu_tanh(F.linear(x, weight, bias))


def linear_gelu_epilogue(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``linear_gelu`` as one cuBLASLt matmul with a bias+GELU epilogue (``torch._addmm_activation``; its CUDA
    GELU is the tanh form, applied to the float32 accumulator): the separate GELU pass over the 4C-wide hidden
    activation disappears. Only where it is that function: CUDA without autograd and outside autocast (where
    F.linear runs in the autocast dtype) with one dtype throughout; elsewhere (CPU, whose fused op uses the erf
    form) the plain version."""
    if x.is_cuda and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cuda") \
            and x.dtype == weight.dtype == bias.dtype:     # under autocast (fp32 weights) the plain path casts
        rows = x.numel() // x.shape[-1]
        out = torch._addmm_activation(bias, x.reshape(rows, x.shape[-1]), weight.t(), use_gelu=True)
        return out.view(*x.shape[:-1], weight.shape[0])
    return linear_gelu(x, weight, bias)


def split_hi_lo(h_RC: torch.Tensor) -> torch.Tensor:
    """(rows, 2C + 8) bf16 = [h_hi | h_lo | 1 0 0 0 0 0 0 0] of a float32 h: h = hi + lo to ~2^-16 relative, and
    the constant 1 that carries the head bias through the matmul (K stays a multiple of 8). One kernel compiled.
    hi is h with its low 16 bits cleared (exact in bf16) and lo = h − hi is exact in float32, so the only rounding
    is lo's store: the round-trip form lo = h − float(bf16(h)) is not safe under torch.compile, whose fused
    kernels skip intermediate down-casts by default (lo became 0 and the head bf16: session 4's GPU test)."""
    hi = (h_RC.view(torch.int32) & -65536).view(torch.float32)
    one = torch.ones_like(h_RC[:, :1])
    return torch.cat((hi.to(torch.bfloat16), (h_RC - hi).to(torch.bfloat16), one.to(torch.bfloat16),
                      torch.zeros_like(h_RC[:, :7]).to(torch.bfloat16)), dim=1)


def head_weight(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[W | W | b 0 0 0 0 0 0 0] (V, 2C + 8) for ``split_hi_lo`` rows, kept on the weight tensor and refreshed in
    place when the weight or bias change (so CUDA graphs that captured it stay valid)."""
    V, C = weight.shape
    key = (weight._version, bias._version, bias.data_ptr(), weight.data_ptr())
    entry = getattr(weight, "_split_head", None)
    if entry is not None and entry[0] == key:
        return entry[1]
    w = entry[1] if entry is not None and entry[1].shape == (V, 2 * C + 8) and entry[1].device == weight.device \
        and entry[1].dtype == weight.dtype else torch.zeros(V, 2 * C + 8, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        w[:, :C] = weight
        w[:, C:2 * C] = weight
        w[:, 2 * C] = bias
    weight._split_head = (key, w)
    return w


def head_logits(h_BLC: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Float32 logits of a float32 hidden state: the plain float32 linear."""
    return F.linear(h_BLC.float(), weight.float(), bias.float())


def head_logits_split(h_BLC: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      split: Callable[[torch.Tensor], torch.Tensor] = split_hi_lo) -> torch.Tensor:
    """``head_logits`` with bf16 head weights on CUDA without autograd: one bf16 tensor-core matmul with float32
    output over [h_hi | h_lo | 1] against [W | W | b] (``split_hi_lo``, ``head_weight``): h·Wᵀ + b to ~2^-16
    relative, with the bias added in the matmul's float32 accumulator; the float32 matmul it replaces runs without
    tensor cores (26.5 ms of a d30 batch-64 generation on the H100). Elsewhere the plain float32 linear. The plan
    enables it only where ``torch.mm(out_dtype=)`` exists (``model.plan``)."""
    if h_BLC.is_cuda and weight.dtype == torch.bfloat16 and not torch.is_grad_enabled():
        rows, C = h_BLC.numel() // h_BLC.shape[-1], h_BLC.shape[-1]
        a = split(h_BLC.reshape(rows, C).float())
        out = torch.mm(a, head_weight(weight, bias).t(), out_dtype=torch.float32)
        return out.view(*h_BLC.shape[:-1], weight.shape[0])
    return head_logits(h_BLC, weight, bias)


def qk_norm_into_triton(qkv_R3Hc: torch.Tensor, mul_1H1: torch.Tensor, k_dst: torch.Tensor, v_dst: torch.Tensor,
                        fallback: Callable = qk_norm_into) -> torch.Tensor:
    """``qk_norm_into`` through the Triton kernel on CUDA (one pass at ~bandwidth: the Inductor-fused form ran at
    1.2-1.5 TB/s on the H100's strided cache slots); ``fallback`` for inputs it does not take."""
    if qkv_R3Hc.is_cuda and qkv_R3Hc.is_contiguous():
        from .triton_kernels import qkv_norm_into_cache
        return qkv_norm_into_cache(qkv_R3Hc, mul_1H1, k_dst, v_dst)
    return fallback(qkv_R3Hc, mul_1H1, k_dst, v_dst)


ELEMENTWISE = {"ln_modulate": ln_modulate, "gated_residual": gated_residual, "qk_norm": qk_norm,
               "gelu_tanh": gelu_tanh, "residual_ln_modulate": residual_ln_modulate, "qk_norm_into": qk_norm_into,
               "gated_residual_": gated_residual_, "residual_ln_modulate_": residual_ln_modulate_,
               "gumbel": gumbel, "split_hi_lo": split_hi_lo}


@dataclass(frozen=True)
class Kernels:
    """The kernel table one inference plan runs: each block, the sampler and the head call these, so what runs is
    a value passed down (``kernels_for(plan)``), never a module attribute swapped from outside."""

    plan: InferencePlan
    ln_modulate: Callable
    gated_residual: Callable
    residual_ln_modulate: Callable
    gated_residual_: Callable             # the in-place forms (plan.residual_in_place, inference only)
    residual_ln_modulate_: Callable
    qk_norm: Callable
    qk_norm_into: Callable
    gumbel: Callable
    split_hi_lo: Callable
    gelu_tanh: Callable
    linear_gelu: Callable
    head_logits: Callable


_COMPILED: dict[str, Callable] = {}


def width_of(first: torch.Tensor) -> tuple[int, ...]:
    """What stays static for a model: the last dim (the width; the vocabulary for the noise), and the heads too
    for the (rows, 3, H, c) q/k inputs. Rows and tokens vary with the batch and the scale."""
    return tuple(first.shape[-2:]) if first.dim() >= 4 else (first.shape[-1],)


def _own_code(fn: Callable, tag: str) -> Callable:
    """``fn`` with a code object (and name) of its own: Dynamo keeps compiled graphs and its automatic-dynamic
    decisions per code object and name, so two copies never share them."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}__{tag}")
    g = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    g.__kwdefaults__, g.__doc__ = fn.__kwdefaults__, fn.__doc__
    return g


class PerWidth:
    """One ``torch.compile(fn, dynamic=None)`` per model width (``width_of`` its first argument). With one compiled
    function for all, a second model's width (collaborative decoding's refiner, var-d16 next to var-d30) made
    Dynamo's automatic dynamic shapes mark the width symbolic, and every later call of either model ran the
    width-symbolic kernels: the looped reductions that read their input twice (``dynamic=True``, 2-7x slower on
    the H100)."""

    def __init__(self, fn: Callable):
        self.fn, self.variants = fn, {}
        functools.update_wrapper(self, fn)

    def __call__(self, first: torch.Tensor, *args, **kwargs):
        key = width_of(first)
        f = self.variants.get(key)
        if f is None:
            tag = "w" + "x".join(map(str, key))
            f = self.variants[key] = torch.compile(_own_code(self.fn, tag), dynamic=None, fullgraph=True)
        return f(first, *args, **kwargs)


def _compiled() -> dict[str, Callable]:
    """The element-wise pieces through torch.compile, built once per process, one compilation set per model
    width (``PerWidth``). ``dynamic=None`` (automatic dynamic): only the dimensions seen to change (rows, tokens)
    become symbolic, the width stays static, so the LayerNorm and q/k norms compile to one-pass persistent
    reductions (``dynamic=True`` made the width symbolic too and gave looped reductions that read the input
    twice: 2-7x slower on the H100)."""
    if not _COMPILED:
        _COMPILED.update({n: PerWidth(f) for n, f in ELEMENTWISE.items()})
    return _COMPILED


@functools.lru_cache(maxsize=None)
def kernels_for(plan: InferencePlan) -> Kernels:
    """The kernel table of ``plan`` (one per distinct plan, so repeated calls return the same object)."""
    ew = _compiled() if plan.compiled else ELEMENTWISE
    qkn = ew["qk_norm_into"]
    if plan.triton_qkv:
        qkn = functools.partial(qk_norm_into_triton, fallback=qkn)
    head = functools.partial(head_logits_split, split=ew["split_hi_lo"]) if plan.split_head else head_logits
    return Kernels(plan=plan, ln_modulate=ew["ln_modulate"], gated_residual=ew["gated_residual"],
                   residual_ln_modulate=ew["residual_ln_modulate"], gated_residual_=ew["gated_residual_"],
                   residual_ln_modulate_=ew["residual_ln_modulate_"], qk_norm=ew["qk_norm"], qk_norm_into=qkn,
                   gumbel=ew["gumbel"], split_hi_lo=ew["split_hi_lo"], gelu_tanh=ew["gelu_tanh"],
                   linear_gelu=linear_gelu_epilogue if plan.fused_gelu else linear_gelu, head_logits=head)


# the reference table (plain torch ops): training, and every caller that passes no plan
PLAIN_KERNELS = kernels_for(InferencePlan.plain())
