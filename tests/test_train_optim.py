"""LR schedule values ("lin0") and the official AdamW parameter groups."""
from __future__ import annotations

import pytest
import torch

from model.train.optim import build_adamw, lr_at, no_decay, param_groups, peak_lr


def test_peak_lr_linear_scaling():
    assert peak_lr(1e-4, 768) == pytest.approx(3e-4)
    assert peak_lr(8e-5, 1024) == pytest.approx(3.2e-4)


def test_lr_schedule_warmup_flat_decay():
    peak, total, wp = 1.0, 1001, 100
    assert lr_at(0, total, wp, peak) == pytest.approx(0.005)                  # wp0·peak
    assert lr_at(50, total, wp, peak) == pytest.approx(0.005 + 0.995 * 0.5)   # linear warm-up
    assert lr_at(100, total, wp, peak) == pytest.approx(1.0)
    # flat for 5% of the 900 post-warm-up iterations (it < 145), then linear decay to wpe at the last iteration
    assert lr_at(144, total, wp, peak) == pytest.approx(1.0)
    assert lr_at(1000, total, wp, peak, wpe=0.01) == pytest.approx(0.01)
    mid = 100 + 0.05 * 900 + 0.5 * 0.95 * 900                                  # halfway through the decay
    assert lr_at(round(mid), total, wp, peak, wpe=0.01) == pytest.approx(0.01 + 0.99 * 0.5, abs=2e-3)
    vals = [lr_at(i, total, wp, peak) for i in range(145, 1001)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))                         # monotone decay


def test_param_groups_follow_official_rules(tiny_spec):
    from model.var import VAR

    var = VAR(tiny_spec)
    groups = param_groups(var.named_parameters(), 0.05)
    decay, skip = set(groups[0]["names"]), set(groups[1]["names"])
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert "class_emb.weight" in decay
    assert "blocks.0.attn.mat_qkv.weight" in decay and "head.weight" in decay
    for name in ("pos_1LC", "pos_start", "lvl_embed.weight", "blocks.0.attn.scale_mul_1H11",
                 "blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "head.bias", "word_embed.bias"):
        assert name in skip, name
    assert decay.isdisjoint(skip)
    assert len(decay) + len(skip) == len(list(var.parameters()))
    assert no_decay("module.blocks.3.ada_gss", torch.zeros(1, 1, 6, 8))


def test_build_adamw_betas_and_groups(tiny_spec):
    from model.var import VAR

    opt = build_adamw(VAR(tiny_spec), lr=1e-3, weight_decay=0.05)
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
