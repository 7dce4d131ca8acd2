"""Training data: ImageNet-layout folders with the official preprocessing, the procedural toy set, pre-tokenised sets.

Official preprocessing (VAR_REFERENCE §6): shorter side -> round(1.125·R) with Lanczos, random crop to R (train) or
centre crop (val), to [−1, 1]; no flip. Done with PIL (torchvision is not a dependency).

Data order is a pure function of (seed, epoch): ``epoch_order`` permutes the indices, global batch b is
``order[b·B:(b+1)·B]`` and rank r of W takes its r-th contiguous slice, so W processes together see exactly the
batches one process sees, and a resumed run continues at (epoch, batch) with the same order. Every sample key is
(epoch, index), so random crops are reproducible too.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".JPEG")
TOKENS_META = "tokens_meta.json"


# ---- ImageFolder ------------------------------------------------------------------------------------------------
def preprocess(img, image_size: int, train: bool, rng: random.Random | None, mid_reso: float = 1.125) -> torch.Tensor:
    """PIL image -> (3, R, R) float32 in [−1, 1]: Lanczos resize of the shorter side, random/centre crop."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    short = round(mid_reso * image_size)
    if w <= h:
        size = (short, int(short * h / w))
    else:
        size = (int(short * w / h), short)
    img = img.resize(size, Image.LANCZOS)
    w, h = img.size
    if train:
        rng = rng or random.Random(0)
        left, top = rng.randint(0, w - image_size), rng.randint(0, h - image_size)
    else:
        left, top = int(round((w - image_size) / 2.0)), int(round((h - image_size) / 2.0))
    img = img.crop((left, top, left + image_size, top + image_size))
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float().div_(127.5).sub_(1.0)


class ImageFolderDataset(Dataset):
    """root/<class>/<image>; classes sorted by name give labels 0..K−1 (torchvision's convention)."""

    def __init__(self, root: str | Path, image_size: int, train: bool = True, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"data folder {self.root} does not exist")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            files = sorted(p for p in (self.root / cls).rglob("*") if p.suffix.lower() in
                           {e.lower() for e in IMAGE_EXTS})
            self.samples.extend((p, label) for p in files)
        if not self.samples:
            raise ValueError(f"data folder {self.root} has no images in class subfolders (ImageNet layout)")
        self.image_size, self.train, self.seed = image_size, train, seed

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, i: int, epoch: int = 0) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        rng = random.Random(f"{self.seed}/{epoch}/{i}") if self.train else None
        with Image.open(path) as img:
            return preprocess(img, self.image_size, self.train, rng), label

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.get(i)


def _require_pillow() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ImportError("reading image folders needs Pillow (pip install pillow)") from None


# ---- pre-tokenised data -------------------------------------------------------------------------------------------
@torch.no_grad()
def pretokenize(dataset: Dataset, vae: torch.nn.Module, out_dir: str | Path, patch_nums: Sequence[int],
                vocab_size: int, batch_size: int = 64, device: str | torch.device = "cpu") -> Path:
    """Encode every image once with the frozen VQ-VAE; per-scale indices as .npy memmaps + labels + a meta JSON.

    Random crops are frozen at epoch 0 (pre-tokenised training sees one crop per image, the usual trade-off).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
    maps = [np.lib.format.open_memmap(out / f"scale_{si:02d}.npy", mode="w+", dtype=dtype, shape=(n, pn * pn))
            for si, pn in enumerate(patch_nums)]
    labels = np.lib.format.open_memmap(out / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
    vae = vae.to(device).eval()
    for start in range(0, n, batch_size):
        items = [_item(dataset, i) for i in range(start, min(n, start + batch_size))]
        img = torch.stack([x for x, _ in items]).to(device)
        idx_list = vae.img_to_idx(img)
        for m, idx in zip(maps, idx_list):
            m[start:start + len(items)] = idx.cpu().numpy().astype(dtype)
        labels[start:start + len(items)] = [int(y) for _, y in items]
    for m in maps + [labels]:
        m.flush()
    meta = {"kind": "tokens", "n": n, "patch_nums": list(patch_nums), "vocab_size": vocab_size,
            "dtype": np.dtype(dtype).name}
    (out / TOKENS_META).write_text(json.dumps(meta, indent=2))
    log.info("pre-tokenised %d images into %s", n, out)
    return out


class TokenDataset(Dataset):
    """Reads ``pretokenize`` output: item -> (list of (pn²,) int64 per scale, label)."""

    tokens = True

    def __init__(self, root: str | Path, patch_nums: Sequence[int] | None = None):
        self.root = Path(root)
        meta_path = self.root / TOKENS_META
        if not meta_path.exists():
            raise ValueError(f"{self.root} is not a pre-tokenised data set (no {TOKENS_META})")
        self.meta = json.loads(meta_path.read_text())
        if patch_nums is not None and list(patch_nums) != self.meta["patch_nums"]:
            raise ValueError(f"pre-tokenised scales {self.meta['patch_nums']} differ from the model's {list(patch_nums)}")
        self.maps = [np.load(self.root / f"scale_{si:02d}.npy", mmap_mode="r")
                     for si in range(len(self.meta["patch_nums"]))]
        self.labels = np.load(self.root / "labels.npy", mmap_mode="r")

    def __len__(self) -> int:
        return int(self.meta["n"])

    def get(self, i: int, epoch: int = 0) -> tuple[list[torch.Tensor], int]:
        return [torch.from_numpy(np.asarray(m[i], dtype=np.int64)) for m in self.maps], int(self.labels[i])

    def __getitem__(self, i: int):
        return self.get(i)


def _item(ds: Dataset, i: int, epoch: int = 0):
    get = getattr(ds, "get", None)
    return get(i, epoch) if get is not None else ds[i]


# ---- building and ordering ---------------------------------------------------------------------------------------
def build_datasets(data: str, image_size: int, num_classes: int, patch_nums: Sequence[int], seed: int,
                   synthetic_size: int = 20_000, val_size: int = 256) -> tuple[Dataset, Dataset | None]:
    """'synthetic' -> toy sets (train/val with different seeds); a folder -> ImageFolder (root/train + root/val,
    or root itself) or a pre-tokenised set. A missing folder is a ValueError."""
    if data == "synthetic":
        from .toy_data import CLASS_NAMES, ToyDataset

        # an ImageNet-sized model (1000 classes) trains on the procedural classes as its labels 0..9: enough for
        # plumbing, speed and distributed checks, which is what synthetic data is for at that size
        k = min(num_classes, len(CLASS_NAMES))
        return (ToyDataset(synthetic_size, seed, image_size, k),
                ToyDataset(val_size, seed + 7919, image_size, k) if val_size > 0 else None)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist (give an ImageNet-layout folder or 'synthetic')")
    if (root / TOKENS_META).exists():
        val = root.parent / (root.name + "_val")
        return TokenDataset(root, patch_nums), (TokenDataset(val, patch_nums) if (val / TOKENS_META).exists() else None)
    _require_pillow()
    train_root = root / "train" if (root / "train").is_dir() else root
    val_root = root / "val" if (root / "val").is_dir() else None
    train = ImageFolderDataset(train_root, image_size, train=True, seed=seed)
    val = ImageFolderDataset(val_root, image_size, train=False) if val_root is not None else None
    return train, val


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def rank_batches(n: int, global_batch: int, seed: int, epoch: int, start_batch: int, rank: int,
                 world: int) -> list[list[tuple[int, int]]]:
    """This rank's slice of every global batch of the epoch from ``start_batch`` on; keys are (epoch, index)."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
    local = global_batch // world
    order = epoch_order(n, seed, epoch).tolist()
    out = []
    for b in range(start_batch, n // global_batch):
        chunk = order[b * global_batch + rank * local: b * global_batch + (rank + 1) * local]
        out.append([(epoch, i) for i in chunk])
    return out


class EpochKeyed(Dataset):
    """Lets a DataLoader fetch by (epoch, index) keys so per-sample randomness follows the epoch."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        return _item(self.base, i, epoch)


def make_loader(ds: Dataset, batches: list[list[tuple[int, int]]], workers: int, pin: bool) -> DataLoader:
    return DataLoader(EpochKeyed(ds), batch_sampler=batches, num_workers=workers, pin_memory=pin)


def fixed_batches(ds: Dataset, batch: int, max_batches: int) -> list[list[tuple[int, int]]]:
    """Validation: the first ``max_batches`` batches in index order (same every time)."""
    n = min(len(ds), batch * max_batches)
    return [[(0, i) for i in range(s, min(n, s + batch))] for s in range(0, n, batch)]
