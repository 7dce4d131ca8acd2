"""Quality metrics for depth schedules (DESIGN "Quality metrics"): data-free fidelity to the full network
(per-scale KL, token agreement, PSNR/SSIM of coupled samples) and the Fréchet distance behind FID / toy FD.

Intervals come from scipy (``varbench.quality.intervals``). Three pieces stay ours, each for a measured reason and
each tested against the library it replaces: SSIM is one batched float64 conv over all images (scikit-image loops
over images in numpy; ours is checked against a scipy.ndimage Gaussian-filter SSIM), PSNR is one line, and the
Fréchet trace term is the eigen-decomposition of the symmetric s1^½ s2 s1^½ (measured against
``scipy.linalg.sqrtm(s1 @ s2)``: equal to 1e-7 relative, 3x faster at 2048-d n=64 and 5.6x at n=4000, and never
complex where sqrtm leaves 1e-7 imaginary parts on rank-deficient covariances). torch-fidelity is only used,
optionally, to run the Inception network that turns images into 2048-d features.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from varbench.errors import EnvironmentUnavailable, UsageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# ---- next-scale distributions -------------------------------------------------------------------------------
def kl_per_scale(logits_ref_BLV: torch.Tensor, logits_BLV: torch.Tensor,
                 begin_ends: Sequence[tuple[int, int]]) -> list[float]:
    """KL(ref || other) of the softmax distributions, averaged over the tokens of each scale and the batch.

    Computed in float64 (log_softmax) so that equal logits give exactly 0 and 4096-way softmaxes stay stable.
    """
    return [float(v) for v in kl_per_sample_scale(logits_ref_BLV, logits_BLV, begin_ends).mean(0)]


def kl_per_sample_scale(logits_ref_BLV: torch.Tensor, logits_BLV: torch.Tensor,
                        begin_ends: Sequence[tuple[int, int]]) -> torch.Tensor:
    """KL(ref || other) of the full softmax per image and scale, mean over the scale's tokens: (B, S) float64
    (KL >= 0 exactly; float64 round-off can give -1e-17 on near-equal distributions, clamped)."""
    _check_logits(logits_ref_BLV, logits_BLV)
    cols = []
    for b, e in begin_ends:
        lp_ref = F.log_softmax(logits_ref_BLV[:, b:e].double(), dim=-1)
        lp = F.log_softmax(logits_BLV[:, b:e].to(lp_ref.device).double(), dim=-1)
        cols.append((lp_ref.exp() * (lp_ref - lp)).sum(-1).mean(-1).clamp_min(0.0))
    return torch.stack(cols, dim=1)


def _check_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"logits must both be (B, L, V); got {tuple(a.shape)} and {tuple(b.shape)}")


def guided_logits(cond_BLV: torch.Tensor, uncond_BLV: torch.Tensor, begin_ends: Sequence[tuple[int, int]],
                  cfg: float) -> torch.Tensor:
    """The logits the sampler sees: (1+t)·cond − t·uncond with the official ramp t = cfg·si/(S−1) (VAR_REFERENCE
    §3.6.4), computed as generation does (``torch.lerp(uncond, cond, 1+t)``, float32)."""
    _check_logits(cond_BLV, uncond_BLV)
    S = len(begin_ends)
    out = torch.empty_like(cond_BLV, dtype=torch.float32)
    for si, (b, e) in enumerate(begin_ends):
        t = cfg * si / (S - 1) if S > 1 else cfg
        out[:, b:e] = torch.lerp(uncond_BLV[:, b:e].float(), cond_BLV[:, b:e].float(), 1 + t)
    return out


def truncated_probs(logits_NV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The distribution ``model.sampling.sample_tokens`` draws from, float64, zero outside the kept set.

    Same truncation as the sampler: ``torch.topk`` keeps exactly k (top_k=1: the argmax, greedy), then top-p on
    the k survivors (``top_p_keep``, computed on the float32 logits as the sampler does), renormalised.
    """
    from model.sampling import top_p_keep

    V = logits_NV.shape[-1]
    x = logits_NV.float()
    if top_k == 1:
        return F.one_hot(x.argmax(-1), V).double()
    if 0 < top_k < V:
        vals, ids = x.topk(top_k, dim=-1, sorted=True)
    elif 0 < top_p < 1:
        vals, ids = x.sort(dim=-1, descending=True)
    else:
        return x.double().softmax(-1)
    if 0 < top_p < 1:
        vals = vals.masked_fill(~top_p_keep(vals, top_p), -torch.inf)
    return torch.zeros(x.shape, dtype=torch.float64, device=x.device).scatter_(-1, ids, vals.double().softmax(-1))


# the uniform mass mixed into both truncated distributions before the KL (see sampled_kl_per_sample_scale)
SAMPLED_KL_EPS = 1e-4


def smoothed_kl(p_NV: torch.Tensor, q_NV: torch.Tensor, eps: float = SAMPLED_KL_EPS) -> torch.Tensor:
    """KL(p_ε || q_ε) per row, p_ε = (1−ε)·p + ε/V (and q_ε alike): finite when the supports differ, exactly 0
    when p == q. A token p keeps with mass m that q cut costs at most m·ln(mV/ε); every row is <= ln(V/ε)."""
    V = p_NV.shape[-1]
    p_e = p_NV.double() * (1 - eps) + eps / V
    q_e = q_NV.double().to(p_e.device) * (1 - eps) + eps / V
    return (p_e * (p_e.log() - q_e.log())).sum(-1).clamp_min(0.0)


def sampled_kl_per_sample_scale(guided_ref_BLV: torch.Tensor, guided_BLV: torch.Tensor,
                                begin_ends: Sequence[tuple[int, int]], top_k: int, top_p: float,
                                eps: float = SAMPLED_KL_EPS) -> torch.Tensor:
    """KL between the distributions really sampled: CFG-guided, top-k/top-p truncated, renormalised; (B, S).

    Support: the two networks may keep different token sets, so the plain KL of the truncated distributions is
    infinite whenever the reference keeps a token the other cut. Both are therefore mixed with ε = 1e-4 of the
    uniform distribution (``smoothed_kl``): the measure stays a KL in nats (comparable with ``--kl conditional``
    and with the demo's tolerance), is 0 exactly for equal distributions, stays finite, and charges a cut token by
    its mass. Chosen over a one-sided floor on the subnet (not a distribution: its "KL" can go negative) and over
    total variation (bounded, but blind to how unlikely the cut token becomes).
    """
    _check_logits(guided_ref_BLV, guided_BLV)
    cols = []
    for b, e in begin_ends:
        B, l, V = guided_ref_BLV[:, b:e].shape
        p = truncated_probs(guided_ref_BLV[:, b:e].reshape(B * l, V), top_k, top_p)
        q = truncated_probs(guided_BLV[:, b:e].to(guided_ref_BLV.device).reshape(B * l, V), top_k, top_p)
        cols.append(smoothed_kl(p, q, eps).view(B, l).mean(-1))
    return torch.stack(cols, dim=1)


def token_agreement_per_scale(idx_a: Sequence[torch.Tensor], idx_b: Sequence[torch.Tensor]) -> list[float]:
    """Fraction of equal token indices per scale (1.0 = the two samplers chose the same tokens)."""
    if len(idx_a) != len(idx_b):
        raise ValueError(f"different number of scales: {len(idx_a)} vs {len(idx_b)}")
    out = []
    for si, (a, b) in enumerate(zip(idx_a, idx_b)):
        if a.shape != b.shape:
            raise ValueError(f"scale {si}: index shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
        out.append(float((a.to(b.device) == b).double().mean()))
    return out


def token_agreement_per_sample_scale(idx_a: Sequence[torch.Tensor], idx_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fraction of equal tokens per image and scale, (B, S) float64: the per-sample values behind the intervals."""
    if len(idx_a) != len(idx_b):
        raise ValueError(f"different number of scales: {len(idx_a)} vs {len(idx_b)}")
    cols = []
    for si, (a, b) in enumerate(zip(idx_a, idx_b)):
        if a.shape != b.shape:
            raise ValueError(f"scale {si}: index shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
        cols.append((a.to(b.device) == b).double().flatten(1).mean(1).cpu())
    return torch.stack(cols, dim=1)


# ---- images -------------------------------------------------------------------------------------------------
def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """10·log10(R²/MSE); +inf for identical images."""
    if mse <= 0.0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """PSNR of the MSE pooled over every pixel of the batch (one identical pair cannot make the mean infinite)."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float(((a.double() - b.double().to(a.device)) ** 2).mean())
    return psnr_from_mse(mse, data_range)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_per_image(a_BCHW: torch.Tensor, b_BCHW: torch.Tensor, data_range: float = 1.0, window: int = 11,
                   sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM (Wang et al. 2004) per image: Gaussian window, per channel, 'valid' positions, mean over map and
    channels. Images smaller than the window use the largest odd window that fits. Returns (B,) float64."""
    if a_BCHW.shape != b_BCHW.shape or a_BCHW.dim() != 4:
        raise ValueError(f"ssim needs two (B,C,H,W) tensors of one shape; got {tuple(a_BCHW.shape)} "
                         f"and {tuple(b_BCHW.shape)}")
    _, C, H, W = a_BCHW.shape
    size = min(window, H, W)
    size -= (size + 1) % 2                       # keep it odd
    g = _gaussian_window(size, sigma).to(a_BCHW.device)
    w_C1kk = (g[:, None] * g[None, :]).expand(C, 1, size, size).contiguous()
    x, y = a_BCHW.double(), b_BCHW.double().to(a_BCHW.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w_C1kk, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s_map.flatten(1).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM over the batch (window 11, sigma 1.5, K1 0.01, K2 0.03); 1.0 for identical images."""
    if a.dim() == 3:
        a, b = a[None], b[None]
    return float(ssim_per_image(a, b, data_range).mean())


# ---- Fréchet distance ---------------------------------------------------------------------------------------
def gaussian_stats(features_ND: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of feature rows (float64)."""
    f = features_ND.detach().cpu().double().numpy() if isinstance(features_ND, torch.Tensor) \
        else np.asarray(features_ND, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N>=2, D) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1-mu2|² + tr(s1) + tr(s2) - 2·tr((s1^½ s2 s1^½)^½).

    The trace of the matrix square root is the sum of square roots of the eigenvalues of the symmetric PSD
    matrix s1^½ s2 s1^½ (eigh, clipped at 0): no complex sqrtm, no 'imaginary component' failures.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def frechet_to(mu_ref: np.ndarray, sigma_ref: np.ndarray) -> Callable[[np.ndarray, np.ndarray], float]:
    """``frechet_distance(·, ·, mu_ref, sigma_ref)`` with the reference's square root computed once: the trace term
    as tr((r s r)^½), r = sigma_ref^½ (the same eigenvalues as s^½ sigma_ref s^½), one ``eigvalsh`` a call. For
    bootstraps, which score hundreds of resamples against one reference. The eigenvalues come from torch: numpy's
    threaded OpenBLAS took 15 ms per 64x64 ``eigvalsh`` on a busy 2-core machine (0.7 ms on one thread), torch's
    1.4 ms at the demo's one thread (measured)."""
    mu_r = np.atleast_1d(np.asarray(mu_ref, np.float64))
    s_r = np.atleast_2d(np.asarray(sigma_ref, np.float64))
    r, tr_r = _psd_sqrt(s_r), float(np.trace(s_r))

    def fd(mu: np.ndarray, sigma: np.ndarray) -> float:
        m = r @ sigma @ r
        eig = torch.linalg.eigvalsh(torch.from_numpy((m + m.T) / 2)).numpy()
        tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        diff = mu - mu_r
        return float(max(0.0, diff @ diff + np.trace(sigma) + tr_r - 2.0 * tr_covmean))
    return fd


# ---- FID through torch-fidelity (optional extra) ------------------------------------------------------------
def _to_uint8(images_01: torch.Tensor) -> torch.Tensor:
    return (images_01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _load_image_dir(path: Path) -> torch.Tensor:
    """All images under ``path`` (an ImageFolder: class sub-folders or flat) as uint8 (N,3,H,W)."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError(f"reading images from {path} needs Pillow: pip install pillow") from None
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    arrs = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise UsageError(f"images under {path} have different sizes {sorted(shapes)[:3]}; resize them first")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


FeatureFn = Callable[[torch.Tensor], torch.Tensor]      # uint8 (N,3,H,W) -> (N, D) features


INCEPTION_NAME = "inception-v3-compat"          # torch-fidelity's port of the TF FID Inception (2048-d pool)


def inception_network(device: str = "cpu", weights_path: str | None = None,
                      outputs: Sequence[str] = ("2048",)) -> torch.nn.Module:
    """torch-fidelity's FID Inception returning ``outputs`` ("2048" pool features, "logits_unbiased" for the
    Inception score), from a local weights file when given (a missing file is a one-line usage error naming the
    option) or torch-fidelity's own cache. Shared by ``sensitivity --metric fid`` and ``varbench fid``."""
    if weights_path and not Path(weights_path).is_file():
        raise UsageError(f"--inception-weights: {weights_path} is not a file (the FID Inception weights, "
                         "pt_inception-2015-12-05-6726825d.pth)")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise UsageError("FID needs the optional extra torch-fidelity: pip install torch-fidelity") from None
    try:
        return FeatureExtractorInceptionV3(INCEPTION_NAME, list(outputs),
                                           feature_extractor_weights_path=weights_path).to(device).eval()
    except Exception as e:  # noqa: BLE001 - offline download, bad file: one readable line
        raise EnvironmentUnavailable(f"could not load the Inception weights for FID ({type(e).__name__}: {e}); "
                                     "pass --inception-weights PATH") from None


def inception_extractor(device: str = "cpu", weights_path: str | None = None) -> FeatureFn:
    """torch-fidelity's FID Inception as a FeatureFn (2048-d pool features); see ``inception_network``."""
    net = inception_network(device, weights_path)
    return lambda x_u8: net(x_u8.to(device))[0]


def _features(images_u8: torch.Tensor, extract: FeatureFn, batch: int = 64) -> np.ndarray:
    feats = []
    with torch.no_grad():
        for i in range(0, images_u8.shape[0], batch):
            feats.append(extract(images_u8[i:i + batch]).double().cpu().flatten(1))
    return torch.cat(feats).numpy()


def image_features(images: str | os.PathLike | torch.Tensor, extract: FeatureFn, batch: int = 64) -> np.ndarray:
    """Feature rows (N, D), float64, of images (a folder or an (N,3,H,W) tensor in [0,1] or uint8)."""
    return _features(_images_u8(images), extract, batch)


def _inception_features(images_u8: torch.Tensor, device: str = "cpu", batch: int = 64,
                        weights_path: str | None = None) -> np.ndarray:
    return _features(images_u8, inception_extractor(device, weights_path), batch)


def reference_stats(ref: str | os.PathLike | torch.Tensor, extract: FeatureFn) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the reference: an ADM-style .npz (``mu``, ``sigma``), an image folder or an image tensor."""
    if not isinstance(ref, torch.Tensor) and str(ref).endswith(".npz"):
        try:
            with np.load(ref) as z:
                return np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        except (OSError, KeyError, ValueError) as e:
            raise UsageError(f"{ref}: not an .npz with 'mu' and 'sigma' ({e})") from None
    return gaussian_stats(_features(_images_u8(ref), extract))


def fid_with(images: str | os.PathLike | torch.Tensor, ref: str | os.PathLike | torch.Tensor,
             extract: FeatureFn) -> float:
    """Fréchet distance of ``images`` against ``ref`` in the feature space of ``extract`` (FID with Inception)."""
    mu_r, sig_r = reference_stats(ref, extract)
    mu, sig = gaussian_stats(_features(_images_u8(images), extract))
    if mu.shape != mu_r.shape:
        raise UsageError(f"reference statistics are {mu_r.shape[0]}-d but the features are {mu.shape[0]}-d")
    return frechet_distance(mu, sig, mu_r, sig_r)


def _images_u8(x: str | os.PathLike | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.cpu() if x.dtype == torch.uint8 else _to_uint8(x)
    p = Path(x)
    if not p.is_dir():
        raise UsageError(f"{p} is not a directory of images")
    return _load_image_dir(p)


def fid_torch_fidelity(images: str | os.PathLike | torch.Tensor, ref: str | os.PathLike | torch.Tensor,
                       device: str = "cpu", weights_path: str | None = None) -> float:
    """FID of ``images`` (a folder or an (N,3,H,W) tensor in [0,1]) against ``ref``: an .npz with ``mu`` and
    ``sigma``, an image folder, or another image tensor. Inception features come from torch-fidelity; the
    Fréchet distance is ours (``frechet_distance``)."""
    if not isinstance(ref, torch.Tensor) and str(ref).endswith(".npz"):
        reference_stats(ref, lambda x: x)           # a bad .npz fails before Inception is loaded
    return fid_with(images, ref, inception_extractor(device, weights_path))
