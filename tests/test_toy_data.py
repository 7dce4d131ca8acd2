"""The procedural toy data set: deterministic per (seed, index), right shapes and range, balanced, fast."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from model.spec import SPECS
from model.train.toy_data import (CLASS_NAMES, ToyDataset, hashed_uniforms, render_batch, render_indices,
                                   render_uniforms)

SIZE = SPECS["var-toy"].image_size


def test_class_names_cover_shapes_and_patterns():
    assert len(CLASS_NAMES) >= 10 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_image_depends_only_on_seed_and_index():
    a, la = render_indices([5, 6, 7, 8], seed=3)
    b, lb = render_indices(range(0, 20), seed=3)            # other batch, other position in it
    assert torch.equal(a, b[5:9]) and torch.equal(la, lb[5:9])
    ds = ToyDataset(12, seed=3, chunk=5)                     # chunk boundaries must not matter
    for i in (0, 5, 7, 11):
        img, lab = ds[i]
        assert torch.allclose(img, b[i], atol=1e-6) and lab == int(lb[i])
    xb, yb = ds.batch([11, 0])
    assert torch.allclose(xb, b[[11, 0]], atol=1e-6) and yb.tolist() == [int(lb[11]), int(lb[0])]


def test_different_seeds_differ_and_same_seed_repeats():
    a, _ = render_indices(range(16), seed=1)
    b, _ = render_indices(range(16), seed=2)
    c, _ = render_indices(range(16), seed=1)
    assert torch.equal(a, c)
    assert (a - b).abs().mean(dim=(1, 2, 3)).min() > 0.01    # every image changes, not just some
    r1 = render_batch([0, 1, 2, 3], np.random.default_rng(9))
    r2 = render_batch([0, 1, 2, 3], 9)
    assert torch.equal(r1, r2)


def test_shapes_range_dtype_and_8bit_levels():
    x, y = render_indices(range(40), seed=0)
    assert x.shape == (40, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    levels = (x + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert x.std() > 0.2                                     # not a blank canvas
    ds = ToyDataset(3, seed=0, image_size=16)
    assert ds[0][0].shape == (3, 16, 16)


def test_class_balance():
    ds = ToyDataset(200, seed=4)
    counts = torch.bincount(ds.labels, minlength=10)
    assert counts.tolist() == [20] * 10
    ds5 = ToyDataset(50, seed=4, num_classes=5)
    assert int(ds5.labels.max()) == 4


def test_label_alone_changes_the_image():
    """Same random numbers, different labels -> different pictures (the class is rendered, not a tag)."""
    u = np.tile(hashed_uniforms(11, np.array([0])), (10, 1))
    x = render_uniforms(torch.arange(10), u, SIZE)
    d = (x[:, None] - x[None]).abs().mean(dim=(2, 3, 4))
    assert d[~torch.eye(10, dtype=torch.bool)].min() > 0.005
    changed = ((x[0] - x[1]).abs().amax(0) > 1e-6).float().mean()   # solid -> striped: only the shape's pixels
    assert 0.02 < changed < 0.6


def test_hashed_uniforms_are_uniform_and_independent():
    u = hashed_uniforms(0, np.arange(2000), 8)
    assert u.shape == (2000, 8) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.02
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1


def test_bad_arguments():
    with pytest.raises(ValueError):
        ToyDataset(10, seed=0, num_classes=11)
    with pytest.raises(ValueError):
        render_batch([10], 0)
    with pytest.raises(IndexError):
        ToyDataset(3, seed=0)[3]


def test_speed_1000_images():
    render_indices(range(10), seed=0)                        # warm the texture bank
    t0 = time.perf_counter()
    ToyDataset(1000, seed=0)
    assert time.perf_counter() - t0 < 5.0
