"""Encoder/decoder building blocks of the official VQ-VAE (VAR_REFERENCE §4.2), key-compatible with
``vae_ch160v4096z32.pth``.

Module and attribute names (``down.{i}.block.{j}.norm1``, ``attn.{j}.qkv``, ``mid.block_1``, ``up.{i}.upsample.conv``,
...) are the checkpoint's keys, so they must not be renamed. Weights use PyTorch's default init (the official VAE is
never initialised, §1.1; ours must be finite everywhere).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import VQVAESpec


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm(groups, C, eps=1e-6, affine) as the official ``Normalize`` (32 groups in the released VAE)."""
    if channels % groups:
        raise ValueError(f"norm_groups={groups} does not divide {channels} channels")
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h))); out = shortcut(x) + h (1x1 nin_shortcut if in != out)."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        h_BChw = self.conv1(F.silu(self.norm1(x_BChw)))
        h_BChw = self.conv2(F.silu(self.norm2(h_BChw)))
        return self.nin_shortcut(x_BChw) + h_BChw


class AttnBlock(nn.Module):
    """Single-head self-attention over all h·w positions with one fused 1x1 ``qkv`` conv (q, k, v in that order)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x_BChw.shape
        qkv_B3CN = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, h * w)
        q_B1NC, k_B1NC, v_B1NC = (t.transpose(1, 2).unsqueeze(1) for t in qkv_B3CN.unbind(1))
        # SDPA's default scale is C^-0.5, the official w_ratio
        o_B1NC = F.scaled_dot_product_attention(q_B1NC, k_B1NC, v_B1NC)
        o_BChw = o_B1NC.squeeze(1).transpose(1, 2).reshape(B, C, h, w)
        return x_BChw + self.proj_out(o_BChw)


class Downsample2x(nn.Module):
    """Zero-pad right/bottom by 1, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BChw, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2x(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv with padding 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2, mode="nearest"))


def _mid(channels: int, groups: int, using_mid_sa: bool) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, groups)
    mid.attn_1 = AttnBlock(channels, groups) if using_mid_sa else nn.Identity()
    mid.block_2 = ResnetBlock(channels, channels, groups)
    return mid


def _run_mid(mid: nn.Module, h_BChw: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h_BChw)))


class Encoder(nn.Module):
    """conv_in; per level num_res_blocks ResnetBlocks (+ attention at the lowest resolution) and a Downsample2x
    except at the last level; mid (block, attn, block); norm_out, SiLU, conv_out to z_channels."""

    def __init__(self, v: VQVAESpec) -> None:
        super().__init__()
        g, levels = v.norm_groups, len(v.ch_mult)
        self.conv_in = nn.Conv2d(v.in_channels, v.ch, 3, padding=1)
        in_mult = (1,) + tuple(v.ch_mult)
        self.down = nn.ModuleList()
        c_out = v.ch
        for i in range(levels):
            c_in, c_out = v.ch * in_mult[i], v.ch * v.ch_mult[i]
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(v.num_res_blocks):
                level.block.append(ResnetBlock(c_in, c_out, g))
                c_in = c_out
                if i == levels - 1 and v.using_sa:
                    level.attn.append(AttnBlock(c_out, g))
            if i != levels - 1:
                level.downsample = Downsample2x(c_out)
            self.down.append(level)
        self.mid = _mid(c_out, g, v.using_mid_sa)
        self.norm_out = group_norm(c_out, g)
        self.conv_out = nn.Conv2d(c_out, v.z_channels, 3, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h_BChw = self.conv_in(img_B3HW)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h_BChw = block(h_BChw)
                if len(level.attn):
                    h_BChw = level.attn[j](h_BChw)
            if i != len(self.down) - 1:
                h_BChw = level.downsample(h_BChw)
        h_BChw = _run_mid(self.mid, h_BChw)
        return self.conv_out(F.silu(self.norm_out(h_BChw)))


class Decoder(nn.Module):
    """conv_in from z_channels; mid; levels from the last down to 0 with num_res_blocks+1 ResnetBlocks (+ attention
    at the lowest resolution) and an Upsample2x except at level 0; norm_out, SiLU, conv_out to 3 channels.
    ``up`` is stored in level order, so ``up[-1]`` runs first (official key layout)."""

    def __init__(self, v: VQVAESpec) -> None:
        super().__init__()
        g, levels = v.norm_groups, len(v.ch_mult)
        c_in = v.ch * v.ch_mult[-1]
        self.conv_in = nn.Conv2d(v.z_channels, c_in, 3, padding=1)
        self.mid = _mid(c_in, g, v.using_mid_sa)
        ups: list[nn.Module] = []
        for i in reversed(range(levels)):
            c_out = v.ch * v.ch_mult[i]
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(v.num_res_blocks + 1):
                level.block.append(ResnetBlock(c_in, c_out, g))
                c_in = c_out
                if i == levels - 1 and v.using_sa:
                    level.attn.append(AttnBlock(c_out, g))
            if i != 0:
                level.upsample = Upsample2x(c_out)
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(c_in, g)
        self.conv_out = nn.Conv2d(c_in, v.in_channels, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h_BChw = _run_mid(self.mid, self.conv_in(z_BChw))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h_BChw = block(h_BChw)
                if len(level.attn):
                    h_BChw = level.attn[j](h_BChw)
            if i != 0:
                h_BChw = level.upsample(h_BChw)
        return self.conv_out(F.silu(self.norm_out(h_BChw)))
