"""The supernet training loop on var-tiny: loss falls, resume is exact, pre-tokenised data round-trips."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.train.loop import TrainConfig, config_from_dict, train


def rows(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory) -> Path:
    """16 toy images tokenised once with var-tiny's seed-0 random VQ-VAE (the one the trainer builds for seed 0)."""
    from model.pipeline import VARPipeline
    from model.spec import SPECS
    from model.train.data import pretokenize
    from model.train.toy_data import ToyDataset

    spec = SPECS["var-tiny"]
    vae = VARPipeline.from_spec(spec, seed=0).vae
    ds = ToyDataset(16, seed=0, image_size=spec.image_size, num_classes=spec.num_classes)
    return pretokenize(ds, vae, tmp_path_factory.mktemp("tok") / "tiny", spec.patch_nums, spec.vae.vocab_size, 8)


def cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(model="var-tiny", vae="random", data=str(data), batch=16, epochs=20, lr=4e-3, warmup=2,
                log_every=1, out=str(out), device="cpu", val_size=0)
    return TrainConfig(**(base | kw))


def test_pretokenized_set_matches_the_vae(tokens_dir):
    from model.pipeline import VARPipeline
    from model.spec import SPECS
    from model.train.data import TokenDataset
    from model.train.toy_data import ToyDataset

    spec = SPECS["var-tiny"]
    ds = TokenDataset(tokens_dir, spec.patch_nums)
    img = torch.stack([ToyDataset(16, 0, spec.image_size, 10)[i][0] for i in (3, 11)])
    want = VARPipeline.from_spec(spec, seed=0).vae.img_to_idx(img)
    for k, i in enumerate((3, 11)):
        idx, label = ds[i]
        assert label == i % 10
        assert all(torch.equal(a, w[k]) for a, w in zip(idx, want))


@pytest.mark.parametrize("strategy", ["full", "progressive"])
def test_loss_falls(tmp_path, tokens_dir, strategy):
    res = train(cfg(tmp_path, tokens_dir, strategy=strategy, e1=2, e2=4, e3=14, cond_drop=0.0))
    losses = [r["loss"] for r in rows(tmp_path)]
    assert len(losses) == 20 and res["step"] == 20
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    if strategy == "progressive":
        depths = {r["depth"] for r in rows(tmp_path)}
        assert depths == {2, 4}                       # subnet and full steps both happened
        assert rows(tmp_path)[-1]["subnet_p"] == 1.0


def test_resume_continues_exactly(tmp_path, tokens_dir):
    """Stop after 3 steps, resume: steps 4 and 5 equal the uninterrupted run's (class dropout, drop path, draws)."""
    kw = dict(batch=8, epochs=4, strategy="progressive", e1=0.5, e2=1, e3=2)
    train(cfg(tmp_path / "a", tokens_dir, max_steps=5, **kw))
    train(cfg(tmp_path / "b", tokens_dir, max_steps=3, schedule_steps=5, **kw))    # stop at 3 of a 5-step plan
    meta = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert (meta["step"], meta["epoch"], meta["batch_in_epoch"]) == (3, 1, 1)
    resumed = config_from_dict(meta["config"] | {"max_steps": 5, "resume": str(tmp_path / "b")})
    train(resumed)
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a[3:5], b[-2:]):
        assert ra["step"] == rb["step"] and ra["depth"] == rb["depth"]
        assert abs(ra["loss"] - rb["loss"]) <= 1e-6, (ra, rb)


def test_validation_rows_per_schedule(tmp_path):
    train(TrainConfig(model="var-tiny", vae="random", data="synthetic", synthetic_size=8, val_size=8, batch=8,
                      epochs=1, strategy="fixed", p=0.5, log_every=1, val_batches=1, out=str(tmp_path),
                      device="cpu"))
    val = rows(tmp_path, "val")
    assert {(r["schedule"], r["depth"]) for r in val} == {("full", 4), ("d2", 2)}
    assert all(r["loss"] > 0 for r in val)
    (train_row,) = rows(tmp_path)
    for key in ("step", "epoch", "loss", "lr", "subnet_p", "depth", "images_per_s"):
        assert key in train_row
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()


def test_checkpoint_optimizer_state_loads_weights_only(tmp_path, tokens_dir):
    train(cfg(tmp_path, tokens_dir, epochs=1, strategy="full"))
    blob = torch.load(tmp_path / "checkpoint" / "optim.pt", weights_only=True)
    assert blob["optimizer"]["state"] and "param_groups" in blob["optimizer"]
    from model.checkpoint import load_state_file

    sd = load_state_file(tmp_path / "checkpoint" / "model.safetensors")
    assert "class_emb.weight" in sd and "blocks.3.ffn.fc2.weight" in sd


def test_init_from_checkpoint_loads_weights(tmp_path, tokens_dir):
    from model.checkpoint import load_state_file
    from model.pipeline import VARPipeline

    src = tmp_path / "init.pth"
    torch.save(VARPipeline.from_spec("var-tiny", seed=123).var.state_dict(), src)
    res = train(cfg(tmp_path / "run", tokens_dir, epochs=1, max_steps=1, init=str(src), lr=0.0, wd=0.0))
    assert res["step"] == 1
    got = load_state_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert torch.equal(got["pos_1LC"], torch.load(src, weights_only=True)["pos_1LC"])   # lr 0: unchanged


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown training option"):
        config_from_dict({"modle": "var-tiny"})


def test_activation_checkpointing_trains_identically(tmp_path, tokens_dir):
    """--grad-checkpoint recomputes activations in backward; the loss trajectory is the same."""
    kw = dict(batch=8, epochs=2, strategy="progressive", e1=0.5, e2=1, e3=1, max_steps=4)
    train(cfg(tmp_path / "plain", tokens_dir, **kw))
    train(cfg(tmp_path / "ckpt", tokens_dir, grad_checkpoint=True, **kw))
    a, b = rows(tmp_path / "plain"), rows(tmp_path / "ckpt")
    assert [r["depth"] for r in a] == [r["depth"] for r in b]
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-5, (ra, rb)


def test_save_final_off_writes_no_checkpoint(tmp_path, tokens_dir):
    """Benchmarks skip the end-of-run checkpoint (d30 would write ~24 GB); metrics are still written."""
    train(cfg(tmp_path, tokens_dir, max_steps=2, save_final=False))
    assert len(rows(tmp_path)) == 2
    assert not (tmp_path / "checkpoint").exists()
