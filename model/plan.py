"""The inference plan: one frozen value that says how generation runs (kernels, KV layout, thresholds, compile,
CUDA graphs, memory chunking).

Resolved once per pipeline from the device's capabilities and the user's explicit choices, then passed down
explicitly: the KV cache reads its layout and attention thresholds from it, the blocks and the sampler call the
kernel table it builds (``model.kernels.kernels_for``), and the CUDA-graph cache keys on it whole. Result rows and
manifests record ``as_dict()``. Nothing in model/ reads a module-level switch or an environment variable instead.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch

KV_LAYOUTS = ("head", "token")


@dataclass(frozen=True)
class InferencePlan:
    """How a pipeline generates. ``plain()`` is the reference: the plain torch ops everywhere (what CPU runs).

    kv_layout: "token" = (rows, capacity, H, c) memory seen as (rows, H, capacity, c): a scale's slots are
        contiguous per row, the q/k-norm writes unit k and v straight into them and attention reads
        FlashAttention's native layout; "head" = (rows, H, capacity, c) contiguous (appends are strided copies).
    triton_qkv: the Triton kernel for the q/k norms + KV-cache writes (CUDA, token layout).
    tiny_attn_max_keys: Triton attention for <= this many keys and <= 64 queries (CUDA, 16-bit; 0 = off).
    small_attn_max_keys: else the memory-efficient SDPA kernel for <= this many keys (CUDA; 0 = off).
    fused_gelu: fc1 through cuBLASLt's bias+GELU epilogue (CUDA inference, weights and input of one dtype).
    split_head: the head as one bf16 matmul with float32 output over [h_hi | h_lo | 1] (CUDA, bf16 weights).
    compiled: the element-wise pieces of the blocks and the sampler through torch.compile (CUDA).
    cuda_graphs: per-scale CUDA graph replay (each graph also captures the cache's allocation step: the same bytes).
    sample_chunk_logits: head + CFG + sampling on batch chunks of at most this many logits (2^24: the sampler's
        float32 temporaries of a chunk, ~24 B a logit, are 384 MiB; d30 batch 64's last scale in 4 chunks).
    ffn_chunk_elems: MLP hidden elements per row chunk at inference (bounds the largest transient: 2^26 bf16
        elements are 128 MiB; d30 batch 64's last scale runs in 4 chunks of 8,704 rows).
    residual_in_place: at inference the blocks add to the residual stream in place (``addcmul_``, bitwise the same
        values): a scale's float32 input and each block's input are dead once added to, so one float32 stream
        lives instead of up to three (d30 batch 64: -2 x 240 MiB at the last scale's MLP). The input tensor a
        caller passes to ``VAR.step`` is overwritten (the generation loop's and the graphs' own buffers).
    decode_dtype: the VQ-VAE decoder's dtype ("bf16" | "fp16" | "fp32"); decode_channels_last: its memory format.
    decode_chunk: images decoded at a time (the decoder's 256² activations of a whole batch would dominate the
        peak; 4 images: ~350 MiB at var-d30, and CUDA graphs still hold the KV cache while decoding);
        decode_cudnn_benchmark: cuDNN picks its convolution algorithms by timing them (a process-wide torch
        setting, applied with the plan; on for CUDA: the decoder's shapes are fixed); decode_cudnn_benchmark_limit:
        how many algorithms that autotuning times per convolution shape (torch's ``benchmark_limit``, process-wide;
        None leaves torch's default of 10, 0 times all): the H200 decoded 64 images in either ~85-96 or ~122-140 ms
        with the same plan, most likely the autotuning's draw (results/h200/lean-memory).
    cfg_until: classifier-free guidance on scales < cfg_until only (None: every scale); later scales run one row
        per image (the guidance-skip method).
    kv_fp8: the KV cache stored in float8 e4m3 with a per-block, per-head scale (the kv-fp8 method).
    kv_window: (anchors, recent): each block keeps the KV of the first ``anchors`` scales and of the ``recent``
        most recent scales (the current one included) only, and attends to those (the scale-window method).
    refine_from: the pipeline's refiner model runs the scales from here on (collaborative decoding, the code
        method); None: one model throughout.
    """

    kv_layout: str = "token"
    triton_qkv: bool = False
    tiny_attn_max_keys: int = 0
    small_attn_max_keys: int = 0
    fused_gelu: bool = False
    split_head: bool = False
    compiled: bool = False
    cuda_graphs: bool = False
    sample_chunk_logits: int = 1 << 24
    ffn_chunk_elems: int = 1 << 26
    residual_in_place: bool = True
    decode_dtype: str = "fp32"
    decode_channels_last: bool = False
    decode_chunk: int = 4
    decode_cudnn_benchmark: bool = False
    decode_cudnn_benchmark_limit: int | None = None
    cfg_until: int | None = None
    kv_fp8: bool = False
    kv_window: tuple[int, int] | None = None
    refine_from: int | None = None

    def __post_init__(self) -> None:
        if self.kv_layout not in KV_LAYOUTS:
            raise ValueError(f"KV layout {self.kv_layout!r} is not one of {', '.join(KV_LAYOUTS)}")
        if self.decode_dtype not in _DTYPES:
            raise ValueError(f"decode dtype {self.decode_dtype!r} is not one of {', '.join(_DTYPES)}")
        if self.decode_cudnn_benchmark_limit is not None and self.decode_cudnn_benchmark_limit < 0:
            raise ValueError(f"decode_cudnn_benchmark_limit must be >= 0, got {self.decode_cudnn_benchmark_limit}")
        for name in ("tiny_attn_max_keys", "small_attn_max_keys"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kv_window is not None:
            window = tuple(int(v) for v in self.kv_window)      # JSON gives a list; the plan stays hashable
            object.__setattr__(self, "kv_window", window)
            if len(window) != 2 or window[0] < 0 or window[1] < 1:
                raise ValueError(f"kv_window must be (anchors >= 0, recent >= 1), got {self.kv_window}")
        if self.refine_from is not None and self.refine_from < 1:
            raise ValueError(f"refine_from must be >= 1, got {self.refine_from}")
        if self.cfg_until is not None and self.cfg_until < 0:
            raise ValueError(f"cfg_until must be >= 0, got {self.cfg_until}")
        for name in ("sample_chunk_logits", "ffn_chunk_elems", "decode_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def plain(cls) -> "InferencePlan":
        """The reference plan: plain torch ops, no compile, no graphs (what resolve() gives on a CPU)."""
        return cls()

    @classmethod
    def resolve(cls, device: torch.device | str, dtype: torch.dtype = torch.float32, **choices: Any
                ) -> "InferencePlan":
        """The fastest plan this device supports, with the user's explicit ``choices`` (plan field values; None
        = decide) applied on top. A choice the device cannot honour (compile or graphs on a CPU) is dropped to
        what it can: the plan says what ran, not what was asked."""
        device = torch.device(device)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(choices) - known)
        if unknown:
            raise ValueError(f"unknown inference-plan field(s): {', '.join(unknown)}")
        auto: dict[str, Any] = {}
        if device.type == "cuda":
            triton = triton_available()
            half = dtype in (torch.bfloat16, torch.float16)
            auto = dict(triton_qkv=triton, tiny_attn_max_keys=128 if triton else 0, small_attn_max_keys=64,
                        fused_gelu=True, split_head=dtype == torch.bfloat16 and _mm_out_dtype_ok(device),
                        decode_dtype=_NAMES[dtype] if half else "fp32", decode_cudnn_benchmark=True)
        auto.update({k: v for k, v in choices.items() if v is not None})
        if device.type != "cuda":     # the CUDA-only paths cannot run here
            auto.update(compiled=False, cuda_graphs=False)
        if auto.get("compiled") and choices.get("decode_channels_last") is None:
            auto["decode_channels_last"] = True    # compiled, channels-last is the faster decoder (H100: 97 -> 90 ms)
        return cls(**auto)

    def replace(self, **changes: Any) -> "InferencePlan":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, as recorded in result rows and manifests."""
        return dataclasses.asdict(self)

    @property
    def execution(self) -> str:
        """The execution path in one word, as the report groups it: eager | compile | graphs."""
        return "graphs" if self.cuda_graphs else ("compile" if self.compiled else "eager")

    @property
    def decode_torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.decode_dtype]


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_NAMES = {v: k for k, v in _DTYPES.items()}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """model/triton_kernels.py imports (Triton present: CUDA builds of torch)."""
    try:
        from . import triton_kernels  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _mm_out_dtype_ok(device: torch.device) -> bool:
    """This torch has ``torch.mm(..., out_dtype=torch.float32)`` for bf16 inputs (the split head). Probed on the
    meta device: a real CUDA matmul here would allocate cuBLAS's 32 MiB workspace before the caller's first
    measurement (seen as +32 MiB of baseline memory on the H200)."""
    try:
        a = torch.empty(8, 8, dtype=torch.bfloat16, device="meta")
        torch.mm(a, a, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True
