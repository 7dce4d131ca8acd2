"""The shipped toy classifier and the toy metric: weights load, real accuracy, Fréchet math on closed forms."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.toy_classifier import PROVENANCE_FILE, WEIGHTS_FILE, ToyClassifier
from model.train.toy_data import CLASS_NAMES, render_indices
from varbench.quality import toy_metric
from varbench.quality.toy_metric import frechet_distance, load_toy_classifier, toy_accuracy, toy_fd, toy_features

FRESH_SEED = 123_457          # never used by the training script (seed 0), its eval (90_001) or the reference


@pytest.fixture(scope="module")
def fresh():
    x, y = render_indices(range(500), FRESH_SEED)
    return (x + 1) / 2, y


def test_shipped_weights_are_small_and_documented():
    assert WEIGHTS_FILE.is_file() and WEIGHTS_FILE.stat().st_size < 1_000_000
    prov = json.loads(PROVENANCE_FILE.read_text())
    for key in ("command", "train_seed", "eval_seed", "steps", "accuracy", "date", "git_commit", "torch", "device"):
        assert key in prov, key
    assert prov["accuracy"] >= 0.95 and prov["eval_seed"] != prov["train_seed"]
    assert prov["class_names"] == list(CLASS_NAMES)
    assert prov["weights_sha256"] == hashlib.sha256(WEIGHTS_FILE.read_bytes()).hexdigest()


def test_shipped_classifier_accuracy_on_fresh_images(fresh):
    x, y = fresh
    acc = toy_accuracy(x, y)
    assert acc >= 0.95, acc
    clf = load_toy_classifier("cpu")
    assert isinstance(clf, ToyClassifier) and not clf.training
    assert load_toy_classifier("cpu") is clf                 # cached


def test_classifier_survives_vqvae_like_blur(fresh):
    x, y = fresh
    blurred = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    assert toy_accuracy(blurred, y) >= 0.9


def test_noise_is_not_recognised_and_is_far_in_fd(fresh):
    x, y = fresh
    noise = torch.rand(200, 3, *x.shape[-2:], generator=torch.Generator().manual_seed(0))
    assert toy_accuracy(noise, y[:200]) < 0.4
    fd_real = toy_fd(x[:200], n_ref=500)
    fd_noise = toy_fd(noise, n_ref=500)
    assert fd_real < 0.2 * fd_noise, (fd_real, fd_noise)
    # features: (B, F), float64, deterministic
    f1, f2 = toy_features(x[:8]), toy_features(x[:8])
    assert f1.shape == (8, load_toy_classifier().feat_dim) and f1.dtype == np.float64 and np.array_equal(f1, f2)


def test_quality_row_matches_parts(fresh):
    x, y = fresh
    q = toy_metric.toy_quality(x[:100], y[:100])
    assert q["toy_accuracy"] == pytest.approx(toy_accuracy(x[:100], y[:100]))
    assert q["toy_fd"] == pytest.approx(toy_fd(x[:100]), rel=1e-9) and q["toy_n"] == 100


def test_metric_rejects_minus1_1_images_and_wrong_sizes(fresh):
    x, y = fresh
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        toy_accuracy(x[:4] * 2 - 1, y[:4])
    with pytest.raises(ValueError):
        toy_accuracy(x[:4, :, :16, :16], y[:4])
    with pytest.raises(ValueError):
        toy_accuracy(x[:4], y[:3])


# ---- Fréchet distance: closed forms ------------------------------------------------------------------------
def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_identity_and_symmetry_full_covariance():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b @ rng.normal(size=(8, 8)), rowvar=False)
    mu1, mu2 = a.mean(0), b.mean(0) + 1
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0 and d12 == pytest.approx(d21, rel=1e-8)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert d12 == pytest.approx(ref, rel=1e-6)


# ---- the training script: seeded, and it refuses to ship a weak classifier ---------------------------------
def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_toy_classifier.py"
    spec = importlib.util.spec_from_file_location("train_toy_classifier", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_script_is_reproducible_and_guards_accuracy(tmp_path):
    script = _script()
    common = ["--steps", "3", "--batch", "16", "--eval-n", "40", "--threads", "1"]
    assert script.main(common + ["--min-acc", "0.99", "--out", str(tmp_path / "weak")]) == 1
    assert not (tmp_path / "weak" / "classifier.safetensors").exists()
    for run, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert script.main(common + ["--seed", seed, "--min-acc", "0", "--out", str(tmp_path / run)]) == 0
    a, b, c = (ToyClassifier.from_file(tmp_path / r / "classifier.safetensors").state_dict() for r in "abc")
    # same seed -> same weights (up to float rounding of CPU kernels); another seed -> other weights
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert not torch.allclose(a["head.weight"], c["head.weight"], atol=1e-2)
    prov = json.loads((tmp_path / "a" / "classifier.json").read_text())
    assert prov["steps"] == 3 and prov["train_seed"] == 0 and prov["accuracy"] < 0.99
