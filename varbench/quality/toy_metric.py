"""The ``toy`` quality metric: class accuracy and Fréchet distance of samples, judged by the shipped toy classifier.

For the shipped ``var-toy`` model this replaces FID (no Inception weights, no download): a sample is good when the
classifier recognises the class it was conditioned on, and a set of samples is close to the data when the Gaussian
statistics of its classifier features match those of fresh real toy images (``reference_stats``).

Fréchet distances are biased upwards at small sample counts (the covariance of F=64 features is poorly estimated
from tens of images): compare FDs only at equal sample counts, and read them against ``real_fd(n)`` — the FD of n
real images — which is the floor for that n.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch

from model.spec import SPECS
from model.toy_classifier import WEIGHTS_FILE, ToyClassifier
from model.train.toy_data import CLASS_NAMES, render_indices
from varbench.errors import EnvironmentUnavailable
from varbench.quality.metrics import frechet_distance, frechet_to, gaussian_stats

log = logging.getLogger(__name__)

__all__ = ["load_toy_classifier", "toy_features", "toy_accuracy", "toy_scores", "fd_of_features", "frechet_distance", "reference_stats",
           "toy_fd", "real_fd", "toy_quality", "REFERENCE_SEED", "REFERENCE_N"]

# seeds of real toy images used here; the classifier trained on seed 0 and was validated on seed 90_001
REFERENCE_SEED = 70_001
REAL_FD_SEED = 70_002
REFERENCE_N = 2000
_BATCH = 256

_classifiers: dict[str, ToyClassifier] = {}


def load_toy_classifier(device: str | torch.device = "cpu") -> ToyClassifier:
    """The shipped classifier (package data ``model/weights/var-toy/``) in eval mode, cached per device."""
    key = str(torch.device(device))
    if key not in _classifiers:
        try:
            clf = ToyClassifier.from_file(WEIGHTS_FILE, device=device)
        except FileNotFoundError as e:
            raise EnvironmentUnavailable(f"{e}; reinstall varbench or run scripts/train_toy_classifier.py") from e
        for p in clf.parameters():
            p.requires_grad_(False)
        _classifiers[key] = clf
    return _classifiers[key]


def _check_images(images_01: torch.Tensor) -> torch.Tensor:
    size = SPECS["var-toy"].image_size
    if not isinstance(images_01, torch.Tensor) or images_01.ndim != 4 or images_01.shape[1] != 3:
        raise ValueError(f"expected images as a (B,3,H,W) tensor, got {getattr(images_01, 'shape', type(images_01))}")
    if images_01.shape[-2:] != (size, size):
        raise ValueError(f"the toy metric judges {size}x{size} var-toy images, got {tuple(images_01.shape[-2:])}")
    if images_01.numel() and (images_01.min() < -1e-3 or images_01.max() > 1 + 1e-3):
        raise ValueError("toy metric images must be in [0,1] (toy-data images in [-1,1]: pass (x + 1) / 2)")
    return images_01.float()


@torch.no_grad()
def _logits_and_features(images_01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = _check_images(images_01)
    clf = load_toy_classifier(x.device)
    feats, logits = [], []
    for i in range(0, x.shape[0], _BATCH):
        f = clf.features(x[i:i + _BATCH])
        feats.append(f)
        logits.append(clf.head(f))
    if not feats:
        return torch.empty(0, clf.num_classes), torch.empty(0, clf.feat_dim)
    return torch.cat(logits), torch.cat(feats)


def toy_features(images_01: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) in [0,1] -> (B, F) float64 classifier features."""
    return _logits_and_features(images_01)[1].double().cpu().numpy()


def toy_accuracy(images_01: torch.Tensor, labels: torch.Tensor | np.ndarray | list[int]) -> float:
    """Fraction of images the classifier assigns to the class they were generated for."""
    labels_B = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if labels_B.numel() != images_01.shape[0] or labels_B.numel() == 0:
        raise ValueError(f"need one label per image, got {labels_B.numel()} labels for {images_01.shape[0]} images")
    pred = _logits_and_features(images_01)[0].argmax(1).cpu()
    return float((pred == labels_B).float().mean())


def toy_scores(images_01: torch.Tensor, labels: torch.Tensor | np.ndarray | list[int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image scores behind the intervals: (correct (B,) bool, features (B, F) float64), one classifier pass."""
    labels_B = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    logits, feats = _logits_and_features(images_01)
    if labels_B.numel() != logits.shape[0]:
        raise ValueError(f"need one label per image, got {labels_B.numel()} labels for {logits.shape[0]} images")
    return (logits.argmax(1).cpu() == labels_B).numpy(), feats.double().cpu().numpy()


def fd_of_features(features_ND: np.ndarray, n_ref: int = REFERENCE_N, seed: int = REFERENCE_SEED) -> float:
    """Toy FD of precomputed classifier features (the bootstrap resamples features, not images)."""
    return _fd_to_reference(n_ref, seed)(*gaussian_stats(features_ND))


@lru_cache(maxsize=4)
def _fd_to_reference(n_ref: int, seed: int):
    """The FD against one reference with its square root computed once (a bootstrap scores 200 resamples)."""
    return frechet_to(*reference_stats(n_ref, seed))


def _real_images(n: int, seed: int) -> torch.Tensor:
    images, _ = render_indices(range(n), seed, SPECS["var-toy"].image_size, len(CLASS_NAMES))
    return (images + 1) / 2


@lru_cache(maxsize=8)
def reference_stats(n: int = REFERENCE_N, seed: int = REFERENCE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the classifier features of n real, class-balanced toy images (cached per process)."""
    if n < 2:
        raise ValueError(f"reference_stats needs n >= 2, got {n}")
    log.info("toy metric: reference statistics of %d real images (seed %d)", n, seed)
    mu, sigma = gaussian_stats(toy_features(_real_images(n, seed)))
    mu.setflags(write=False)
    sigma.setflags(write=False)
    return mu, sigma


def toy_fd(images_01: torch.Tensor, n_ref: int = REFERENCE_N, seed: int = REFERENCE_SEED) -> float:
    """Fréchet distance between the classifier features of ``images_01`` and of real toy images."""
    if images_01.shape[0] < 2:
        raise ValueError("toy_fd needs at least 2 images")
    mu, sigma = gaussian_stats(toy_features(images_01))
    return frechet_distance(mu, sigma, *reference_stats(n_ref, seed))


@lru_cache(maxsize=16)
def real_fd(n: int, seed: int = REAL_FD_SEED) -> float:
    """FD of n fresh real toy images against the reference: the floor of ``toy_fd`` at sample count n."""
    return toy_fd(_real_images(n, seed))


def toy_quality(images_01: torch.Tensor, labels: torch.Tensor | np.ndarray | list[int]) -> dict[str, float | int]:
    """Both numbers at once (one classifier pass for accuracy, one for features): the row fields of ``toy``."""
    labels_B = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    logits, feats = _logits_and_features(images_01)
    if labels_B.numel() != logits.shape[0]:
        raise ValueError(f"need one label per image, got {labels_B.numel()} labels for {logits.shape[0]} images")
    acc = float((logits.argmax(1).cpu() == labels_B).float().mean())
    out = {"toy_accuracy": acc, "toy_n": int(labels_B.numel())}
    if feats.shape[0] >= 2:
        mu, sigma = gaussian_stats(feats.double().cpu().numpy())
        out["toy_fd"] = frechet_distance(mu, sigma, *reference_stats())
    return out
