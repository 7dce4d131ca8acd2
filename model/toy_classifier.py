"""A tiny CNN that classifies toy images; its pooled features give the toy Fréchet distance.

It turns samples of the shipped ``var-toy`` model into a real quality measure (class accuracy + FD on its
features) without Inception weights or a download. Input convention: images in **[0, 1]** — what
``VARPipeline.generate`` and ``vae.idx_to_img`` return; convert toy-data images with ``(x + 1) / 2``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "var-toy"
WEIGHTS_FILE = WEIGHTS_DIR / "classifier.safetensors"
PROVENANCE_FILE = WEIGHTS_DIR / "classifier.json"


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ToyClassifier(nn.Module):
    """Five 3x3 conv layers (32 -> 16 -> 8 px), global average pooling to ``feat_dim`` features, a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 32, feat_dim: int = 64) -> None:
        super().__init__()
        self.num_classes, self.width, self.feat_dim = num_classes, width, feat_dim
        self.body = nn.Sequential(
            _conv_bn(3, width // 2),
            _conv_bn(width // 2, width, stride=2),
            _conv_bn(width, width),
            _conv_bn(width, feat_dim, stride=2),
            _conv_bn(feat_dim, feat_dim),
        )
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, feat_dim) pooled activations (the Fréchet-distance embedding)."""
        h_BCHW = self.body(x_B3HW * 2 - 1)
        return h_BCHW.mean(dim=(2, 3))

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, num_classes) logits."""
        return self.head(self.features(x_B3HW))

    def config(self) -> dict[str, int]:
        return {"num_classes": self.num_classes, "width": self.width, "feat_dim": self.feat_dim}

    @classmethod
    def from_file(cls, path: str | Path = WEIGHTS_FILE, device: str | torch.device = "cpu") -> "ToyClassifier":
        """Load weights saved by ``scripts/train_toy_classifier.py`` (config in the safetensors metadata); eval mode."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"toy classifier weights not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        cfg = json.loads(meta.get("config", "{}"))
        model = cls(**cfg)
        sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        model.load_state_dict(sd, strict=True)
        return model.to(device).eval()
