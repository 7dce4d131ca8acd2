"""The toy-scale study of issue 22 in one command: pretrain var-toy, fine-tune it into supernets, measure, report.

Stages (``--stage``; ``all`` runs them in order, each skipping what is already finished in ``--out``):

- ``pretrain``: the full network from random init (strategy ``full``) by varbench's trainer
  (``model.train.loop.train``, what ``varbench train`` runs; each run folder holds the ``train.toml`` that
  ``python3 -m varbench train --config RUN/train.toml`` reproduces it from), then a fp16 export
  (``pretrain/var.safetensors``) with ``provenance.json`` (command, seed, steps, losses, commit, throughput) and the
  evaluation below. ``--pretrain-minutes M`` sizes the step count from a short throughput probe instead of
  ``--pretrain-steps``; ``--pretrain-init W`` starts from earlier weights instead of random ones. A pretraining
  longer than one device call runs as rounds (a round cannot span calls: its optimizer state does not come back):
  ``--pretrain-continue STEPS:LR:SIZE`` (repeatable) adds a round continued from the last one's export with a
  fresh warm-up and cosine, on its own set size; the rounds are ``pretrain-round<k>/``, the last one
  ``pretrain/``. Each round's provenance nests the one it started from (``init_provenance``), and ``ship`` lists
  every round's commands.
- ``finetune``: from the pretrained weights, every (strategy, seed) supernet fine-tune at equal steps and batch:
  progressive (the paper's 5/15/10-epoch phases, p 0.2 -> 1, laid over the budget), fixed p in {0.1, 0.5, 1.0},
  sandwich; each run is trained, exported and evaluated as one unit (its weights need never leave the machine),
  ``--jobs`` units at a time in their own processes.
- ``eval``: any run with weights but without rows: toy accuracy (Wilson interval), toy FD (bootstrap) of the full
  network and of VARiant-d{2,4,6} at the switch, guided KL / token agreement of each subnet against its own full
  network (``varbench.quality.sensitivity.run_sensitivity``, mode ``from``), and every schedule's guided KL to the
  pretrained full network (metric ``kl_pretrained``: one fixed teacher for all runs), n = ``--samples``.
- ``asymmetry``: the kept supernet's (``--keep``) ``single`` and ``from`` sensitivity matrices over every scale at
  d2/d4/d6, toy metric, ``--asymmetry-samples`` per cell, with intervals (OUT/asymmetry/{single,from}).
- ``report``: ``pareto.json`` (one point per strategy and seed: full-network vs subnet quality, intervals) and
  ``table.md`` (per strategy, and whether progressive reaches the frontier of the fixed ratios, within intervals);
  ``--figure`` adds ``pareto.html`` (plotly, imported only then: not on the GPU machine).
- ``ship`` (not in ``all``): one fine-tuned supernet + the VAE + ``provenance.json`` into ``--ship-dest``.

Rows: ``OUT/toy_study.jsonl`` (kind ``toy_study``, varbench/schema.py), one per (run, schedule, metric, budget); manifests
in ``OUT/manifest.json``. ``--max-minutes M`` starts no unit that its estimate says cannot finish in M minutes and
stops a training that overruns (a rerun resumes); ``--pack DIR`` writes, after every finished unit,
``DIR/toy_study.tar.gz``: the study folder without optimizer states, fp32 checkpoints or sample caches (the
pretrained fp16 weights included: unpack it and carry the folder into the next call). ``--plan`` prints the runs
and the time estimate and does nothing; ``--smoke`` is a tiny CPU version of the whole pipeline.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python3 scripts/toy_study.py --out runs/toy-study --device cuda --jobs 15 \\
        --pretrain-steps 2900 --pretrain-continue 3100:7e-4:400000 --max-minutes 9.2 --pack $OUT
        # the committed study (results/toy/study): the same command every call, carrying runs/toy-study
        # (unpacked from the last call's pack) into the next
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                      # `python3 scripts/toy_study.py` without PYTHONPATH
    sys.path.insert(0, str(ROOT))

from varbench import results                          # noqa: E402
from varbench.errors import UsageError, VarbenchError  # noqa: E402
from varbench.reporting.strategies import (DRIFT, frontier_gap, markdown, run_points,  # noqa: E402
                                           strategy_means, write_figure)
from varbench.workflows.toy_study_plan import (  # noqa: E402 - the study's configuration and plan
    EVAL_S, PACK_FILE, PRETRAINED_FILE, ROWS_FILE, START_S, UNITS_FILE,
    OutOfTime, PretrainRound, StudyConfig, _portable_init, command_line, finetune_config,
    init_provenance, measured_img_s, measured_units, parse_round, parse_strategy, plan, pretrain_config,
    pretrain_rounds, provenance_rounds, run_names, split_run, steps_for_minutes, unit_seconds)
from varbench.workflows.toy_study_units import (  # noqa: E402 - training, evaluation and packing units
    current, evaluate_run, evaluated, export_half, final_val, metrics_rows, pack, probe_throughput, row_key,
    row_keys, sensitivity_config, train_run)



# ---- one fine-tune unit (runs in a worker process with --jobs > 1) ----------------------------------------------
def finetune_unit(cfg: StudyConfig, run: str, deadline: float | None, threads: int | None = None) -> dict:
    """Train (unless its fp16 weights exist), export and evaluate one fine-tune run; returns its rows."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    fields = finetune_config(cfg, run)
    run_dir = Path(fields["out"])
    info_path = run_dir / "train_info.json"
    stale = info_path.exists() and json.loads(info_path.read_text()).get("steps") != cfg.finetune_steps
    if not (run_dir / "var.safetensors").exists() or not info_path.exists() or stale:
        res = train_run(fields, deadline)
        export_half(run_dir)
        info = {"steps": res["step"], "batch": fields["batch"], "wall_s": res["wall_s"],
                "images_per_s": res["images_per_s"], "final_train_loss": res["loss"], "val": final_val(run_dir)}
        results.atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
    info = json.loads(info_path.read_text())
    t0 = time.perf_counter()
    rows = evaluate_run(cfg, run_dir, run, info)
    return {"run": run, "rows": rows, "info": info, "unit_s": info["wall_s"] + time.perf_counter() - t0}


# ---- stages -----------------------------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[toy_study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _left(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline - time.time()


def _pretrain_round(cfg: StudyConfig, rnd: PretrainRound, deadline: float | None) -> bool:
    """Train one round (resuming an unfinished one), export it, write its provenance. False when out of time."""
    run = rnd.out
    prov_path = run / "provenance.json"
    name = run.name
    if not prov_path.exists():
        meta = None
        try:
            from model.train import state as state_mod
            meta = state_mod.load_meta(run)
        except ValueError:
            pass
        if meta is not None:
            steps = int(meta["config"]["max_steps"])           # resume the unfinished run as it was planned
        elif rnd.steps is None:
            ips = probe_throughput(cfg)
            steps = steps_for_minutes(cfg.pretrain_minutes, ips, cfg.pretrain_batch)
            say(f"probe: {ips:.0f} img/s at batch {cfg.pretrain_batch} -> {steps} pretraining steps "
                f"in {cfg.pretrain_minutes} min")
        else:
            steps = rnd.steps
        img_s, _ = measured_img_s(cfg)
        est = START_S[cfg.device_type] + steps * cfg.pretrain_batch / img_s
        if est > _left(deadline):
            say(f"{name} not started: ~{est / 60:.1f} min needed, {_left(deadline) / 60:.1f} min left "
                f"(give --max-minutes more, or fewer steps)")
            return False
        fields = pretrain_config(cfg, steps, rnd)
        say(f"{name}: {steps} steps at batch {cfg.pretrain_batch} from {rnd.init} (~{est / 60:.1f} min)")
        try:
            res = train_run(fields, deadline)
        except OutOfTime as e:
            say(f"{name} stopped: {e}; its last checkpoint resumes on this machine, else it restarts")
            return False
        export_half(run)
        rows = metrics_rows(run)
        prov = {
            "what": f"{cfg.model}: the full network pretrained from {_portable_init(cfg, rnd.init)} init by varbench's "
                    f"trainer "
                    f"on the procedural toy set (scripts/toy_study.py, issue 22)",
            "init": _portable_init(cfg, rnd.init),
            "commands": [command_line(sys.argv[1:]),
                         f"python3 -m varbench train --config {run}/train.toml"],
            "seed": fields["seed"], "steps": res["step"], "batch": fields["batch"], "lr": fields["lr"],
            "images": res["step"] * fields["batch"], "synthetic_size": fields["synthetic_size"],
            "vae": cfg.vae, "wall_s": res["wall_s"], "images_per_s": res["images_per_s"],
            "final_train_loss": res["loss"], "final_val": final_val(run),
            "losses": [{"step": r["step"], "loss": r["loss"]} for r in rows if r.get("kind") == "train"],
            "val_losses": [{"step": r["step"], "schedule": r["schedule"], "loss": r["loss"]}
                           for r in rows if r.get("kind") == "val"],
            "init_provenance": init_provenance(rnd.init),
            "config": fields, "environment": results.environment(),
            "files": {"var.safetensors": (run / "var.safetensors").stat().st_size},
        }
        results.atomic_write_text(prov_path, json.dumps(prov, indent=2, default=str) + "\n")
        pack(cfg)
    return True


def stage_pretrain(cfg: StudyConfig, deadline: float | None) -> bool:
    """Every pretraining round (train, export, provenance), then the last round's evaluation. False when it did
    not finish (time)."""
    for rnd in pretrain_rounds(cfg):
        if not _pretrain_round(cfg, rnd, deadline):
            return False
    run = cfg.out / "pretrain"
    prov_path = run / "provenance.json"
    if not evaluated(cfg, "pretrain"):
        if EVAL_S[cfg.device_type] * cfg.samples / 500 > _left(deadline):
            say("pretrain evaluation not started: no time left")
            return False
        prov = json.loads(prov_path.read_text())
        info = {"steps": prov["steps"], "batch": prov["batch"], "wall_s": prov["wall_s"]}
        _append_rows(cfg, evaluate_run(cfg, run, "pretrain", info))
        pack(cfg)
    acc = next((r for r in results.read_rows(cfg.out / ROWS_FILE)
                if r["run"] == "pretrain" and r["schedule"] == "full" and r["metric"] == "toy_acc"), None)
    if acc:
        goal = "meets" if acc["value"] >= 0.85 else "misses"
        say(f"pretrained full network: toy accuracy {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] "
            f"at cfg {cfg.cfg}, n {acc['n']} ({goal} the 0.85 goal)")
    return True


def _append_rows(cfg: StudyConfig, rows: Sequence[dict]) -> None:
    have = row_keys(cfg)
    for r in rows:
        k = row_key(r)
        if k not in have:
            results.append_row(cfg.out / ROWS_FILE, r)
            have.add(k)


def _settle(result: Callable[[], dict], run: str, finished: Callable[[dict], None], left_over: list[str]) -> None:
    """One fine-tune unit's outcome: recorded, or left for the next call (out of time, or failed: one broken
    unit must not cost the call's other units)."""
    try:
        finished(result())
    except OutOfTime as e:
        say(f"stopped: {e}")
        left_over.append(run)
    except Exception:     # noqa: BLE001 - reported with its traceback, the unit is retried next call
        say(f"{run} failed:\n{traceback.format_exc()}")
        left_over.append(run)


def stage_finetune(cfg: StudyConfig, deadline: float | None) -> bool:
    """Every (strategy, seed) unit not yet evaluated, longest first, ``jobs`` at a time, each started only when
    its estimate fits the time left. False when some were left for a later call."""
    if not (cfg.out / "pretrain" / "var.safetensors").exists():
        say("finetune: no pretrained weights yet (run --stage pretrain first)")
        return False
    have = row_keys(cfg)
    todo = [r for r in run_names(cfg) if not evaluated(cfg, r, have)]
    if not todo:
        return True
    img_s, _ = measured_img_s(cfg)
    jobs = max(1, min(cfg.jobs, len(todo)))
    seen = measured_units(cfg)                # unit seconds per strategy measured by earlier calls

    def estimate(run: str) -> float:
        strat = split_run(run)[0]
        return seen.get(strat, unit_seconds(cfg, strat, img_s, jobs))

    def finished(res: dict) -> None:
        _append_rows(cfg, res["rows"])
        seen[split_run(res["run"])[0]] = max(seen.get(split_run(res["run"])[0], 0.0), res["unit_s"])
        results.atomic_write_text(cfg.out / UNITS_FILE, json.dumps({"jobs": jobs, "unit_s": seen}) + "\n")
        acc = {r["schedule"]: r["value"] for r in res["rows"] if r["metric"] == "toy_acc"}
        say(f"{res['run']}: {res['unit_s']:.0f} s; toy accuracy " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()))
        pack(cfg)

    left_over = []
    if jobs == 1:
        for run in todo:
            if estimate(run) > _left(deadline):
                left_over.append(run)
                continue
            say(f"{run}: start (~{estimate(run) / 60:.1f} min)")
            _settle(lambda: finetune_unit(cfg, run, deadline), run, finished, left_over)
    else:
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 2) // jobs)
        queue = list(todo)
        running: dict[Future, str] = {}
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            while queue or running:
                while queue and len(running) < jobs:
                    run = queue.pop(0)
                    if estimate(run) > _left(deadline):
                        left_over.append(run)
                        continue
                    say(f"{run}: start (~{estimate(run) / 60:.1f} min, {len(running) + 1} running)")
                    running[ex.submit(finetune_unit, cfg, run, deadline, threads)] = run
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in done:
                    _settle(f.result, running.pop(f), finished, left_over)
    if left_over:
        say(f"finetune: {len(left_over)} unit(s) left for the next call: {', '.join(left_over)}")
    return not left_over


def stage_eval(cfg: StudyConfig, deadline: float | None) -> bool:
    """Evaluate every run whose fp16 weights exist but whose rows are missing (e.g. after changing --samples)."""
    ok = True
    have = row_keys(cfg)
    for run in ["pretrain"] + run_names(cfg):
        run_dir = cfg.out / ("pretrain" if run == "pretrain" else f"finetune/{run}")
        if evaluated(cfg, run, have) or not (run_dir / "var.safetensors").exists():
            ok &= evaluated(cfg, run, have)
            continue
        if EVAL_S[cfg.device_type] * cfg.samples / 500 > _left(deadline):
            ok = False
            continue
        info_file = run_dir / ("provenance.json" if run == "pretrain" else "train_info.json")
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        _append_rows(cfg, evaluate_run(cfg, run_dir, run, info))
        pack(cfg)
    return ok


def asymmetry_weights(cfg: StudyConfig, run: str) -> Path | None:
    """The run's fp16 weights: in its folder (the call that trained it) or beside the study / the pack (as a
    packed call returns them, ``var-RUN.safetensors``)."""
    for p in (cfg.out / "finetune" / run / "var.safetensors", cfg.out / f"var-{run}.safetensors",
              *([cfg.pack / f"var-{run}.safetensors"] if cfg.pack else [])):
        if p.is_file():
            return p
    return None


def asymmetry_done(cfg: StudyConfig, mode: str) -> bool:
    """Every (scale, depth) cell of the matrix has its KL row at ``--asymmetry-samples`` (a carried study folder
    is complete without the weights that made it)."""
    from model import spec as spec_mod

    path = cfg.out / "asymmetry" / mode / "sensitivity.jsonl"
    if not path.exists():
        return False
    have = {(r["scale"], r["depth"]) for r in results.read_rows(path)
            if r.get("mode") == mode and r.get("metric") == "kl" and r.get("n") == cfg.asymmetry_samples}
    return have >= {(s, d) for s in range(spec_mod.get(cfg.model).num_scales) for d in cfg.depths}


def stage_asymmetry(cfg: StudyConfig, deadline: float | None) -> bool:
    """The scale x depth asymmetry of the kept supernet (``--keep``'s first run): ``single`` and ``from``
    sensitivity matrices over every scale at ``cfg.depths``, toy metric, ``--asymmetry-samples`` per cell, into
    OUT/asymmetry/{single,from} (``run_sensitivity`` rows with intervals; it resumes cell by cell)."""
    from varbench.quality.sensitivity import run_sensitivity

    run = cfg.keep[0] if cfg.keep else "progressive-s0"
    if all(asymmetry_done(cfg, mode) for mode in ("single", "from")):
        return True
    weights = asymmetry_weights(cfg, run)
    if weights is None:
        say(f"asymmetry: no weights of {run} yet")
        return False
    base = dataclasses.replace(sensitivity_config(cfg, weights), scales="all", samples=cfg.asymmetry_samples,
                               batch=min(cfg.eval_batch, cfg.asymmetry_samples))
    for mode in ("single", "from"):
        if _left(deadline) <= 0:
            return False
        t0 = time.perf_counter()
        rows = run_sensitivity(dataclasses.replace(base, mode=mode), cfg.out / "asymmetry" / mode)
        say(f"asymmetry: {run} {mode}, {len(rows)} rows in {time.perf_counter() - t0:.0f} s")
    return True


def stage_ship(cfg: StudyConfig, run: str, dest: Path, weights: Path | None = None) -> Path:
    """DEST/var.safetensors (the run's fp16 supernet), DEST/pretrained.safetensors (the full network it was
    fine-tuned from), DEST/vae.safetensors and DEST/provenance.json: the pretraining rounds (commands, seed, steps,
    losses, commit), the fine-tune (strategy, steps, config) and the run's and the pretrained network's rows.
    ``weights``: the run's fp16 file where it came back beside the pack instead of inside the study folder."""
    run_dir = cfg.out / "finetune" / run
    src = weights or run_dir / "var.safetensors"
    pre_path = cfg.out / "pretrain" / "provenance.json"
    if not src.is_file() or not pre_path.is_file():
        raise UsageError(f"--stage ship: needs {src} and {pre_path} (train and evaluate {run} first)")
    pre = json.loads(pre_path.read_text())
    old = dest / "provenance.json"
    old_prov = json.loads(old.read_text()) if old.exists() else {}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest / "var.safetensors")
    # the pretrained full network the supernet was fine-tuned from, beside it: what every fine-tune of the study
    # starts from (``varbench train --init``), without redoing the pretraining
    pre_w = cfg.out / "pretrain" / "var.safetensors"
    if pre_w.is_file():
        shutil.copyfile(pre_w, dest / PRETRAINED_FILE)
    if Path(cfg.vae).resolve() != (dest / "vae.safetensors").resolve():
        shutil.copyfile(cfg.vae, dest / "vae.safetensors")
    toml = run_dir / "train.toml"
    info = run_dir / "train_info.json"
    rows = [r for r in results.read_rows(cfg.out / ROWS_FILE) if r.get("run") in (run, "pretrain")
            and r["metric"] in ("toy_acc", "toy_fd", DRIFT)]
    prov = {
        "what": f"{cfg.model}: VARiant supernet fine-tuned ({run}) from a full network pretrained by varbench's own "
                f"trainer on the procedural toy set (scripts/toy_study.py, issue 22)",
        "commands": [c for r in provenance_rounds(pre) for c in r["commands"]] + [command_line(sys.argv[1:])],
        "seed": pre["seed"], "device": pre["environment"].get("gpu_name"),
        "commit": pre["environment"].get("git_commit"),
        "vqvae": old_prov.get("vqvae", {"weights": cfg.vae}),
        "pretrain": {k: pre[k] for k in ("steps", "batch", "lr", "images", "synthetic_size", "wall_s",
                                         "images_per_s", "final_train_loss", "final_val", "config")},
        "pretrain_rounds": provenance_rounds(pre),
        "var": {"run": run, "train_toml": toml.read_text() if toml.exists() else None,
                "train_info": json.loads(info.read_text()) if info.exists() else None},
        "quality": [{k: r.get(k) for k in ("run", "schedule", "metric", "value", "ci_low", "ci_high", "n",
                                            "samples", "cfg")} for r in rows],
        "pretrained_weights": PRETRAINED_FILE if (dest / PRETRAINED_FILE).is_file() else None,
        "files": {n: (dest / n).stat().st_size for n in ("var.safetensors", "vae.safetensors", PRETRAINED_FILE)
                  if (dest / n).is_file()},
    }
    results.atomic_write_text(dest / "provenance.json", json.dumps(prov, indent=2, default=str) + "\n")
    return dest


# ---- report -----------------------------------------------------------------------------------------------------
def stage_report(cfg: StudyConfig) -> dict:
    """pareto.json and table.md from the rows (nothing is measured here; runs on any machine)."""
    rows = [r for r in results.read_rows(cfg.out / ROWS_FILE) if current(cfg, r)]
    points = run_points(rows, cfg.depths)
    means = strategy_means([p for p in points if p["strategy"] != "pretrained"])
    gaps = [g for who in ("progressive", "sandwich") if who in means
            for g in (frontier_gap(means, who), frontier_gap(means, who, "subnet_acc", "full_acc")) if g]
    missing = [r for r in ["pretrain"] + run_names(cfg) if r not in {p["run"] for p in points}]
    data = {"x": "full_acc", "y": "subnet_acc", "points": points, "strategies": means, "frontier_gaps": gaps,
            "missing_runs": missing,
            "protocol": {"samples": cfg.samples, "cfg": cfg.cfg, "top_k": cfg.top_k, "top_p": cfg.top_p,
                         "switch": cfg.switch, "depths": list(cfg.depths), "finetune_steps": cfg.finetune_steps,
                         "finetune_batch": cfg.finetune_batch, "finetune_lr": cfg.finetune_lr,
                         "seeds": list(cfg.seeds)}}
    results.atomic_write_text(cfg.out / "pareto.json", json.dumps(data, indent=2) + "\n")
    results.atomic_write_text(cfg.out / "table.md", markdown(data, cfg))
    if cfg.figure and data["points"]:
        write_figure(data, cfg.out / "pareto.html")
    return data


# ---- driver -----------------------------------------------------------------------------------------------------
def smoke_config(cfg: StudyConfig) -> StudyConfig:
    """A tiny CPU-sized version of every stage (seconds per unit): the pipeline, not the numbers."""
    return dataclasses.replace(cfg, pretrain_steps=6, pretrain_batch=8, pretrain_lr=1e-3,
                               pretrain_size=64, pretrain_rounds=tuple((4, lr, 64) for _, lr, _ in cfg.pretrain_rounds), finetune_steps=4, finetune_batch=8, finetune_size=64, val_size=16,
                               samples=min(cfg.samples, 10), asymmetry_samples=min(cfg.asymmetry_samples, 4),
                               eval_batch=min(cfg.eval_batch, 10),
                               seeds=cfg.seeds[:1], smoke=True)


STAGES = ("pretrain", "finetune", "eval", "asymmetry", "report", "all", "ship")


def run_study(cfg: StudyConfig, stage: str = "all", ship: tuple[str, Path, Path | None] | None = None) -> dict:
    """Run the stages asked for (each resumable); returns a summary (the plan, what finished, the report).
    ``ship``: (run, dest, weights file or None) for ``--stage ship``."""
    if stage not in STAGES:
        raise UsageError(f"--stage: {stage!r} is not one of {', '.join(STAGES)}")
    for s in cfg.strategies:
        parse_strategy(s)
    t0 = time.time()
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
    cfg.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"stage": stage, "done": {}}
    with results.lock_dir(cfg.out):
        summary["plan"] = plan(cfg)
        results.write_manifest(cfg.out, {"kind": "toy_study", "config": _config_dict(cfg), "plan": summary["plan"],
                                         "rows": ROWS_FILE})
        if stage in ("pretrain", "all"):
            summary["done"]["pretrain"] = stage_pretrain(cfg, deadline)
        if stage in ("finetune", "all"):
            summary["done"]["finetune"] = stage_finetune(cfg, deadline)
        if stage in ("eval", "all"):
            summary["done"]["eval"] = stage_eval(cfg, deadline)
        if stage in ("asymmetry", "all"):
            summary["done"]["asymmetry"] = stage_asymmetry(cfg, deadline)
        if stage == "ship":
            run, dest, weights = ship or (cfg.keep[0] if cfg.keep else "progressive-s0", cfg.out / "ship", None)
            summary["done"]["ship"] = str(stage_ship(cfg, run, dest, weights))
        if stage in ("report", "all"):
            rep = stage_report(cfg)
            summary["done"]["report"] = not rep["missing_runs"]
            summary["frontier_gaps"] = rep["frontier_gaps"]
        pack(cfg)
    summary["wall_s"] = round(time.time() - t0, 1)
    return summary


def _config_dict(cfg: StudyConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(cfg).items()}


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not a comma-separated list of integers") from None


def parse_args(argv: Sequence[str] | None = None) -> tuple[StudyConfig, argparse.Namespace]:
    d = StudyConfig(out=Path("runs/toy-study"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=d.out, help="study folder (rows, runs, report)")
    ap.add_argument("--stage", default="all", help="pretrain | finetune | eval | report | all")
    ap.add_argument("--plan", action="store_true", help="print the runs and the time estimate, run nothing")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU version of the whole pipeline")
    ap.add_argument("--max-minutes", type=float, default=None, help="start nothing that cannot end by then")
    ap.add_argument("--pack", type=Path, default=None, help=f"write DIR/{PACK_FILE} after each finished unit")
    ap.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    ap.add_argument("--model", default=d.model, help="a 32x32 toy spec of model/spec.py")
    ap.add_argument("--vae", default=d.vae, help="frozen VQ-VAE weights (default: the shipped toy VAE)")
    ap.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps)
    ap.add_argument("--pretrain-minutes", type=float, default=None,
                    help="size the pretraining from a throughput probe to about this many minutes")
    ap.add_argument("--pretrain-init", default=d.pretrain_init,
                    help="'random' or a VAR .safetensors to continue from (model/weights/var-toy/var.safetensors)")
    ap.add_argument("--pretrain-continue", action="append", default=[], metavar="STEPS:LR:SIZE",
                    help="one more pretraining round from the last one (repeatable), e.g. 3100:7e-4:400000: "
                         "a pretraining longer than one device call")
    ap.add_argument("--pretrain-batch", type=int, default=d.pretrain_batch)
    ap.add_argument("--pretrain-lr", type=float, default=d.pretrain_lr)
    ap.add_argument("--pretrain-size", type=int, default=d.pretrain_size, help="procedural training images")
    ap.add_argument("--finetune-steps", type=int, default=d.finetune_steps, help="steps of every fine-tune run")
    ap.add_argument("--finetune-batch", type=int, default=d.finetune_batch)
    ap.add_argument("--finetune-lr", type=float, default=d.finetune_lr)
    ap.add_argument("--finetune-size", type=int, default=d.finetune_size)
    ap.add_argument("--strategies", default=",".join(d.strategies))
    ap.add_argument("--seeds", default=",".join(map(str, d.seeds)))
    ap.add_argument("--samples", type=int, default=d.samples, help="generated images per schedule")
    ap.add_argument("--asymmetry-samples", type=int, default=d.asymmetry_samples,
                    help="samples per cell of the asymmetry matrices")
    ap.add_argument("--eval-batch", type=int, default=d.eval_batch)
    ap.add_argument("--jobs", type=int, default=d.jobs, help="fine-tune units at a time (own processes)")
    ap.add_argument("--keep", default=",".join(d.keep), help="runs whose fp16 weights are packed for shipping")
    ap.add_argument("--ship-run", default="progressive-s0", help="--stage ship: the run to ship")
    ap.add_argument("--ship-weights", type=Path, default=None,
                    help="--stage ship: its fp16 weights, where they came back beside the pack")
    ap.add_argument("--ship-dest", type=Path, default=None,
                    help="--stage ship: destination folder (default OUT/ship; model/weights/var-toy to ship)")
    ap.add_argument("--figure", action="store_true", help="report: also write pareto.html (needs plotly)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    for name in ("pretrain_steps", "pretrain_batch", "pretrain_size", "finetune_steps", "finetune_batch",
                 "finetune_size", "samples", "eval_batch", "jobs"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.samples < 2:
        raise UsageError("--samples must be >= 2 (the toy FD fits a Gaussian)")
    if a.max_minutes is not None and a.max_minutes <= 0:
        raise UsageError(f"--max-minutes must be > 0, got {a.max_minutes}")
    from model.spec import SPECS

    if a.model not in SPECS or SPECS[a.model].image_size != SPECS["var-toy"].image_size:
        raise UsageError(f"--model: {a.model!r} is not a 32x32 toy spec of model/spec.py")
    if not Path(a.vae).is_file():
        raise UsageError(f"--vae: {a.vae} does not exist")
    if not a.plan:
        from varbench.target import resolve_device

        resolve_device(a.device)            # cuda without a GPU: one line, exit 3, before any work
    if a.pretrain_init != "random" and not Path(a.pretrain_init).is_file():
        raise UsageError(f"--pretrain-init: {a.pretrain_init} does not exist (or use 'random')")
    cfg = StudyConfig(
        out=a.out, model=a.model, vae=a.vae, device=a.device, pretrain_steps=a.pretrain_steps,
        pretrain_minutes=a.pretrain_minutes, pretrain_init=a.pretrain_init, pretrain_batch=a.pretrain_batch,
        pretrain_lr=a.pretrain_lr, pretrain_size=a.pretrain_size,
        pretrain_rounds=tuple(parse_round(r) for r in a.pretrain_continue),
        finetune_steps=a.finetune_steps, finetune_batch=a.finetune_batch,
        finetune_lr=a.finetune_lr, finetune_size=a.finetune_size,
        strategies=tuple(s.strip() for s in a.strategies.split(",") if s.strip()),
        seeds=_ints(a.seeds, "--seeds"), samples=a.samples, asymmetry_samples=a.asymmetry_samples,
        eval_batch=a.eval_batch, jobs=a.jobs,
        max_minutes=a.max_minutes, pack=a.pack, figure=a.figure, keep=tuple(k for k in a.keep.split(",") if k))
    if not cfg.strategies or not cfg.seeds:
        raise UsageError("--strategies and --seeds need at least one entry each")
    for s in cfg.strategies:
        parse_strategy(s)
    if a.smoke:
        cfg = smoke_config(cfg)
    return cfg, a


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg, a = parse_args(argv)
        if a.plan:
            out = plan(cfg)
        else:
            out = run_study(cfg, a.stage, (a.ship_run, a.ship_dest or cfg.out / "ship", a.ship_weights))
    except VarbenchError as e:
        print(f"toy_study: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    if a.json or a.plan:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(json.dumps(out.get("done"), default=str))
        table = cfg.out / "table.md"
        if table.exists():
            print(table.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
