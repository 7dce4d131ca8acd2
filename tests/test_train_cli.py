"""``varbench train``: bad configs exit 2 with one line; two gloo ranks under torchrun equal one process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from varbench.cli import app

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, msg", [
    (["--strategy", "nope"], "unknown strategy"),
    (["--strategy", "fixed", "--subnet-p", "1.5"], "outside [0, 1]"),
    (["--data", "/definitely/not/here"], "does not exist"),
    (["--model", "var-d99"], "unknown model"),
    (["--depths", "2,9"], "outside"),
    (["--precision", "fp8"], "precision"),
    (["--stage", "gan"], "--stage"),
])
def test_bad_config_exits_2_with_one_line(args, msg, tmp_path):
    res = CliRunner().invoke(app, ["train", "--model", "var-tiny", "--out", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0], res.stderr
    assert "Traceback" not in res.output


def test_bad_toml_key_exits_2(tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text('[train]\nmodel = "var-tiny"\nbatchsize = 4\n')
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "batchsize" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], out: Path) -> list[dict]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_equal_one(tmp_path):
    """Same global batch of 8: 2 ranks x 4 (torchrun, gloo) vs 1 x 8; class dropout and depth draws included."""
    from model.pipeline import VARPipeline
    from model.spec import SPECS
    from model.train.data import pretokenize
    from model.train.toy_data import ToyDataset

    spec = SPECS["var-tiny"]
    tok = pretokenize(ToyDataset(16, 0, spec.image_size, 10), VARPipeline.from_spec(spec, seed=0).vae,
                      tmp_path / "tok", spec.patch_nums, spec.vae.vocab_size)
    common = ["train", "--model", "var-tiny", "--vae", "random", "--data", str(tok), "--strategy", "fixed",
              "--subnet-p", "0.5", "--batch", "8", "--epochs", "2", "--max-steps", "3", "--log-every", "1",
              "--drop-path", "0", "--lr", "3e-3", "--warmup", "1", "--device", "cpu", "--val-size", "0"]
    one = _run([sys.executable, "-m", "varbench", *common, "--out", str(tmp_path / "one")], tmp_path / "one")
    two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(_free_port()), "-m", "varbench", *common, "--out", str(tmp_path / "two")],
               tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert a["depth"] == b["depth"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
    assert one[-1]["loss"] != one[0]["loss"]               # the steps really updated the model


def _checksum_rank(rank: int, world: int, init_file: str, seeds: tuple[int, int], out: str) -> None:
    import torch.distributed as dist

    from model.train.distributed import DistEnv, same_on_all_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(seeds[rank])
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        same = same_on_all_ranks(model, DistEnv(rank=rank, world=world, device=torch.device("cpu")))
        Path(out, f"rank{rank}").write_text(str(same))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("seeds,expect", [((0, 0), "True"), ((0, 1), "False")])
def test_same_on_all_ranks_detects_different_weights(tmp_path, seeds, expect):
    """DDP skips its start-up broadcast only when an all-reduced checksum proves the ranks already agree."""
    import torch.multiprocessing as mp

    mp.spawn(_checksum_rank, args=(2, str(tmp_path / "init"), seeds, str(tmp_path)), nprocs=2)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == [expect, expect]
