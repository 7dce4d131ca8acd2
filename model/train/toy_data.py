"""Procedural, class-conditional toy images: the offline data set of the shipped ``var-toy`` model.

Ten classes = five shapes (circle, square, triangle, cross, ring) x two fills (solid, striped). The class is decided
by coarse structure — the silhouette and whether the fill alternates in wide stripes (period 4.5-7 px) — while
colour, position, size, rotation, a gradient + low-frequency-noise background and a fine texture are nuisances.
Everything is rendered for a whole batch at once with torch tensor ops (no download, no per-image Python loop).

Determinism: ``ToyDataset`` draws each image's random numbers from a counter-based hash of (seed, index), so image i
depends only on (seed, i), never on batch boundaries or on how many images were drawn before. The fine textures
come from a fixed bank (part of the data set's definition, independent of the seed), picked and shifted per image.
Images are quantised to 8 bits, like an image file, then mapped to [-1, 1] (the VQ-VAE's input range).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..spec import SPECS

SHAPES = ("circle", "square", "triangle", "cross", "ring")
PATTERNS = ("solid", "striped")
CLASS_NAMES: tuple[str, ...] = tuple(f"{s}-{p}" for s in SHAPES for p in PATTERNS)   # label = 2·shape + pattern
DEFAULT_IMAGE_SIZE = SPECS["var-toy"].image_size

_BANK_SIZE = 256
_BANK_SEED = 0x70F0DA7A
_LOWFREQ = 4                                  # low-frequency background noise grid (per channel)
# columns of the per-image uniform table
(_CX, _CY, _SIZE, _ROT, _FG_BRIGHT, _FG, _C2, _BG_A, _BG_B, _GRAD_ANGLE, _PERIOD, _PHASE, _STRIPE_ANGLE, _TEX,
 _ROLL_X, _ROLL_Y, _TEX_AMP, _LF_AMP, _SHADE, _LF) = (
    0, 1, 2, 3, 4, 5, 8, 11, 14, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27)
N_UNIFORMS = _LF + 3 * _LOWFREQ * _LOWFREQ


def _check(image_size: int, num_classes: int) -> None:
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 2..{len(CLASS_NAMES)}, got {num_classes}")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a cheap counter-based hash."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hashed_uniforms(seed: int, indices: np.ndarray, k: int = N_UNIFORMS) -> np.ndarray:
    """(len(indices), k) float64 uniforms in [0, 1) that depend only on (seed, index, column)."""
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    cols = np.arange(k, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        z = _splitmix64(_splitmix64(base ^ idx) + cols * np.uint64(0xD1B54A32D192ED03))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@lru_cache(maxsize=4)
def _texture_bank(image_size: int) -> torch.Tensor:
    """(BANK, 3, H, W) zero-mean textures in about [-1, 1]: white noise mixed with 2x-coarser noise."""
    g = torch.Generator().manual_seed(_BANK_SEED + image_size)
    h = image_size
    fine = torch.randn(_BANK_SIZE, 3, h, h, generator=g)
    coarse = torch.randn(_BANK_SIZE, 3, (h + 1) // 2, (h + 1) // 2, generator=g)
    coarse = F.interpolate(coarse, size=(h, h), mode="nearest")
    mix = torch.rand(_BANK_SIZE, 1, 1, 1, generator=g)
    return (mix * fine + (1 - mix) * coarse).clamp(-2.5, 2.5) / 2.5


def _signed_distance(shape: int, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance in pixels (positive inside) of one shape kind in its local frame."""
    if shape == 0:                                            # circle
        return r - torch.sqrt(u * u + v * v)
    if shape == 1:                                            # square, half-side 0.8 r
        return 0.8 * r - torch.maximum(u.abs(), v.abs())
    if shape == 2:                                            # equilateral triangle, circumradius r
        d = torch.stack([u * math.cos(a) + v * math.sin(a) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
        return 0.5 * r - d.amax(0)
    if shape == 3:                                            # cross, arm half-width 0.3 r
        w = 0.3 * r
        bar_h = torch.minimum(w - v.abs(), r - u.abs())
        bar_v = torch.minimum(w - u.abs(), r - v.abs())
        return torch.maximum(bar_h, bar_v)
    rad = torch.sqrt(u * u + v * v)                          # ring, inner radius 0.55 r
    return torch.minimum(rad - 0.55 * r, r - rad)


def render_uniforms(labels: torch.Tensor, u_BK: np.ndarray, image_size: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """Render images from labels and a table of per-image uniforms (``N_UNIFORMS`` columns) -> (B,3,H,W) in [-1,1]."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(f"labels must be in 0..{len(CLASS_NAMES) - 1}")
    B, H = labels.numel(), image_size
    u = torch.as_tensor(np.asarray(u_BK), dtype=torch.float32).reshape(B, -1)
    if u.shape[1] < N_UNIFORMS:
        raise ValueError(f"need {N_UNIFORMS} uniforms per image, got {u.shape[1]}")
    col = lambda c, n=1: u[:, c:c + n]                        # noqa: E731  (B, n)
    shape_B, striped_B = labels // 2, (labels % 2).bool()

    # geometry: radius 0.2-0.38 of the image, centre keeps the shape inside, any rotation
    r_B = H * (0.2 + 0.18 * col(_SIZE)[:, 0])
    cx_B = r_B + (H - 2 * r_B) * col(_CX)[:, 0]
    cy_B = r_B + (H - 2 * r_B) * col(_CY)[:, 0]
    rot_B = 2 * math.pi * col(_ROT)[:, 0]
    pix = torch.arange(H, dtype=torch.float32) + 0.5
    dx_BHW = pix.view(1, 1, H) - cx_B.view(B, 1, 1)
    dy_BHW = pix.view(1, H, 1) - cy_B.view(B, 1, 1)
    cos, sin = rot_B.cos().view(B, 1, 1), rot_B.sin().view(B, 1, 1)
    lu_BHW, lv_BHW = cos * dx_BHW + sin * dy_BHW, -sin * dx_BHW + cos * dy_BHW

    sd_BHW = torch.empty(B, H, H)
    for s in range(len(SHAPES)):
        sel = (shape_B == s).nonzero().flatten()
        if sel.numel():
            sd_BHW[sel] = _signed_distance(s, lu_BHW[sel], lv_BHW[sel], r_B[sel].view(-1, 1, 1))
    mask_B1HW = (sd_BHW + 0.5).clamp(0, 1).unsqueeze(1)       # one-pixel anti-aliased edge

    # background: mid-tone gradient between two colours + low-frequency noise
    ga = 2 * math.pi * col(_GRAD_ANGLE)[:, 0]
    t_BHW = ((dx_BHW + cx_B.view(B, 1, 1) - H / 2) * ga.cos().view(B, 1, 1)
             + (dy_BHW + cy_B.view(B, 1, 1) - H / 2) * ga.sin().view(B, 1, 1)) / H + 0.5
    bg_a, bg_b = 0.3 + 0.4 * col(_BG_A, 3), 0.3 + 0.4 * col(_BG_B, 3)
    t_B1HW = t_BHW.clamp(0, 1).unsqueeze(1)
    bg_B3HW = bg_a.view(B, 3, 1, 1) * (1 - t_B1HW) + bg_b.view(B, 3, 1, 1) * t_B1HW
    lf = (col(_LF, 3 * _LOWFREQ * _LOWFREQ).view(B, 3, _LOWFREQ, _LOWFREQ) - 0.5) * 2
    lf_B3HW = F.interpolate(lf, size=(H, H), mode="bicubic", align_corners=False)
    bg_B3HW = bg_B3HW + 0.12 * col(_LF_AMP).view(B, 1, 1, 1) * lf_B3HW

    # foreground: bright or dark (contrasting with the mid-tone background); stripes use the opposite extreme
    bright_B = col(_FG_BRIGHT)[:, 0] < 0.5
    hi, lo = 0.65 + 0.35 * col(_FG, 3), 0.35 * col(_FG, 3)
    fg_B3 = torch.where(bright_B.view(B, 1), hi, lo)
    c2_B3 = torch.where(bright_B.view(B, 1), 0.35 * col(_C2, 3), 0.65 + 0.35 * col(_C2, 3))
    shade_BHW = 1 + 0.3 * (col(_SHADE)[:, 0].view(B, 1, 1) - 0.5) * lv_BHW / r_B.view(B, 1, 1)
    fg_B3HW = fg_B3.view(B, 3, 1, 1) * shade_BHW.unsqueeze(1)
    period_B = 4.5 + 2.5 * col(_PERIOD)[:, 0]
    sa = 2 * math.pi * col(_STRIPE_ANGLE)[:, 0]
    st_BHW = lu_BHW * sa.cos().view(B, 1, 1) + lv_BHW * sa.sin().view(B, 1, 1)
    wave_BHW = torch.sin(2 * math.pi * st_BHW / period_B.view(B, 1, 1) + 2 * math.pi * col(_PHASE).view(B, 1, 1))
    stripe_B1HW = (0.5 + 2.0 * wave_BHW).clamp(0, 1).unsqueeze(1)
    stripe_B1HW = torch.where(striped_B.view(B, 1, 1, 1), stripe_B1HW, torch.ones_like(stripe_B1HW))
    inside_B3HW = stripe_B1HW * fg_B3HW + (1 - stripe_B1HW) * c2_B3.view(B, 3, 1, 1)

    img_B3HW = mask_B1HW * inside_B3HW + (1 - mask_B1HW) * bg_B3HW

    # fine detail: a bank texture, shifted per image, over the whole picture
    bank = _texture_bank(H)
    tex_idx = (col(_TEX)[:, 0] * _BANK_SIZE).long().clamp_max(_BANK_SIZE - 1)
    ar = torch.arange(H)
    rows_BH = (ar.view(1, H) + (col(_ROLL_Y) * H).long()) % H
    cols_BW = (ar.view(1, H) + (col(_ROLL_X) * H).long()) % H
    tex_B3HW = bank[tex_idx.view(B, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1),
                    rows_BH.view(B, 1, H, 1), cols_BW.view(B, 1, 1, H)]
    img_B3HW = img_B3HW + (0.02 + 0.06 * col(_TEX_AMP)).view(B, 1, 1, 1) * tex_B3HW

    img_B3HW = torch.round(img_B3HW.clamp(0, 1) * 255) / 255     # 8-bit, like an image file
    return img_B3HW * 2 - 1


def render_batch(labels: torch.Tensor | np.ndarray | list[int], rng_or_seed: np.random.Generator | int,
                 image_size: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """Fresh images for the given labels, random numbers drawn from ``rng_or_seed`` -> (B,3,H,W) float32 in [-1,1]."""
    _check(image_size, len(CLASS_NAMES))
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return render_uniforms(labels, rng.random((labels.numel(), N_UNIFORMS)), image_size)


def labels_for(indices: np.ndarray | torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Label of image i is i mod num_classes: every block of num_classes consecutive images is balanced."""
    return torch.as_tensor(np.asarray(indices) % num_classes, dtype=torch.long)


def render_indices(indices: np.ndarray | torch.Tensor | range, seed: int, image_size: int = DEFAULT_IMAGE_SIZE,
                   num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the given indices of the (seed)-data set; image i depends only on (seed, i)."""
    _check(image_size, num_classes)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError("indices must be >= 0")
    labels = labels_for(idx, num_classes)
    return render_uniforms(labels, hashed_uniforms(seed, idx), image_size), labels


class ToyDataset(Dataset):
    """``n`` toy images of one seed, rendered once at construction (8-bit cache, about 3 KB an image at 32x32).

    ``ds[i] -> (image (3,H,W) float32 in [-1,1], label int)``; ``ds.batch(idx)`` serves trainers that batch by
    indexing instead of going through a DataLoader; ``ds.labels`` holds all labels.
    """

    def __init__(self, n: int, seed: int, image_size: int = DEFAULT_IMAGE_SIZE, num_classes: int = 10,
                 chunk: int = 4096) -> None:
        _check(image_size, num_classes)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.seed, self.image_size, self.num_classes = n, seed, image_size, num_classes
        self._u8 = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
        for start in range(0, n, chunk):
            img, _ = render_indices(range(start, min(n, start + chunk)), seed, image_size, num_classes)
            self._u8[start:start + img.shape[0]] = torch.round((img + 1) * 127.5).to(torch.uint8)
        self.labels = labels_for(np.arange(n), num_classes)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        return self._u8[i].float() / 127.5 - 1, int(self.labels[i])

    def batch(self, idx: torch.Tensor | np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B,3,H,W) float32 in [-1,1] and labels of a batch of indices, without a DataLoader."""
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return self._u8[idx_t].float() / 127.5 - 1, self.labels[idx_t]

    @property
    def images(self) -> torch.Tensor:
        """All images, (n,3,H,W) float32 in [-1,1] (a new tensor each call)."""
        return self._u8.float() / 127.5 - 1
