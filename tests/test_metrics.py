"""Metric math on closed-form cases: KL, token agreement, PSNR, SSIM, Fréchet distance."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from varbench.quality import metrics
from varbench.errors import UsageError

BE = ((0, 1), (1, 5), (5, 14))          # scales of 1, 4, 9 tokens


def test_kl_zero_for_identical_and_shifted_logits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 14, 64, generator=g) * 4
    assert metrics.kl_per_scale(x, x.clone(), BE) == [0.0, 0.0, 0.0]
    # softmax is shift invariant: a per-position constant changes nothing
    kl = metrics.kl_per_scale(x, x + torch.randn(3, 14, 1, generator=g) * 10, BE)
    assert max(kl) < 1e-9


def test_kl_nonnegative_and_per_scale():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 14, 32, generator=g) * 3
    b = a.clone()
    b[:, 5:14] += torch.randn(2, 9, 32, generator=g)        # only the last scale differs
    kl = metrics.kl_per_scale(a, b, BE)
    assert kl[0] == 0.0 and kl[1] == 0.0
    assert kl[2] > 1e-3
    rnd = metrics.kl_per_scale(torch.randn(4, 14, 32, generator=g), torch.randn(4, 14, 32, generator=g), BE)
    assert all(v > 0 for v in rnd)


def test_kl_closed_form_two_way():
    # p = (1/2, 1/2), q = (3/4, 1/4): KL(p||q) = 1/2·ln(4/3); direction matters (KL(q||p) differs)
    p = torch.zeros(1, 1, 2, dtype=torch.float64)
    q = torch.tensor([[[math.log(3.0), 0.0]]], dtype=torch.float64)
    assert metrics.kl_per_scale(p, q, [(0, 1)])[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    rev = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert metrics.kl_per_scale(q, p, [(0, 1)])[0] == pytest.approx(rev, rel=1e-12)


def test_kl_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        metrics.kl_per_scale(torch.zeros(1, 14, 8), torch.zeros(1, 14, 9), BE)


def test_token_agreement_fractions():
    a = [torch.tensor([[1], [2]]), torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])]
    b = [torch.tensor([[1], [3]]), torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])]
    assert metrics.token_agreement_per_scale(a, b) == [0.5, 0.75]
    assert metrics.token_agreement_per_scale(a, a) == [1.0, 1.0]


def test_psnr_identical_and_constant_offset():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 0.8
    assert metrics.psnr(x, x) == math.inf
    # offset 0.1 everywhere: MSE = 0.01 -> 10·log10(1/0.01) = 20 dB; data range 2 adds 20·log10(2)
    assert metrics.psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr(x, x + 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-9)
    # pooled MSE: one identical pair and one offset pair -> MSE 0.005, finite
    y = x.clone()
    y[1] += 0.1
    assert metrics.psnr(x, y) == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-9)


def test_ssim_identical_and_constant_images():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 24, 24, generator=g)
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # flat images: variances and covariance vanish, only the luminance term remains
    c1v, c2v = 0.2, 0.6
    a, b = (torch.full((1, 3, 16, 16), v, dtype=torch.float64) for v in (c1v, c2v))
    C1 = 0.01 ** 2
    expect = (2 * c1v * c2v + C1) / (c1v ** 2 + c2v ** 2 + C1)
    assert metrics.ssim(a, b) == pytest.approx(expect, rel=1e-9)


def test_ssim_matches_scipy_gaussian_filter_interior():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    x = rng.random((20, 20))
    y = np.clip(x + 0.2 * rng.standard_normal((20, 20)), 0, 1)

    def blur(t):   # sigma 1.5, radius 5 -> the 11-tap window; keep only positions the window fits in
        return ndimage.gaussian_filter(t, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()
    got = metrics.ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])
    assert got == pytest.approx(ref, rel=1e-9)
    assert got < 0.9


def test_ssim_falls_with_noise():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 16, 16, generator=g)
    n = torch.randn(1, 3, 16, 16, generator=g)
    s_small, s_big = metrics.ssim(x, x + 0.02 * n), metrics.ssim(x, x + 0.3 * n)
    assert 1.0 > s_small > s_big


def test_frechet_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 5))
    s1 = a @ a.T + 0.1 * np.eye(5)
    b = rng.standard_normal((5, 5))
    s2 = b @ b.T
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    d12, d21 = metrics.frechet_distance(mu1, s1, mu2, s2), metrics.frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(d21, rel=1e-9) and d12 > 0


def test_frechet_closed_form_diagonal():
    # commuting (diagonal) covariances: FD = |mu1-mu2|² + Σ (sqrt(a_i) - sqrt(b_i))²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expect = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expect, rel=1e-12)


def test_frechet_matches_sqrtm_for_non_commuting():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = a @ a.T + np.eye(6), b @ b.T + 0.5 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    covmean = linalg.sqrtm(s1 @ s2).real
    expect = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-8)


def test_frechet_of_sample_stats_one_dimensional():
    # N(0, 1) vs N(3, 4) in 1-D: FD = 9 + (1 - 2)² = 10; sample stats converge to it
    rng = np.random.default_rng(8)
    f1, f2 = rng.standard_normal((200_000, 1)), 3 + 2 * rng.standard_normal((200_000, 1))
    mu1, s1 = metrics.gaussian_stats(f1)
    mu2, s2 = metrics.gaussian_stats(f2)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(10.0, rel=0.02)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity installed")
def test_fid_without_torch_fidelity_is_a_usage_error():
    with pytest.raises(UsageError, match="torch-fidelity"):
        metrics.fid_torch_fidelity(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16))


def test_fid_bad_npz_is_a_usage_error(tmp_path):
    bad = tmp_path / "ref.npz"
    np.savez(bad, mean=np.zeros(3))
    with pytest.raises(UsageError, match="mu"):
        metrics.fid_torch_fidelity(torch.rand(4, 3, 16, 16), bad)
