"""The toy study's units (scripts/toy_study.py runs them): one training run through ``varbench train``'s library
(with its ``train.toml``, resume and deadline), the fp16 export, the evaluation of a run through the sensitivity
library (toy accuracy, FD, KL, drift to the pretrained network) and its row bookkeeping, and the pack that carries
a study folder between device calls.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

from varbench import results
from varbench.reporting.strategies import DRIFT
from varbench.schema import TOY_STUDY
from varbench.workflows.toy_study_plan import (
    METRIC_OF, PACK_FILE, PACK_LIMIT, ROWS_FILE, OutOfTime, StudyConfig, _epochs, _portable, command_line,
    parse_strategy, pretrain_config, split_run)

# ---- training (library API of `varbench train`) ----------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_train_toml(run: Path, fields: dict[str, Any]) -> Path:
    """RUN/train.toml: the options ``python3 -m varbench train --config`` reproduces this run from."""
    lines = ["# python3 -m varbench train --config THIS_FILE (written by scripts/toy_study.py)", "[train]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items() if v is not None]
    results.atomic_write_text(run / "train.toml", "\n".join(lines) + "\n")
    return run / "train.toml"


def train_run(fields: dict[str, Any], deadline: float | None = None,
              on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train (or resume, when RUN/checkpoint holds an unfinished run) one run to its max_steps; returns the
    trainer's result plus wall seconds and the median throughput. OutOfTime when ``deadline`` passes."""
    from model.train import state as state_mod
    from model.train.loop import TrainConfig, config_from_dict, train

    run = Path(fields["out"])
    run.mkdir(parents=True, exist_ok=True)
    write_train_toml(run, fields)
    try:
        meta = state_mod.load_meta(run)
    except ValueError:
        meta = None
    if meta is not None and meta["config"].get("max_steps") == fields["max_steps"]:
        cfg = config_from_dict(meta["config"] | {"out": str(run), "resume": str(run), "device": fields["device"]})
    else:
        cfg = config_from_dict(dataclasses.asdict(TrainConfig()) | fields).validate()
    speeds: list[float] = []

    def hook(row: dict) -> None:
        if row.get("kind") == "train" and row.get("step", 0) > row.get("total_steps", 0) // 10:
            speeds.append(float(row["images_per_s"]))
        if on_log:
            on_log(row)
        if deadline is not None and time.time() > deadline:
            raise OutOfTime(f"{run.name}: deadline reached at step {row.get('step')}")

    t0 = time.perf_counter()
    res = train(cfg, on_log=hook)
    res["wall_s"] = time.perf_counter() - t0
    res["images_per_s"] = statistics.median(speeds) if speeds else res.get("images_per_s")
    results.write_manifest(run, {"kind": "toy_study_run", "run": run.name,
                                 "command_line": command_line(sys.argv[1:]),
                                 "reproduce": f"python3 -m varbench train --config {_portable(run)}/train.toml"})
    return res


def export_half(run: Path) -> Path:
    """RUN/var.safetensors: the final checkpoint in fp16 (what ships, and what fine-tuning starts from)."""
    from safetensors.torch import load_file

    from model.checkpoint import save_safetensors

    sd = load_file(str(run / "checkpoint" / "model.safetensors"))
    meta = json.loads((run / "checkpoint" / "state.json").read_text())
    out = run / "var.safetensors"
    save_safetensors({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, out,
                     {"format": "varbench", "model": meta["config"]["model"], "dtype": "float16",
                      "step": str(meta["step"])})
    return out


def metrics_rows(run: Path) -> list[dict]:
    return results.read_rows(run / "metrics.jsonl")


def final_val(run: Path) -> dict[str, float]:
    """The last validation CE per schedule name (full, d2, ...) from the run's metrics."""
    out: dict[str, float] = {}
    for r in metrics_rows(run):
        if r.get("kind") == "val":
            out[r["schedule"]] = float(r["loss"])
    return out


def probe_throughput(cfg: StudyConfig) -> float:
    """Training images/s of one process at the pretraining batch: a short throwaway run (probe.json)."""
    fields = pretrain_config(cfg, 40 if not cfg.smoke else 4) | {
        "synthetic_size": cfg.pretrain_batch * 8, "val_size": 0, "save_final": False, "log_every": 5,
        "out": str(cfg.out / "probe")}
    fields["epochs"] = _epochs(fields["max_steps"], cfg.pretrain_batch, fields["synthetic_size"])
    res = train_run(fields)
    shutil.rmtree(cfg.out / "probe", ignore_errors=True)
    ips = float(res["images_per_s"] or 1.0)
    results.atomic_write_text(cfg.out / "probe.json", json.dumps({"images_per_s": ips, "steps": res["step"],
                                                                  "batch": cfg.pretrain_batch}) + "\n")
    return ips


# ---- evaluation (the sensitivity library) -----------------------------------------------------------------------
def sensitivity_config(cfg: StudyConfig, weights: Path):
    from varbench.quality.sensitivity import SensitivityConfig

    return SensitivityConfig(model=cfg.model, ckpt=str(weights), vae=cfg.vae, depths=list(cfg.depths),
                             scales=[cfg.switch], mode="from", samples=cfg.samples,
                             batch=min(cfg.eval_batch, cfg.samples), metric="toy", seed=0, cfg=cfg.cfg,
                             top_k=cfg.top_k, top_p=cfg.top_p, device=cfg.device, dtype=cfg.eval_dtype,
                             compile=False)


_PRETRAINED_REF: dict[tuple, Any] = {}


def drift(cfg: StudyConfig, run_dir: Path) -> dict[str, tuple[float, Any]]:
    """Schedule name -> (guided KL to the pretrained full network, its bootstrap interval), teacher-forced on the
    pretrained network's own samples (``sensitivity.compute_reference`` of the pretrained weights, once per
    process), so every run and subnet is measured against one fixed teacher."""
    import tempfile

    import torch

    from model.schedule import DepthSchedule
    from varbench.quality import intervals, metrics
    from varbench.quality.sensitivity import compute_reference, next_scale_logits
    from varbench.target import load_pipeline, resolve_weights

    pre = cfg.out / "pretrain" / "var.safetensors"
    scfg = sensitivity_config(cfg, pre)
    key = (str(pre.resolve()), pre.stat().st_mtime, cfg.samples, cfg.eval_batch, cfg.cfg, cfg.device)
    if key not in _PRETRAINED_REF:
        _PRETRAINED_REF.clear()
        target = scfg.target()
        pipe = load_pipeline(target, resolve_weights(target))
        with tempfile.TemporaryDirectory() as d:
            _PRETRAINED_REF[key] = compute_reference(pipe, scfg, Path(d), None)
        del pipe
    ref = _PRETRAINED_REF[key]
    target = dataclasses.replace(scfg, ckpt=str(run_dir / "var.safetensors")).target()
    pipe = load_pipeline(target, resolve_weights(target))
    spec = pipe.spec
    scheds = {"full": DepthSchedule.full(spec)}
    scheds |= {f"d{d}": DepthSchedule.variant(spec, d, cfg.switch) for d in cfg.depths}
    out = {}
    with torch.no_grad():
        for name, sched in scheds.items():
            kl = torch.cat([metrics.sampled_kl_per_sample_scale(
                logits_ref.to(pipe.device), next_scale_logits(pipe, labels, idx, sched, scfg), spec.begin_ends,
                cfg.top_k, cfg.top_p).cpu() for labels, idx, logits_ref in zip(ref.labels, ref.indices, ref.logits)])
            per_sample = kl.double().mean(1).numpy()
            out[name] = (float(per_sample.mean()), intervals.bootstrap_interval(per_sample))
    return out


def evaluate_run(cfg: StudyConfig, run_dir: Path, run: str, info: dict[str, Any]) -> list[dict]:
    """Study rows of one run: the full network and every subnet at the switch, each metric with its interval.
    ``run_sensitivity`` (mode ``from``, --metric toy) does the measuring, ``drift`` adds the KL to the pretrained
    network; this maps their rows onto the study's."""
    from varbench.quality.sensitivity import run_sensitivity

    scfg = sensitivity_config(cfg, run_dir / "var.safetensors")
    t0 = time.perf_counter()
    srows = run_sensitivity(scfg, run_dir / "eval")
    kl_pre = drift(cfg, run_dir)
    eval_s = time.perf_counter() - t0
    (run_dir / "eval" / "reference.pt").unlink(missing_ok=True)      # a sample cache; the rows are the result
    val = final_val(run_dir)
    strat, seed = (run, 0) if run == "pretrain" else split_run(run)
    p = parse_strategy(strat).get("p") if run != "pretrain" else None
    out = []
    for r in srows:
        if r["metric"] not in METRIC_OF:
            continue
        full = r["mode"] == "reference"
        name = "full" if full else f"d{r['depth']}"
        out.append({
            "kind": TOY_STUDY.name, "model": r["model"], "weights": r["weights"], "run": run,
            "strategy": "pretrained" if run == "pretrain" else strat, "subnet_p": p, "train_seed": seed,
            "steps": info.get("steps"), "batch": info.get("batch"), "schedule": name, "depth": r["depth"],
            "switch": cfg.switch, "metric": r["metric"], "value": r["value"], "ci_low": r.get("ci_low"),
            "ci_high": r.get("ci_high"), "n": r.get("n"), "ci_method": r.get("ci_method"),
            "kl_kind": r.get("kl_kind"), "real_fd": r.get("real_fd"), "samples": cfg.samples, "cfg": cfg.cfg,
            "top_k": cfg.top_k, "top_p": cfg.top_p, "val_loss": val.get(name),
            "train_seconds": info.get("wall_s"), "eval_seconds": eval_s})
    like = {r["schedule"]: r for r in out if r["metric"] == "toy_acc"}
    for name, (value, iv) in kl_pre.items():
        out.append(like[name] | {"metric": DRIFT, "value": value, **iv.fields(), "kl_kind": "guided",
                                 "real_fd": None})
    return out


def _budget(run: str, steps: int | None) -> int | None:
    """A fine-tune's steps belong to its identity (a changed --finetune-steps reruns it); the pretraining's not."""
    return None if run == "pretrain" else steps


def row_key(r: dict) -> tuple:
    return (r["run"], r["schedule"], r["metric"], r["samples"], r["cfg"], _budget(r["run"], r.get("steps")))


def expected_keys(cfg: StudyConfig, run: str) -> set[tuple]:
    b = _budget(run, cfg.finetune_steps)
    keys = {(run, "full", m, cfg.samples, cfg.cfg, b) for m in ("toy_acc", "toy_fd", DRIFT)}
    keys |= {(run, f"d{d}", m, cfg.samples, cfg.cfg, b) for d in cfg.depths for m in (*METRIC_OF, DRIFT)}
    return keys


def current(cfg: StudyConfig, r: dict) -> bool:
    """A row of this configuration: same samples and guidance, and a fine-tune of the configured budget."""
    return (r.get("kind") == TOY_STUDY.name and r["samples"] == cfg.samples and r["cfg"] == cfg.cfg
            and (r["run"] == "pretrain" or r.get("steps") == cfg.finetune_steps))


def row_keys(cfg: StudyConfig) -> set[tuple]:
    return {row_key(r) for r in results.read_rows(cfg.out / ROWS_FILE) if r.get("kind") == TOY_STUDY.name}


def evaluated(cfg: StudyConfig, run: str, have: set[tuple] | None = None) -> bool:
    return expected_keys(cfg, run) <= (row_keys(cfg) if have is None else have)


# ---- packing (what comes back from the device) ------------------------------------------------------------------
SKIP_PARTS = {"checkpoint", "checkpoint.tmp", "checkpoint.old", "probe"}
SKIP_NAMES = {"reference.pt", ".varbench.lock", "optim.pt"}


def pack(cfg: StudyConfig) -> Path | None:
    """PACK/toy_study.tar.gz of the study folder without optimizer states, fp32 checkpoints, sample caches and
    fine-tuned weights (only the pretrained fp16 weights travel); the ``keep`` runs' fp16 weights beside it."""
    if cfg.pack is None:
        return None
    cfg.pack.mkdir(parents=True, exist_ok=True)
    base = cfg.out.resolve()

    def skip(p: Path) -> bool:
        rel = p.relative_to(base).parts
        if set(rel) & SKIP_PARTS or p.name in SKIP_NAMES:
            return True
        return (p.suffix == ".safetensors" and not rel[0].startswith("pretrain")) or p.suffix == ".html"

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(base.rglob("*")):
            if p.is_file() and not skip(p):
                tar.add(p, arcname=str(Path(base.name) / p.relative_to(base)))
    dest = cfg.pack / PACK_FILE
    tmp = dest.with_name("." + dest.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, dest)
    if dest.stat().st_size > PACK_LIMIT:
        print(f"warning: {dest} is {dest.stat().st_size / 2**20:.1f} MiB, over the 16 MiB the device returns",
              file=sys.stderr)
    for run in cfg.keep:
        w = cfg.out / "finetune" / run / "var.safetensors"
        if w.exists():
            shutil.copyfile(w, cfg.pack / f"var-{run}.safetensors")
    return dest
