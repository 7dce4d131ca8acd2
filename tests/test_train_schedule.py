"""A run cut short by --max-steps compresses the epoch plan onto its steps (lr warm-up and decay, progressive
phases), and --init random trains at a from-scratch lr: a 20-step run really trains (issue 20)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from model.train.loop import SCRATCH_LR, TrainConfig, peak_lr_of
from varbench.cli.app import app


def test_twenty_step_run_warms_up_ramps_p_and_keeps_a_real_lr(tmp_path):
    res = CliRunner().invoke(app, ["train", "--model", "var-tiny", "--vae", "random", "--synthetic-size", "64",
                                   "--batch", "8", "--max-steps", "20", "--log-every", "1", "--val-size", "0",
                                   "--device", "cpu", "--no-save-final", "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.stderr
    assert "compressed to 20 steps" in res.stderr                 # said loudly
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 21))
    peak = SCRATCH_LR * (8 / 256) ** 0.5
    lrs = {r["step"]: r["lr"] for r in train}
    assert max(lrs.values()) == peak and lrs[1] == peak            # no warm-up sized for 30 epochs (was 1.9e-7)
    assert lrs[10] > 0.5 * peak                                    # the decay spans the 20 steps
    assert lrs[20] >= 0.01 * peak > 100 * 1.9e-7 / 20              # the schedule's own end value, not warm-up
    ps = [r["subnet_p"] for r in train]
    assert ps[0] == 0.2 and ps[-1] == 1.0 and any(0.2 < p < 1.0 for p in ps)   # all three phases ran
    assert any(r["depth"] < 4 for r in train)                      # subnets were trained
    out = json.loads(res.stdout)
    assert out["schedule_steps"] == 20 and out["total_steps"] > 20


def test_from_scratch_lr_and_official_lr():
    assert peak_lr_of(TrainConfig(init="random", batch=256)) == SCRATCH_LR
    assert peak_lr_of(TrainConfig(init="random", batch=16)) == SCRATCH_LR * 0.25
    assert peak_lr_of(TrainConfig(init="w.pth", batch=256)) == 1e-4           # the official tblr, linear
    assert peak_lr_of(TrainConfig(init="random", batch=16, tblr=1e-4)) == 1e-4 * 16 / 256
    assert peak_lr_of(TrainConfig(init="random", lr=3e-3)) == 3e-3
