"""The shipped var-toy weights (package data) load strictly, generate, and carry a valid provenance file."""
import json

import torch

from model.pipeline import WEIGHTS_DIR, VARPipeline
from model.schedule import DepthSchedule

TOY = WEIGHTS_DIR / "var-toy"


def test_provenance_is_valid_and_sizes_match():
    prov = json.loads((TOY / "provenance.json").read_text())
    for key in ("commands", "seed", "device", "commit", "vqvae", "var", "files"):
        assert key in prov, key
    assert prov["var"]["strategy"] == "progressive" and prov["var"]["step"] > 0
    assert prov["vqvae"]["final"]["step"] > 0
    total = 0
    for name, size in prov["files"].items():
        assert (TOY / name).stat().st_size == size, name
        total += size
    assert total <= 20 * 2**20          # VQ-VAE + VAR ≤ 20 MB (16-bit)


def test_shipped_weights_load_and_generate():
    pipe = VARPipeline.from_pretrained("var-toy")
    assert pipe.weights.endswith("var.safetensors")
    out = pipe.generate([0, 5], seed=0, schedule=DepthSchedule.variant(pipe.spec, 2, 4))
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.images).all()
    # trained, not random: the full network's next-token distributions are far from uniform
    logits = pipe.teacher_forcing([0, 5], out.indices)
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean().item()
    assert entropy < 0.8 * torch.log(torch.tensor(float(pipe.spec.vae.vocab_size))).item()
