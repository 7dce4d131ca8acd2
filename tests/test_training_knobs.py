"""The training and sampling knobs that every other test survived without (issue 19, point 5, mutation testing):
class dropout in the trainer and in ``VAR.forward``, the gradient clip, the default warm-up, and one sampling
generator per generation. Each test fails on the hand-made mutant named in its docstring."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import model.var as var_mod
from model import spec as spec_mod
from model.pipeline import VARPipeline
from model.train.loop import TrainConfig, train
from tests.test_train_loop import tokens_dir  # noqa: F401 - the 16 tokenised toy images, a module fixture

TINY = spec_mod.SPECS["var-tiny"]


def _rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(model="var-tiny", vae="random", data=str(data), batch=16, epochs=2, lr=4e-3, warmup=1,
                log_every=1, out=str(out), device="cpu", val_size=0, save_final=False)
    return TrainConfig(**(base | kw))


def test_trainer_feeds_the_null_class(tmp_path, tokens_dir, monkeypatch):  # noqa: F811
    """Mutant: ``_class_dropout`` returns the labels unchanged. The labels the model sees in training must hold
    the CFG null class at about the asked rate, and never without dropout."""
    seen: list[torch.Tensor] = []
    real = var_mod.VAR.forward

    def spy(self, label_B, *a, **k):
        seen.append(label_B.detach().cpu().clone())
        return real(self, label_B, *a, **k)

    monkeypatch.setattr(var_mod.VAR, "forward", spy)
    train(_cfg(tmp_path / "drop", tokens_dir, epochs=4, cond_drop=0.5))
    labels = torch.cat(seen)
    null = (labels == TINY.num_classes).float().mean().item()
    assert 0.3 < null < 0.7, f"null-class share {null:.2f} at cond_drop 0.5"
    seen.clear()
    train(_cfg(tmp_path / "nodrop", tokens_dir, epochs=1, cond_drop=0.0))
    assert seen and not any((t == TINY.num_classes).any() for t in seen)


def test_var_forward_class_dropout_in_training():
    """Mutant: ``VAR.forward``'s class dropout removed. With drop path off (so train and eval differ only by class
    dropout), rate 1 must give exactly the unconditional logits, and rate 0.5 a mix of rows of both."""
    torch.manual_seed(0)
    s = dataclasses.replace(TINY, drop_path_rate=0.0, cond_drop_rate=1.0, init_adaln_gamma=1.0, init_head=1.0)
    var = var_mod.VAR(s)
    x = torch.randn(8, s.L - 1, s.vae.z_channels)
    labels = torch.arange(8) % s.num_classes
    with torch.no_grad():
        cond = var.eval()(labels, x)
        uncond = var.eval()(torch.full_like(labels, s.num_classes), x)
        assert not torch.allclose(cond, uncond)
        assert torch.allclose(var.train()(labels, x), uncond, atol=1e-6)
        var.spec = dataclasses.replace(s, cond_drop_rate=0.5)
        torch.manual_seed(3)
        mixed = var.train()(labels, x)
    as_uncond = [torch.allclose(mixed[i], uncond[i], atol=1e-6) for i in range(8)]
    as_cond = [torch.allclose(mixed[i], cond[i], atol=1e-6) for i in range(8)]
    assert all(u != c for u, c in zip(as_uncond, as_cond)) and any(as_uncond) and any(as_cond)


def test_gradient_clip_is_applied(tmp_path, tokens_dir):  # noqa: F811
    """Mutant: the clip set to infinity. The official default is 2.0, and the clip value changes the update: a
    clip of 1e-12 shrinks the gradients below AdamW's eps, so the weights barely move where clip 2.0 moves them."""
    from model.checkpoint import load_state_file

    assert TrainConfig().grad_clip == 2.0
    moved = {}
    for clip in (2.0, 1e-12):
        out = tmp_path / f"clip{clip}"
        train(_cfg(out, tokens_dir, epochs=1, grad_clip=clip, wd=0.0, save_final=True))
        moved[clip] = load_state_file(out / "checkpoint" / "model.safetensors")["head.weight"]
    assert not torch.allclose(moved[2.0], moved[1e-12])


def test_default_warmup_is_two_percent_of_the_run(tmp_path, tokens_dir):  # noqa: F811
    """Mutant: the default warm-up (2% of the run, the official ep/50) set to zero. 100 steps -> 2 warm-up steps:
    the first step runs at wp0·peak and the second halfway up, then the peak."""
    cfg = _cfg(tmp_path, tokens_dir, epochs=100, warmup=None, log_every=1)
    train(cfg)
    lr = [r["lr"] for r in _rows(tmp_path)]
    peak, wp0 = cfg.lr, cfg.wp0
    assert len(lr) == 100
    assert lr[0] == pytest.approx(wp0 * peak)
    assert lr[1] == pytest.approx(peak * (wp0 + (1 - wp0) / 2))
    assert lr[2] == pytest.approx(peak)


def test_one_generator_per_generation_not_per_scale():
    """Mutant: the sampling generator re-seeded at every scale. With a zero head every logit is equal, so each
    token is the argmax of its Gumbel noise: re-seeding would repeat the first scale's noise, making the first
    token of every scale the same. The noise must be fresh at each scale (and still fixed by the seed)."""
    pipe = VARPipeline.from_spec(TINY, seed=0)
    with torch.no_grad():
        pipe.var.head.weight.zero_()
        pipe.var.head.bias.zero_()
    a = pipe.generate([1, 2], top_k=0, top_p=0.0, seed=4, decode=False).indices
    b = pipe.generate([1, 2], top_k=0, top_p=0.0, seed=4, decode=False).indices
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # image 0's first token reads the first V noise values of its scale's draw: a re-seeded generator repeats them
    first = [int(idx[0, 0]) for idx in a]
    assert len(set(first)) > 1, f"image 0's first token is {first[0]} at every scale"
