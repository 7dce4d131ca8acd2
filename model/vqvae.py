"""Multi-scale residual VQ-VAE of VAR (VAR_REFERENCE §4), state-dict compatible with ``vae_ch160v4096z32.pth``.

The image latent f (B, Cvae, pn_last, pn_last) is explained scale by scale: at scale si the residual is area-pooled
to pn×pn, each position takes its L2-nearest codebook entry, and the entry map is bicubic-upsampled, refined by
Phi_k (0.5·h + 0.5·conv3x3(h)) and added to f_hat. The VAR transformer predicts those per-scale indices.
"""
from __future__ import annotations

import functools
import logging
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .spec import VQVAESpec
from .vqvae_blocks import Decoder, Encoder

log = logging.getLogger(__name__)


def phi_index_map(num_scales: int, num_phi: int) -> tuple[int, ...]:
    """Phi used at each scale: the tick nearest to si/(S−1), first on ties (official PhiPartiallyShared).

    Ticks are linspace(1/(3K), 1−1/(3K), K) for K=4, else linspace(1/(2K), 1−1/(2K), K); numpy float64 exactly as
    the official code, since si=2 of S=10 sits on a midpoint and rounding decides it. A single scale (S=1) is the
    full-resolution scale, so it gets ratio 1 like the last scale of a multi-scale run.
    """
    if num_scales < 1 or num_phi < 1:
        raise ValueError(f"need num_scales >= 1 and num_phi >= 1, got {num_scales}, {num_phi}")
    k = num_phi
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    ratios = [si / (num_scales - 1) for si in range(num_scales)] if num_scales > 1 else [1.0]
    return tuple(int(np.argmin(np.abs(ticks - r))) for r in ratios)


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in): row j holds the weights F.interpolate(mode="bicubic", align_corners=False) gives output j,
    border clamping included, read off by interpolating the identity basis (bicubic is linear and separable)."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, 1, n_in)
    return F.interpolate(eye, size=(1, n_out), mode="bicubic").view(n_in, n_out).t().to(device, dtype).contiguous()


def bicubic_up(x_BChw: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling as two small matmuls, A_h · x · A_wᵀ. Same function as F.interpolate (to rounding);
    PyTorch's CUDA bicubic kernel loops over batch × channels inside each of the size² output threads (1.6 ms a
    call at batch 64, 14 ms per d30 generation on the H100)."""
    h, w = x_BChw.shape[-2:]
    a_h = _bicubic_matrix(h, size, x_BChw.device, x_BChw.dtype)
    a_w = a_h if w == h else _bicubic_matrix(w, size, x_BChw.device, x_BChw.dtype)
    with torch.autocast(x_BChw.device.type, enabled=False):     # in x's dtype, as F.interpolate, autocast or not
        return torch.matmul(torch.matmul(a_h, x_BChw), a_w.t())


class Phi(nn.Conv2d):
    """Phi(h) = (1−r)·h + r·conv3x3(h). Weights are cast to h's dtype so float32 f_hat updates stay float32."""

    def __init__(self, channels: int, quant_resi: float) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.to(h_BChw.dtype), self.bias.to(h_BChw.dtype)
        return h_BChw * (1 - self.resi_ratio) + F.conv2d(h_BChw, w, b, padding=1) * self.resi_ratio


class PhiPartiallyShared(nn.Module):
    """K Phi convs shared across the scales; holds them as ``qresi_ls`` (official key layout for K=4)."""

    def __init__(self, qresi_ls: nn.ModuleList) -> None:
        super().__init__()
        self.qresi_ls = qresi_ls


class MultiScaleQuantizer(nn.Module):
    """VectorQuantizer2: residual quantisation over ``patch_nums`` with a shared codebook and Phi refiners.

    ``share_quant_resi`` K>0 gives K partially shared Phis, 0 gives one per scale (keys ``quant_resi.qresi_ls.k``
    in every case; only K=4 is used by released models).
    """

    def __init__(self, vspec: VQVAESpec, patch_nums: Sequence[int]) -> None:
        super().__init__()
        self.patch_nums = tuple(int(p) for p in patch_nums)
        if not self.patch_nums:
            raise ValueError("patch_nums must name at least one scale")
        self.S, self.V, self.Cvae, self.beta = len(self.patch_nums), vspec.vocab_size, vspec.z_channels, vspec.beta
        k = vspec.share_quant_resi or self.S
        phis = [Phi(self.Cvae, vspec.quant_resi) if abs(vspec.quant_resi) > 1e-6 else nn.Identity() for _ in range(k)]
        self.quant_resi = PhiPartiallyShared(nn.ModuleList(phis))
        self.phi_index_S = phi_index_map(self.S, k)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(self.S, self.V))
        self.record_hit = 0  # training steps seen by the usage EMA (plain int: meta/to_empty safe, not saved)
        self.embedding = nn.Embedding(self.V, self.Cvae)  # default N(0,1), as the official (never re-initialised)

    # ---- helpers -------------------------------------------------------------------------------------------
    def phi(self, si: int) -> nn.Module:
        return self.quant_resi.qresi_ls[self.phi_index_S[si]]

    def _up(self, h_BChw: torch.Tensor, si: int, size: int) -> torch.Tensor:
        """Bicubic (align_corners=False) to the latent size, except at the last scale."""
        if si == self.S - 1:
            return h_BChw
        return bicubic_up(h_BChw, size)

    def _down(self, f_BChw: torch.Tensor, si: int) -> torch.Tensor:
        """Area (adaptive average) pooling to pn×pn, except at the last scale."""
        if si == self.S - 1:
            return f_BChw
        pn = self.patch_nums[si]
        return F.interpolate(f_BChw, size=(pn, pn), mode="area")

    def _nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """argmin_v ||z||² + ||e_v||² − 2 z·e_v, in float32."""
        e_VC = self.embedding.weight.detach().float()
        d_NV = z_NC.square().sum(1, keepdim=True) + e_VC.square().sum(1)
        d_NV = torch.addmm(d_NV, z_NC, e_VC.T, alpha=-2.0, beta=1.0)
        return d_NV.argmin(dim=1)

    def _check_latent(self, f_BChw: torch.Tensor) -> None:
        _, C, H, W = f_BChw.shape
        if C != self.Cvae or H != self.patch_nums[-1] or W != H:
            raise ValueError(f"latent of shape {tuple(f_BChw.shape)} does not match Cvae={self.Cvae} and the last "
                             f"patch size {self.patch_nums[-1]}")

    def _check_idx(self, idx_list: Sequence[torch.Tensor]) -> None:
        if len(idx_list) != self.S:
            raise ValueError(f"expected {self.S} index maps (one per scale), got {len(idx_list)}")
        for si, (idx, pn) in enumerate(zip(idx_list, self.patch_nums)):
            if idx.dim() != 2 or idx.shape[1] != pn * pn:
                raise ValueError(f"scale {si}: expected indices of shape (B, {pn * pn}), got {tuple(idx.shape)}")

    # ---- tokens <-> latents ---------------------------------------------------------------------------------
    def embed_idx(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """(B, pn²) indices -> (B, Cvae, pn, pn) codebook map, row-major (official transpose-then-reshape)."""
        h_BlC = self.embedding(idx_Bl)
        return h_BlC.transpose(1, 2).reshape(idx_Bl.shape[0], self.Cvae, pn, pn)

    def idx_to_fhat(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ_si Phi_k(bicubic(embed(idx_si))) in float32: the latent the decoder sees (official embed_to_fhat)."""
        self._check_idx(idx_list)
        pn_last = self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(idx_list[0].shape[0], self.Cvae, pn_last, pn_last, dtype=torch.float32)
        for si, (idx_Bl, pn) in enumerate(zip(idx_list, self.patch_nums)):
            h_BChw = self.embed_idx(idx_Bl, pn).float()
            f_hat = f_hat + self.phi(si)(self._up(h_BChw, si, pn_last))
        return f_hat

    def idx_to_var_input(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing inputs (B, L−1, Cvae) float32: after each scale but the last, area-pool the running f_hat
        to the next patch size (official idxBl_to_var_input)."""
        self._check_idx(idx_list)
        pn_last = self.patch_nums[-1]
        B = idx_list[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.Cvae, pn_last, pn_last, dtype=torch.float32)
        nexts: list[torch.Tensor] = []
        for si in range(self.S - 1):
            h_BChw = self.embed_idx(idx_list[si], self.patch_nums[si]).float()
            f_hat = f_hat + self.phi(si)(bicubic_up(h_BChw, pn_last))
            pn_next = self.patch_nums[si + 1]
            nxt_BCl = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, self.Cvae, -1)
            nexts.append(nxt_BCl.transpose(1, 2))
        if not nexts:
            return f_hat.new_zeros(B, 0, self.Cvae)
        return torch.cat(nexts, dim=1)

    def next_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One generation step (official get_next_autoregressive_input): f_hat += Phi(bicubic(h)); return the next
        scale's input map, area-pooled and flattened to (B, pn_next², Cvae), or None after the last scale.
        Runs in f_hat's dtype (keep f_hat float32)."""
        h_BChw = h_BChw.to(f_hat.dtype)
        f_hat = f_hat + self.phi(si)(self._up(h_BChw, si, f_hat.shape[-1]))
        if si == self.S - 1:
            return f_hat, None
        pn = self.patch_nums[si + 1]
        nxt_BlC = F.interpolate(f_hat, size=(pn, pn), mode="area").flatten(2).transpose(1, 2)
        return f_hat, nxt_BlC

    @torch.no_grad()
    def f_to_idx(self, f_BChw: torch.Tensor, return_fhat: bool = False
                 ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """Residual quantisation of a latent into S LongTensors (B, pn²); optionally also the float32 f_hat."""
        self._check_latent(f_BChw)
        with torch.autocast(f_BChw.device.type, enabled=False):
            f_rest = f_BChw.float().clone()
            f_hat = torch.zeros_like(f_rest)
            B, C, H, _ = f_rest.shape
            idx_list: list[torch.Tensor] = []
            for si, pn in enumerate(self.patch_nums):
                z_NC = self._down(f_rest, si).permute(0, 2, 3, 1).reshape(-1, C)
                idx_Bl = self._nearest(z_NC).view(B, pn * pn)
                h_BChw = self.phi(si)(self._up(self.embed_idx(idx_Bl, pn).float(), si, H))
                f_hat, f_rest = f_hat + h_BChw, f_rest - h_BChw
                idx_list.append(idx_Bl)
        return (idx_list, f_hat) if return_fhat else idx_list

    # ---- training -----------------------------------------------------------------------------------------
    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Training path: straight-through f_hat, VQ loss = mean_si β·MSE(f_hat.detach(), f) + MSE(f_hat, f.detach()),
        and per-scale codebook usage; the usage EMA (ema_vocab_hit_SV) is updated in training mode."""
        self._check_latent(f_BChw)
        with torch.autocast(f_BChw.device.type, enabled=False):
            f = f_BChw.float()
            f_ng = f.detach()
            f_rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
            B, C, H, _ = f.shape
            loss = f.new_zeros(())
            usage, perplexity = [], []
            for si, pn in enumerate(self.patch_nums):
                z_NC = self._down(f_rest, si).permute(0, 2, 3, 1).reshape(-1, C)
                idx_N = self._nearest(z_NC)
                hit_V = torch.bincount(idx_N, minlength=self.V).float()
                h_BChw = self.phi(si)(self._up(self.embed_idx(idx_N.view(B, pn * pn), pn).float(), si, H))
                f_hat = f_hat + h_BChw
                f_rest = f_rest - h_BChw.detach()
                if self.training:
                    self._update_ema(si, hit_V)
                p_V = hit_V / hit_V.sum()
                usage.append((hit_V > 0).float().mean())
                perplexity.append(torch.exp(-(p_V * torch.log(p_V.clamp_min(1e-12))).sum()))
                loss = loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
            if self.training:
                self.record_hit += 1
            loss = loss / self.S
            f_hat_st = (f_hat.detach() - f_ng) + f  # straight-through: value f_hat, gradient of f
        info = {"usage_S": torch.stack(usage).detach(), "perplexity_S": torch.stack(perplexity).detach()}
        return f_hat_st, loss, info

    @torch.no_grad()
    def _update_ema(self, si: int, hit_V: torch.Tensor) -> None:
        """Official schedule: copy on the first step, decay 0.9 for 100 steps, then 0.99."""
        n = self.record_hit
        ema_V = self.ema_vocab_hit_SV[si]
        if n == 0:
            ema_V.copy_(hit_V)
        else:
            decay = 0.9 if n < 100 else 0.99
            ema_V.mul_(decay).add_(hit_V, alpha=1 - decay)

    @torch.no_grad()
    def restart_dead_codes(self, z_samples: torch.Tensor, threshold: float = 1e-3,
                           generator: torch.Generator | None = None) -> int:
        """Re-initialise entries whose EMA usage (summed over scales, hits per step) is below ``threshold`` from random
        rows of ``z_samples`` ((N, Cvae) or (B, Cvae, h, w) encoder outputs); their EMA restarts at the per-scale
        mean so they get a grace period. Returns the number of restarted entries."""
        z_NC = z_samples.permute(0, 2, 3, 1) if z_samples.dim() == 4 else z_samples
        z_NC = z_NC.reshape(-1, self.Cvae)
        dead_D = (self.ema_vocab_hit_SV.sum(0) < threshold).nonzero().squeeze(1)
        n = dead_D.numel()
        if n == 0 or z_NC.shape[0] == 0:
            return 0
        pick_D = torch.randint(z_NC.shape[0], (n,), generator=generator).to(z_NC.device)
        w = self.embedding.weight
        w[dead_D] = z_NC[pick_D].to(device=w.device, dtype=w.dtype)
        self.ema_vocab_hit_SV[:, dead_D] = self.ema_vocab_hit_SV.mean(dim=1, keepdim=True)
        log.info("restarted %d dead codebook entries of %d", n, self.V)
        return n


class VQVAE(nn.Module):
    """The official VQVAE: encoder, decoder, quant_conv, post_quant_conv, quantize (key names as the checkpoint)."""

    def __init__(self, vspec: VQVAESpec, patch_nums: Sequence[int]) -> None:
        super().__init__()
        self.vspec, self.patch_nums = vspec, tuple(int(p) for p in patch_nums)
        self.encoder = Encoder(vspec)
        self.decoder = Decoder(vspec)
        self.quantize = MultiScaleQuantizer(vspec, self.patch_nums)
        self.quant_conv = nn.Conv2d(vspec.z_channels, vspec.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(vspec.z_channels, vspec.z_channels, 3, padding=1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.vspec.downsample

    def place(self, device: torch.device | str) -> "VQVAE":
        """Move what generation uses (quantizer, post-quant conv, decoder) to ``device``; the encoder side stays
        where it is until ``encode`` is called on that device. Generation never encodes: on var-d30's VQ-VAE the
        encoder is 44 M parameters, 168 MiB in float32 that a GPU would otherwise hold through every run."""
        for m in (self.quantize, self.post_quant_conv, self.decoder):
            m.to(device)
        return self

    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Image in [−1,1] -> continuous latent f = quant_conv(encoder(img)), (B, Cvae, pn_last, pn_last). The
        encoder moves to the images' device on first use there (``place`` leaves it behind)."""
        if self.quant_conv.weight.device != img_B3HW.device:
            self.encoder.to(img_B3HW.device)
            self.quant_conv.to(img_B3HW.device)
        return self.quant_conv(self.encoder(img_B3HW.to(self.quant_conv.weight.dtype)))

    @torch.no_grad()
    def img_to_idx(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Image in [−1,1] -> S LongTensors (B, pn²): the VAR training targets (official img_to_idxBl)."""
        if img_B3HW.dim() != 4 or img_B3HW.shape[-1] != self.image_size or img_B3HW.shape[-2] != self.image_size:
            size = self.image_size
            raise ValueError(f"expected images (B, 3, {size}, {size}), got {tuple(img_B3HW.shape)}")
        return self.quantize.f_to_idx(self.encode(img_B3HW))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """decoder(post_quant_conv(f_hat)) clamped to [−1,1], returned in [0,1] as float32."""
        x = self.decoder(self.post_quant_conv(f_hat.to(self.post_quant_conv.weight.dtype)))
        return x.clamp(-1, 1).add(1).mul(0.5).float()

    @torch.no_grad()
    def idx_to_img(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """S index maps -> images (B, 3, H, W) in [0,1]."""
        return self.fhat_to_img(self.quantize.idx_to_fhat(idx_list))

    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Training: (reconstruction, VQ loss, usage info). The reconstruction is the raw decoder output (target range
        [−1,1]); it is not clamped, so the reconstruction loss keeps its gradient everywhere."""
        f_hat_st, vq_loss, info = self.quantize(self.encode(img_B3HW))
        recon_B3HW = self.decoder(self.post_quant_conv(f_hat_st.to(self.post_quant_conv.weight.dtype)))
        return recon_B3HW, vq_loss, info

    def restart_dead_codes(self, z_samples: torch.Tensor, threshold: float = 1e-3,
                           generator: torch.Generator | None = None) -> int:
        """See MultiScaleQuantizer.restart_dead_codes; z_samples are encoder outputs (``encode``)."""
        return self.quantize.restart_dead_codes(z_samples, threshold, generator)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """As nn.Module, but a checkpoint usage EMA with another number of scales is replaced by zeros (the official
        keeps its own freshly built zeros), so the released file loads into any scale configuration."""
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape[0] != self.quantize.ema_vocab_hit_SV.shape[0]:
            state_dict = dict(state_dict)
            state_dict[key] = torch.zeros_like(self.quantize.ema_vocab_hit_SV, device=state_dict[key].device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
