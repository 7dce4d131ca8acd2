"""One model target and one loader: portable weights labels, the random-weights rule, every run kind building
through ``varbench.target.load_pipeline``, and a CLI edge with frozen, torchrun-safe train flags."""
from __future__ import annotations

import ast
import dataclasses
import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import typer

from varbench import target as target_mod
from varbench.errors import UsageError
from varbench.target import ModelTarget, Weights, file_sha256, portable_config, resolve_weights

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "model" / "weights" / "var-toy"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """var-tiny's seed-3 random init saved as files, so "explicit weights" need no download."""
    from model import VARPipeline
    from model.checkpoint import save_safetensors

    d = tmp_path_factory.mktemp("weights")
    pipe = VARPipeline.from_spec("var-tiny", seed=3)
    save_safetensors(pipe.var, d / "var.safetensors", {})
    save_safetensors(pipe.vae, d / "vae.safetensors", {})
    return d / "var.safetensors", d / "vae.safetensors"


def _assert_portable(text: str, *local: Path) -> None:
    for p in (Path.home(), REPO, *local):
        assert str(p) not in text, f"{p} leaked into {text[:200]!r}"


# ---- weights identity -----------------------------------------------------------------------------------------
def test_labels_name_source_file_and_hash_never_a_path(tiny_files):
    var_p, vae_p = tiny_files
    w = resolve_weights(ModelTarget("var-tiny", str(var_p), str(vae_p)))
    assert w.label == f"file:var.safetensors@{file_sha256(var_p)[:12]}" and w.var_path == str(var_p)
    shipped = resolve_weights(ModelTarget("var-toy"))
    assert shipped.label.startswith("shipped:var-toy@") and shipped.vae_path == str(SHIPPED / "vae.safetensors")
    for label in (w.label, shipped.label):
        assert "/" not in label and "\\" not in label
        _assert_portable(label, var_p.parent)
    # the shipped file given explicitly is still the shipped weights, under the same name
    assert resolve_weights(ModelTarget("var-toy", str(SHIPPED / "var.safetensors"))).label == shipped.label


def test_same_content_same_hash_hashed_once(tiny_files, tmp_path, monkeypatch):
    var_p, _ = tiny_files
    copy = tmp_path / "elsewhere" / "var.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(var_p, copy)
    assert resolve_weights(ModelTarget("var-tiny", str(copy))).label == \
        resolve_weights(ModelTarget("var-tiny", str(var_p))).label
    calls = []
    real = target_mod.hashlib.sha256
    monkeypatch.setattr(target_mod.hashlib, "sha256", lambda: calls.append(1) or real())
    for _ in range(3):
        file_sha256(copy)                      # cached per (path, size, mtime)
    assert calls == []
    with open(copy, "ab") as f:                # changed content: hashed again, another label
        f.write(b"x")
    assert file_sha256(copy) != file_sha256(var_p) and calls == [1]


def test_random_weights_need_allow_random():
    with pytest.raises(UsageError, match="--allow-random"):
        resolve_weights(ModelTarget("var-tiny"))
    w = resolve_weights(ModelTarget("var-tiny", allow_random=True))
    assert w == Weights("random", notice=w.notice) and w.random and "RANDOM WEIGHTS" in w.notice
    with pytest.raises(UsageError, match="--ckpt"):
        resolve_weights(ModelTarget("var-tiny", ckpt="/no/such/var.pth", allow_random=True))


def test_target_takes_only_resolved_settings():
    with pytest.raises(UsageError, match="resolve"):
        ModelTarget("var-tiny", device="auto")
    with pytest.raises(UsageError, match="--dtype"):
        ModelTarget("var-tiny", dtype="int8")
    with pytest.raises(UsageError, match="unknown model"):
        _ = ModelTarget("var-d99").spec
    assert ModelTarget("var-tiny", device="cuda:1").name == "var-tiny"
    assert portable_config({"ckpt": "/home/me/w/var_d30.pth", "vae": None, "depth": 2}) == \
        {"ckpt": "var_d30.pth", "vae": None, "depth": 2}


def test_bad_checkpoint_is_a_usage_error(tmp_path):
    bad = tmp_path / "var.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot load var-tiny weights"):
        target_mod.load_pipeline(ModelTarget("var-tiny", str(bad), str(bad)))


# ---- every run kind builds through load_pipeline -----------------------------------------------------------
@pytest.fixture
def loads(monkeypatch) -> list[tuple[ModelTarget, Weights | None]]:
    seen: list[tuple[ModelTarget, Weights | None]] = []
    real = target_mod.load_pipeline

    def spy(target: ModelTarget, weights: Weights | None = None):
        seen.append((target, weights))
        return real(target, weights)

    monkeypatch.setattr(target_mod, "load_pipeline", spy)
    return seen


def test_sweep_point_builds_through_the_loader(loads, tiny_files):
    from varbench.measuring import sweep, sweep_worker

    cfg = sweep.SweepConfig(model="var-tiny", ckpt=str(tiny_files[0]), vae=str(tiny_files[1]), depths=[2],
                            batches=[1], switches=[2], dtype="fp32", device="cpu", repeats=1, min_seconds=0.0,
                            warmup=0, threads=1)
    weights = resolve_weights(cfg.target())
    (point,) = sweep.expand_grid(cfg, weights)
    res = sweep_worker.measure_point(point)
    assert res["status"] == "ok"
    assert [(t.name, t.dtype, t.device, w.label) for t, w in loads] == [("var-tiny", "fp32", "cpu", weights.label)]
    _assert_portable(json.dumps(sweep.base_row(point, weights)), tiny_files[0].parent)


def test_trace_builds_through_the_loader_and_writes_no_path(loads, tiny_files, tmp_path):
    from varbench.measuring.trace import TraceConfig, run_trace

    summary = run_trace(TraceConfig(model="var-tiny", ckpt=str(tiny_files[0]), vae=str(tiny_files[1]), depth=2,
                                    switch=2, dtype="fp32", device="cpu", overhead_repeats=0), tmp_path)
    assert len(loads) == 1 and summary["weights"].startswith("file:var.safetensors@")
    for f in ("trace.jsonl", "manifest.json"):
        _assert_portable((tmp_path / f).read_text(), tiny_files[0].parent)


def test_sensitivity_builds_through_the_loader(loads, tmp_path):
    from varbench.quality.sensitivity import SensitivityConfig, run_sensitivity

    rows = run_sensitivity(SensitivityConfig(model="var-tiny", allow_random=True, samples=1, batch=1, depths=[2],
                                             scales=[3], device="cpu"), tmp_path)
    assert rows and {r["weights"] for r in rows} == {"random"}
    assert [(t.dtype, t.device, t.allow_random) for t, _ in loads] == [("fp32", "cpu", True)]


def test_demo_parts_share_one_target():
    from varbench.workflows.demo import demo_plan

    plan = demo_plan(quick=True)
    targets = {plan.sweep.target(), plan.trace.target(), *(c.target() for c in plan.sensitivity)}
    assert targets == {ModelTarget("var-toy", dtype="fp32", device="cpu")}      # shipped weights, never random


def test_trainer_finds_the_vae_through_the_shared_lookup(monkeypatch):
    import torch

    from model import pipeline
    from model.train import loop

    seen = []
    real = pipeline.locate_weights
    monkeypatch.setattr(pipeline, "locate_weights", lambda *a, **k: seen.append(a[0].name) or real(*a, **k))
    *_, vae_path = loop._build_models(loop.TrainConfig(model="var-toy"), torch.device("cpu"))
    assert seen == ["var-toy"] and Path(vae_path) == SHIPPED / "vae.safetensors"


def test_eval_script_builds_through_the_loader(loads, tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "progressive" / "checkpoint").mkdir(parents=True)
    (run / "vqvae").mkdir()
    shutil.copyfile(SHIPPED / "var.safetensors", run / "progressive" / "checkpoint" / "model.safetensors")
    shutil.copyfile(SHIPPED / "vae.safetensors", run / "vqvae" / "vae.safetensors")
    out = tmp_path / "ablation.jsonl"
    monkeypatch.setattr(sys, "argv", ["eval_toy_ablation.py", str(run), str(out), "--samples", "2", "--depths",
                                      "2", "--strategies", "progressive", "--device", "cpu"])
    runpy.run_path(str(REPO / "scripts" / "eval_toy_ablation.py"), run_name="__main__")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(loads) == 1 and [r["depth"] for r in rows] == [12, 2]
    shipped_hash = resolve_weights(ModelTarget("var-toy")).label.split("@")[1]      # a copy: same bytes, same hash
    assert {r["weights"] for r in rows} == {f"file:model.safetensors@{shipped_hash}"}
    _assert_portable(out.read_text(), tmp_path)


# ---- the CLI edge ---------------------------------------------------------------------------------------------
def test_no_command_imports_another_command():
    """Shared renderers live in varbench/cli/render.py; a command module imports no other command module."""
    commands = REPO / "varbench" / "cli" / "commands"
    for path in commands.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("varbench.cli.commands"), f"{path.name} imports {node.module}"


def _train_options() -> list:
    from varbench.cli.app import app

    return [p for p in typer.main.get_command(app).commands["train"].params if p.param_type_name == "option"]


# the train command's flags, frozen: a rename or a new flag is a deliberate edit here (and in the docs)
TRAIN_FLAGS = sorted("""
--model -m --stage --init --vae --data --strategy --subnet-p --p0 --e1 --e2 --e3 --depths --depth-weights --switch
--select --distill --no-distill --epochs --batch --max-steps --lr --tblr --wd --warmup --grad-clip --precision
--label-smoothing --drop-path --cond-drop --synthetic-size --val-size --log-every --val-every --save-every
--compile --no-compile --save-final --no-save-final --seed --workers --fsdp --no-fsdp --grad-checkpoint
--no-grad-checkpoint --device --out --config --resume --recon --restart-every --json --no-memory-check
""".split())

# torchrun's own options (torch 2.13 plus --print-completion, new in 2.14): a train flag that is a prefix of one
# can be taken, or refused as ambiguous, by torchrun's parser in `torchrun ... -m varbench train FLAGS`
TORCHRUN_FLAGS = {
    "--nnodes", "--nproc-per-node", "--nproc_per_node", "--node-rank", "--node_rank", "--master-addr",
    "--master_addr", "--master-port", "--master_port", "--local-addr", "--local_addr", "--standalone",
    "--rdzv-backend", "--rdzv_backend", "--rdzv-endpoint", "--rdzv_endpoint", "--rdzv-id", "--rdzv_id",
    "--rdzv-conf", "--rdzv_conf", "--max-restarts", "--max_restarts", "--monitor-interval", "--monitor_interval",
    "--start-method", "--start_method", "--role", "--module", "--no-python", "--no_python", "--run-path",
    "--run_path", "--log-dir", "--log_dir", "--redirects", "--tee", "--local-ranks-filter", "--local_ranks_filter",
    "--logs-specs", "--logs_specs", "--event-log-handler", "--event_log_handler", "--numa-binding",
    "--numa_binding", "--signals-to-handle", "--signals_to_handle", "--shutdown-timeout", "--shutdown_timeout",
    "--virtual-local-rank", "--virtual_local_rank", "--duplicate-stdout-filters", "--duplicate-stderr-filters",
    "--print-completion", "--help",
}


def test_train_flag_set_is_frozen():
    flags = sorted(f for p in _train_options() for f in (*p.opts, *p.secondary_opts))
    assert flags == TRAIN_FLAGS


def test_no_train_flag_is_a_prefix_of_a_torchrun_flag():
    torchrun = set(TORCHRUN_FLAGS)
    try:                                      # and whatever the installed torchrun has on top
        from torch.distributed.run import get_args_parser

        torchrun |= {o for a in get_args_parser()._actions for o in a.option_strings if o.startswith("--")}
    except ImportError:
        pass
    ours = {f for p in _train_options() for f in (*p.opts, *p.secondary_opts) if f.startswith("--")}
    clash = sorted((o, theirs) for o in ours for theirs in torchrun if theirs.startswith(o))
    assert clash == []


def test_train_options_map_onto_the_trainer_configs():
    """Every CLI option lands in a typed TrainOptions field named like the config field it overrides."""
    from model.train.loop import TrainConfig
    from model.train.vqvae_trainer import VQVAETrainConfig
    from varbench.cli.commands.train import TrainOptions

    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    config = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(VQVAETrainConfig)}
    assert fields <= config, sorted(fields - config)
    params = {p.name for p in _train_options()} - {"stage", "config", "resume", "json_out", "no_memory_check"}
    assert {"p" if n == "subnet_p" else n for n in params} == fields


def test_each_train_option_reaches_its_config_field(monkeypatch, tmp_path):
    """The explicit option -> field mapping, value by value (a swapped or dropped argument fails here)."""
    from typer.testing import CliRunner

    from varbench.cli import app
    from varbench.cli.commands import train as train_cmd

    seen = {}
    monkeypatch.setattr(train_cmd, "_run_vqvae", lambda given, config, no_memory_check: seen.update(given) or {})
    want = {"model": "var-tiny", "init": "i.pth", "vae": "v.pth", "data": "synthetic", "strategy": "fixed", "p": 0.25,
            "p0": 0.125, "e1": 1.5, "e2": 2.5, "e3": 3.5, "depths": [2, 3], "depth_weights": [1.0, 2.0],
            "switch": 2, "select": "nested", "distill": True, "epochs": 7, "batch": 6, "max_steps": 5, "lr": 0.5,
            "tblr": 0.75, "wd": 0.0625, "warmup": 4, "grad_clip": 1.25, "precision": "fp32",
            "label_smoothing": 0.01, "drop_path": 0.02, "cond_drop": 0.03, "synthetic_size": 33, "val_size": 11,
            "log_every": 3, "val_every": 9, "save_every": 8, "compile": False, "save_final": False, "seed": 42,
            "workers": 2, "fsdp": False, "grad_checkpoint": True, "device": "cpu", "out": str(tmp_path),
            "recon": "mse", "restart_every": 12}
    args = ["train", "--stage", "vqvae"]
    for field, value in want.items():
        flag = train_cmd.flag(field)
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert seen == want
