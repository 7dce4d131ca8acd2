"""The toy VQ-VAE trainer: losses fall, weights load back strictly into a VQVAE."""
from __future__ import annotations

import json

from model.train.vqvae_trainer import VQVAETrainConfig, train_vqvae


def test_vqvae_trainer_learns_and_saves(tmp_path):
    res = train_vqvae(VQVAETrainConfig(model="var-tiny", synthetic_size=16, steps=12, batch=8, lr=3e-3,
                                       restart_every=4, log_every=1, out=str(tmp_path), device="cpu"))
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[-1]["step"] == 12
    assert rows[-1]["recon_loss"] < 0.8 * rows[0]["recon_loss"], [r["recon_loss"] for r in rows]
    from model.checkpoint import load_strict
    from model.spec import SPECS
    from model.vqvae import VQVAE

    spec = SPECS["var-tiny"]
    load_strict(VQVAE(spec.vae, spec.patch_nums), str(tmp_path / "vae.safetensors"), "VQ-VAE")
    assert json.loads((tmp_path / "vae.json").read_text())["steps"] == res["steps"] == 12
