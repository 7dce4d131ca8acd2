"""Data: official ImageFolder preprocessing, the global-batch order shared by any number of ranks."""
from __future__ import annotations

import pytest
import torch

from model.train.data import build_datasets, epoch_order, rank_batches


def test_two_ranks_split_the_global_batches_of_one():
    one = rank_batches(40, 8, seed=3, epoch=2, start_batch=0, rank=0, world=1)
    r0 = rank_batches(40, 8, seed=3, epoch=2, start_batch=0, rank=0, world=2)
    r1 = rank_batches(40, 8, seed=3, epoch=2, start_batch=0, rank=1, world=2)
    assert len(one) == 5 and all(len(b) == 4 for b in r0 + r1)
    assert [a + b for a, b in zip(r0, r1)] == one
    assert rank_batches(40, 8, 3, 2, 3, 0, 1) == one[3:]                 # resume mid-epoch
    assert not torch.equal(epoch_order(40, 3, 2), epoch_order(40, 3, 3))  # reshuffled per epoch
    assert all(k[0] == 2 for b in one for k in b)                          # keys carry the epoch
    with pytest.raises(ValueError, match="divisible"):
        rank_batches(40, 8, 3, 0, 0, 0, 3)


def test_missing_folder_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        build_datasets(str(tmp_path / "nope"), 16, 10, (1, 2), seed=0)


def test_imagefolder_official_preprocessing(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    import numpy as np

    rng = np.random.default_rng(0)
    for cls in ("b_cls", "a_cls"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)        # landscape 45x30
            Image.fromarray(arr).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "val" / "a_cls").mkdir(parents=True)
    Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(tmp_path / "val" / "a_cls" / "x.png")
    train, val = build_datasets(str(tmp_path), 16, 2, (1, 2), seed=0)
    assert train.classes == ["a_cls", "b_cls"] and len(train) == 4 and len(val) == 1
    x, y = train.get(3, epoch=0)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, train.get(3, epoch=0)[0])                         # crop = f(seed, epoch, index)
    crops = {tuple(train.get(3, epoch=e)[0].flatten()[:8].tolist()) for e in range(6)}
    assert len(crops) > 1                                                    # random crop varies per epoch
    v, _ = val[0]
    assert torch.allclose(v, torch.ones_like(v), atol=1e-6)                  # white -> +1 after Lanczos + crop
    # shorter side round(1.125·16) = 18 with Lanczos, centre crop: equals a manual PIL computation
    img = Image.open(train.samples[0][0]).convert("RGB").resize((27, 18), Image.LANCZOS)
    left, top = round((27 - 16) / 2), round((18 - 16) / 2)
    want = torch.from_numpy(np.asarray(img.crop((left, top, left + 16, top + 16)), dtype=np.float32))
    from model.train.data import preprocess

    got = preprocess(Image.open(train.samples[0][0]), 16, train=False, rng=None)
    assert torch.allclose(got, want.permute(2, 0, 1) / 127.5 - 1)
