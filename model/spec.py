"""Frozen model specs and the registry: the single source of truth for every size in varbench.

Official rules (VAR_REFERENCE §1.1): width 64·d, heads d, drop-path 0.1·d/24, init std sqrt(1/(3C)).
Derived values (tokens per scale, begin/end offsets, L) are computed once in ``__post_init__``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class VQVAESpec:
    """Multi-scale residual VQ-VAE (VAR_REFERENCE §4). Defaults are the official vae_ch160v4096z32."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    using_sa: bool = True
    using_mid_sa: bool = True
    share_quant_resi: int = 4
    quant_resi: float = 0.5
    beta: float = 0.25
    in_channels: int = 3
    norm_groups: int = 32

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class VARSpec:
    """One VAR transformer + its VQ-VAE. ``width``/``heads`` may break the 64·d rule (tiny, toy, subnets)."""

    name: str
    depth: int
    width: int
    heads: int
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    num_classes: int = 1000
    vae: VQVAESpec = field(default_factory=VQVAESpec)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1
    norm_eps: float = 1e-6
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    official: bool = False          # weights published by FoundationVision (resolvable from the HF hub)
    hf_file: str | None = None      # e.g. "var_d30.pth"
    default_switch: int | None = None   # first scale of the subnet by default; None -> the paper's 6, or S-1
    # derived (filled in __post_init__)
    num_scales: int = field(init=False)
    tokens: tuple[int, ...] = field(init=False)          # pn² per scale
    begin_ends: tuple[tuple[int, int], ...] = field(init=False)
    L: int = field(init=False)
    head_dim: int = field(init=False)
    mlp_hidden: int = field(init=False)
    init_std: float = field(init=False)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not self.patch_nums or self.patch_nums[0] != 1:
            raise ValueError("patch_nums must start with 1 (one SOS token)")
        toks = tuple(pn * pn for pn in self.patch_nums)
        be, cur = [], 0
        for t in toks:
            be.append((cur, cur + t))
            cur += t
        object.__setattr__(self, "num_scales", len(self.patch_nums))
        if self.default_switch is None:            # the paper's 6 of 10 scales; fewer scales: the last one only
            object.__setattr__(self, "default_switch", min(6, self.num_scales - 1))
        if not 0 <= self.default_switch < self.num_scales:
            raise ValueError(f"default_switch {self.default_switch} is outside 0..{self.num_scales - 1}")
        object.__setattr__(self, "tokens", toks)
        object.__setattr__(self, "begin_ends", tuple(be))
        object.__setattr__(self, "L", cur)
        object.__setattr__(self, "head_dim", self.width // self.heads)
        object.__setattr__(self, "mlp_hidden", round(self.width * self.mlp_ratio))
        object.__setattr__(self, "init_std", math.sqrt(1.0 / self.width / 3))

    @property
    def first_l(self) -> int:
        return 1

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.vae.downsample

    @property
    def level_of_token(self) -> tuple[int, ...]:
        return tuple(si for si, t in enumerate(self.tokens) for _ in range(t))

    def with_depth(self, depth: int) -> "VARSpec":
        """Same width/heads/scales, another depth: the standalone model of a d-block subnet."""
        return replace(self, name=f"{self.name}-sub{depth}", depth=depth, official=False, hf_file=None)


def var_spec(depth: int, *, name: str | None = None, patch_nums: tuple[int, ...] = PATCH_NUMS_256,
             shared_aln: bool = False, width: int | None = None, heads: int | None = None,
             vae: VQVAESpec | None = None, num_classes: int = 1000, **kw) -> VARSpec:
    """Build any depth with the official rules: width 64·d, heads d, drop-path 0.1·d/24."""
    return VARSpec(
        name=name or f"var-d{depth}", depth=depth, width=width or 64 * depth, heads=heads or depth,
        patch_nums=tuple(patch_nums), shared_aln=shared_aln, vae=vae or VQVAESpec(),
        num_classes=num_classes, drop_path_rate=0.1 * depth / 24, **kw)


TINY_VAE = VQVAESpec(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
                     share_quant_resi=4, norm_groups=8)
TOY_VAE = VQVAESpec(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                    share_quant_resi=4, norm_groups=8)

SPECS: dict[str, VARSpec] = {
    "var-d16": var_spec(16, official=True, hf_file="var_d16.pth"),
    "var-d20": var_spec(20, official=True, hf_file="var_d20.pth"),
    "var-d24": var_spec(24, official=True, hf_file="var_d24.pth"),
    "var-d30": var_spec(30, official=True, hf_file="var_d30.pth"),
    "var-d36": var_spec(36, patch_nums=PATCH_NUMS_512, shared_aln=True, official=True, hf_file="var_d36.pth"),
    # random-weights spec for tests and CPU smoke runs: 4 blocks, 4 scales, 64-token vocab, 16x16 images
    "var-tiny": var_spec(4, name="var-tiny", width=64, heads=2, patch_nums=(1, 2, 3, 4), vae=TINY_VAE,
                         num_classes=10),
    # the shipped toy model (trained by varbench itself): 12 blocks, 7 scales, 32x32 images
    "var-toy": var_spec(12, name="var-toy", width=128, heads=4, patch_nums=(1, 2, 3, 4, 5, 6, 8),
                        vae=TOY_VAE, num_classes=10, default_switch=4),
}

HF_REPO = "FoundationVision/var"
HF_VAE_FILE = "vae_ch160v4096z32.pth"


def get(name: str) -> VARSpec:
    """Registry lookup with a one-line error naming the known models."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]
