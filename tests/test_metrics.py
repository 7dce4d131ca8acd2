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


# ---- the sampled (guided, truncated) distribution ------------------------------------------------------------
def test_guided_logits_follow_the_official_ramp():
    cond = torch.tensor([[[2.0, 0.0]] * 3])               # 3 scales of 1 token: t = 0, cfg/2, cfg
    uncond = torch.tensor([[[1.0, 1.0]] * 3])
    g = metrics.guided_logits(cond, uncond, [(0, 1), (1, 2), (2, 3)], cfg=2.0)
    for si, t in enumerate((0.0, 1.0, 2.0)):              # (1+t)·cond − t·uncond
        assert g[0, si].tolist() == pytest.approx([(1 + t) * 2 - t, -t])


def test_truncated_probs_match_the_sampler_rule():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # top-p 0.8: mass above each entry 0, .5, .8, .95 -> keep the first two (strictly < 0.8), renormalised
    assert metrics.truncated_probs(logits, 0, 0.8)[0].tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert metrics.truncated_probs(logits, 3, 0.0)[0].tolist() == pytest.approx([0.5 / .95, 0.3 / .95, .15 / .95, 0])
    assert metrics.truncated_probs(logits, 1, 0.96)[0].tolist() == [1.0, 0.0, 0.0, 0.0]   # greedy
    # the sampler never draws outside the kept set, and draws the kept tokens in these proportions
    from model.sampling import sample_tokens
    gen = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits.expand(20000, 4)[None], 3, 0.8, gen)[0]
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert freq.tolist() == pytest.approx(metrics.truncated_probs(logits, 3, 0.8)[0].tolist(), abs=0.01)


def test_sampled_kl_hand_computed_disjoint_supports():
    eps, V = 1e-4, 4
    ref = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    sub = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]))
    # top-2: the full network keeps {0, 1} = (.625, .375), the subnet {3, 2} = (4/7, 3/7): disjoint supports
    p = [0.625 * (1 - eps) + eps / V, 0.375 * (1 - eps) + eps / V, eps / V, eps / V]
    q = [eps / V, eps / V, 3 / 7 * (1 - eps) + eps / V, 4 / 7 * (1 - eps) + eps / V]
    hand = sum(a * math.log(a / b) for a, b in zip(p, q))
    got = metrics.sampled_kl_per_sample_scale(ref, sub, [(0, 1)], top_k=2, top_p=0.0, eps=eps)
    assert got.shape == (1, 1) and float(got) == pytest.approx(hand, rel=1e-9)
    assert float(got) <= math.log(V / eps)                 # the bound the docstring states
    # equal distributions: exactly 0; the same kept set with other weights: the smoothed KL of the renormalised pair
    assert float(metrics.sampled_kl_per_sample_scale(ref, ref.clone(), [(0, 1)], 2, 0.0)) == 0.0
    near = torch.log(torch.tensor([[[0.4, 0.4, 0.15, 0.05]]]))
    p2 = [0.625 * (1 - eps) + eps / V, 0.375 * (1 - eps) + eps / V, eps / V, eps / V]
    q2 = [0.5 * (1 - eps) + eps / V, 0.5 * (1 - eps) + eps / V, eps / V, eps / V]
    hand2 = sum(a * math.log(a / b) for a, b in zip(p2, q2))
    assert float(metrics.sampled_kl_per_sample_scale(ref, near, [(0, 1)], 2, 0.0, eps)) == pytest.approx(hand2)


def test_per_sample_kl_and_agreement_average_to_the_per_scale_numbers():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 14, 16, generator=g), torch.randn(3, 14, 16, generator=g)
    per = metrics.kl_per_sample_scale(a, b, BE)
    assert per.shape == (3, 3) and per.mean(0).tolist() == pytest.approx(metrics.kl_per_scale(a, b, BE))
    ia = [torch.tensor([[1], [2]]), torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])]
    ib = [torch.tensor([[1], [3]]), torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])]
    assert metrics.token_agreement_per_sample_scale(ia, ib).tolist() == [[1.0, 1.0], [0.0, 0.5]]


def test_ssim_matches_scikit_image_where_installed():
    """The library SSIM (Gaussian weights, sigma 1.5, population covariance: Wang et al.'s settings) on the same
    crop: ours is kept because it scores every image in one batched conv (skimage loops over images)."""
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(7)
    a = torch.rand(3, 3, 32, 32, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = metrics.ssim_per_image(a, b)
    for i in range(3):
        want = skm.structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0, channel_axis=0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert float(ours[i]) == pytest.approx(want, rel=1e-6)


# ---- FID plumbing with a constructed feature extractor (no Inception, no download) ------------------------------
def _tiny_extractor():
    """A fixed random conv net standing in for Inception: uint8 images -> 6-d features."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1)).eval()
    return lambda x_u8: net(x_u8.float() / 255)


def test_fid_plumbing_tensor_folder_and_npz_agree_with_scipy(tmp_path):
    from PIL import Image
    linalg = pytest.importorskip("scipy.linalg")

    g = torch.Generator().manual_seed(1)
    gen, real = torch.rand(40, 3, 16, 16, generator=g), torch.rand(50, 3, 16, 16, generator=g) ** 2
    extract = _tiny_extractor()
    got = metrics.fid_with(gen, real, extract)
    # the same number from the features directly, with scipy's matrix square root
    f1 = metrics._features(metrics._to_uint8(gen), extract)
    f2 = metrics._features(metrics._to_uint8(real), extract)
    m1, s1, m2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    want = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert got == pytest.approx(want, rel=1e-6) and got > 0
    # a reference folder of PNGs (class sub-folders) and an ADM-style .npz give the same FID
    for i, img in enumerate(metrics._to_uint8(real)):
        d = tmp_path / "ref" / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i}.png")
    assert metrics.fid_with(gen, tmp_path / "ref", extract) == pytest.approx(got, rel=1e-9)
    np.savez(tmp_path / "ref.npz", mu=m2, sigma=s2)
    assert metrics.fid_with(gen, tmp_path / "ref.npz", extract) == pytest.approx(got, rel=1e-9)
    assert metrics.fid_with(real, real, extract) == pytest.approx(0.0, abs=1e-9)
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(UsageError, match="4-d"):
        metrics.fid_with(gen, tmp_path / "wrong.npz", extract)


def test_missing_inception_weights_file_names_the_option(tmp_path):
    with pytest.raises(UsageError, match="--inception-weights"):
        metrics.fid_torch_fidelity(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16),
                                   weights_path=str(tmp_path / "missing.pth"))


def test_frechet_to_a_fixed_reference_equals_frechet_distance():
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6))
    mu_r, s_r = metrics.gaussian_stats(ref)
    fd = metrics.frechet_to(mu_r, s_r)
    for n in (3, 50):                                      # rank-deficient (n < D) and full-rank samples
        mu, s = metrics.gaussian_stats(rng.standard_normal((n, 6)) * 1.5 + 0.2)
        assert fd(mu, s) == pytest.approx(metrics.frechet_distance(mu, s, mu_r, s_r), rel=1e-7)
