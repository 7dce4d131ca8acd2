"""The toy study's configuration and plan (scripts/toy_study.py runs it): what it trains (``StudyConfig``, the
strategies, the pretraining rounds, the trainer configs of every run), how long that should take on a device
(the time model and ``plan``), and how its provenance names commands and weights without machine paths.

Pure: nothing here trains, evaluates or writes; the stages, the units they run and the CLI are the script's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from model.pipeline import WEIGHTS_DIR
from varbench.errors import UsageError
from varbench.schema import TOY_STUDY

SHIPPED_VAE = WEIGHTS_DIR / "var-toy" / "vae.safetensors"

def _portable(path: Path) -> str:
    """Relative to the working directory when inside it (rows and provenance then name no machine's paths)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _portable_init(cfg: "StudyConfig", init: str) -> str:
    """A round's starting weights as provenance records them: relative to the working directory when inside it,
    else relative to the study folder as ``OUT/...`` (an earlier round), else as given (``random``, a file)."""
    if init == "random":
        return init
    p = Path(init)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        pass
    try:
        return str(Path("OUT") / p.resolve().relative_to(cfg.out.resolve()))
    except ValueError:
        return init


def portable_command(args: Sequence[str]) -> str:
    """A command as provenance records it: paths inside the working directory relative, a path outside it (the
    device's output folder) as ``$OUT`` - provenance names no machine's paths."""
    out = []
    for arg in args:
        rel = _portable(Path(arg)) if os.path.isabs(arg) else arg
        out.append("$OUT" if os.path.isabs(rel) else rel)
    return " ".join(out)


def command_line(argv: Sequence[str]) -> str:
    return portable_command(["python3", "scripts/toy_study.py", *argv])


STRATEGIES = ("sandwich", "progressive", "fixed-p0.1", "fixed-p0.5", "fixed-p1.0")   # longest first
PAPER_PHASES = (5.0, 15.0, 10.0)       # VARIANT_PAPER "Training recipe": E1 at p0, E2 ramp, E3 at p = 1 (5-15)
PACK_FILE = "toy_study.tar.gz"
PRETRAINED_FILE = "pretrained.safetensors"     # ship: the pretrained full network next to the shipped supernet
UNITS_FILE = "unit_seconds.json"
PACK_LIMIT = 16 * 2 ** 20              # the device returns files of at most 16 MiB
ROWS_FILE = TOY_STUDY.rows_file
METRIC_OF = {"toy_acc": "toy_acc", "toy_fd": "toy_fd", "kl": "kl", "token_agreement": "token_agreement"}

# ---- time model (assumptions until measured; --plan prints which it used) ---------------------------------------
# results/toy/train/*/metrics.jsonl: var-toy, batch 256, no compile, 3 runs sharing one H100 -> ~2,200 img/s each
ASSUMED_IMG_S = {"cuda": 4000.0, "cpu": 60.0}         # one training process alone (batch 256, no compile)
ASSUMED_SHARED_IMG_S = {"cuda": 6600.0, "cpu": 60.0}  # all processes together when several share the device
PASS_COST = {"sandwich": 2.5, "progressive": 1.0, "fixed": 1.0, "full": 1.0}   # step time relative to one pass
START_S = {"cuda": 20.0, "cpu": 3.0}                   # render the data set, build the model, per training run
EVAL_S = {"cuda": 40.0, "cpu": 20.0}                   # one run's evaluation at 500 samples (4 schedules)


class OutOfTime(Exception):
    """Raised from the trainer's log hook when a unit overruns the call's deadline (the run resumes later)."""


# ---- configuration ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StudyConfig:
    out: Path
    model: str = "var-toy"
    vae: str = dataclasses.field(default_factory=lambda: _portable(SHIPPED_VAE))
    device: str = "auto"
    pretrain_steps: int = 6000
    pretrain_minutes: float | None = None
    pretrain_init: str = "random"        # or a VAR .safetensors to continue from (e.g. the shipped var-toy)
    pretrain_batch: int = 512
    pretrain_lr: float = 1.4e-3          # var-toy's 1e-3 at batch 256, x sqrt(2) for batch 512
    pretrain_size: int = 100_000
    # more pretraining rounds after the first, each (steps, lr, synthetic set size), continued from the round
    # before it with a fresh warm-up and cosine: a pretraining longer than one device call (the last round is
    # OUT/pretrain, the earlier ones OUT/pretrain-round<k>)
    pretrain_rounds: tuple[tuple[int, float, int], ...] = ()
    finetune_steps: int = 500
    finetune_batch: int = 256
    finetune_lr: float = 3e-4
    finetune_size: int = 30_000
    val_size: int = 1000
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    depths: tuple[int, ...] = (2, 4, 6)
    switch: int = 4
    samples: int = 500
    asymmetry_samples: int = 200         # per cell of the asymmetry matrices (single and from, every scale)
    eval_batch: int = 250
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    eval_dtype: str = "fp32"
    jobs: int = 1
    max_minutes: float | None = None
    pack: Path | None = None
    keep: tuple[str, ...] = ("progressive-s0",)     # fp16 weights of these runs are packed beside the tarball
    smoke: bool = False
    figure: bool = False                 # report: also pareto.html (plotly; not on the GPU machine)

    @property
    def device_type(self) -> str:
        import torch
        return "cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"


def parse_strategy(name: str) -> dict[str, Any]:
    """'progressive' | 'sandwich' | 'fixed-pX' -> trainer options (UsageError otherwise)."""
    if name in ("progressive", "sandwich"):
        return {"strategy": name}
    if name.startswith("fixed-p"):
        try:
            p = float(name[len("fixed-p"):])
        except ValueError:
            p = -1.0
        if 0.0 <= p <= 1.0:
            return {"strategy": "fixed", "p": p}
    raise UsageError(f"--strategies: {name!r} is not progressive, sandwich or fixed-pX with X in [0, 1]")


def run_names(cfg: StudyConfig) -> list[str]:
    return [f"{s}-s{seed}" for s in cfg.strategies for seed in cfg.seeds]


def split_run(run: str) -> tuple[str, int]:
    strat, _, seed = run.rpartition("-s")
    return strat, int(seed)


def _epochs(steps: int, batch: int, size: int) -> int:
    return max(1, math.ceil(steps * batch / size))


@dataclasses.dataclass(frozen=True)
class PretrainRound:
    """One pretraining round: where it writes, what it starts from, its length (None: sized by
    ``--pretrain-minutes``), learning rate and procedural set size."""
    out: Path
    init: str
    steps: int | None
    lr: float
    size: int


def pretrain_rounds(cfg: StudyConfig) -> list[PretrainRound]:
    """The rounds in order: the first from ``--pretrain-init`` (random by default), each ``--pretrain-continue``
    from the round before it; the last one is OUT/pretrain, what the fine-tunes start from."""
    n = 1 + len(cfg.pretrain_rounds)
    dirs = [cfg.out / f"pretrain-round{k + 1}" for k in range(n - 1)] + [cfg.out / "pretrain"]
    first = PretrainRound(dirs[0], cfg.pretrain_init, None if cfg.pretrain_minutes is not None else cfg.pretrain_steps,
                          cfg.pretrain_lr, cfg.pretrain_size)
    out = [first]
    for d, (steps, lr, size) in zip(dirs[1:], cfg.pretrain_rounds):
        out.append(PretrainRound(d, str(out[-1].out / "var.safetensors"), steps, lr, size))
    return out


def parse_round(text: str) -> tuple[int, float, int]:
    """``--pretrain-continue STEPS:LR:SIZE`` (e.g. 3100:7e-4:400000)."""
    try:
        steps, lr, size = text.split(":")
        r = int(steps), float(lr), int(size)
    except ValueError:
        raise UsageError(f"--pretrain-continue: {text!r} is not STEPS:LR:SIZE (e.g. 3100:7e-4:400000)") from None
    if r[0] < 1 or not r[1] > 0 or r[2] < 1:
        raise UsageError(f"--pretrain-continue: {text!r} needs steps >= 1, lr > 0, size >= 1")
    return r


def pretrain_config(cfg: StudyConfig, steps: int, rnd: PretrainRound | None = None) -> dict[str, Any]:
    """TrainConfig fields of a pretraining round (default: the first): the full network only, seed 0."""
    rnd = rnd or pretrain_rounds(cfg)[0]
    return {"model": cfg.model, "init": rnd.init, "vae": cfg.vae, "data": "synthetic", "strategy": "full",
            "depths": list(cfg.depths), "switch": cfg.switch, "synthetic_size": rnd.size,
            "val_size": cfg.val_size, "batch": cfg.pretrain_batch, "lr": rnd.lr,
            "epochs": _epochs(steps, cfg.pretrain_batch, rnd.size), "max_steps": steps,
            "schedule_steps": steps, "log_every": 10 if cfg.smoke else 50,
            "val_every": max(1, steps // 4), "save_every": max(1, steps // 8), "seed": 0, "device": cfg.device,
            "workers": 0, "out": str(rnd.out)}


def finetune_config(cfg: StudyConfig, run: str) -> dict[str, Any]:
    """TrainConfig fields of one fine-tune: equal steps, batch, lr and data for every strategy; progressive's
    phases are the paper's 5/15/10 epochs scaled onto the run's epochs (the trainer lays them over the steps)."""
    strat, seed = split_run(run)
    epochs = _epochs(cfg.finetune_steps, cfg.finetune_batch, cfg.finetune_size)
    d = {"model": cfg.model, "init": str(cfg.out / "pretrain" / "var.safetensors"), "vae": cfg.vae,
         "data": "synthetic", "depths": list(cfg.depths), "switch": cfg.switch,
         "synthetic_size": cfg.finetune_size, "val_size": cfg.val_size, "batch": cfg.finetune_batch,
         "lr": cfg.finetune_lr, "epochs": epochs, "max_steps": cfg.finetune_steps,
         "schedule_steps": cfg.finetune_steps, "log_every": 5 if cfg.smoke else 25, "val_every": 0,
         "save_every": 0, "seed": seed, "device": cfg.device, "workers": 0, "out": str(cfg.out / "finetune" / run)}
    d.update(parse_strategy(strat))
    if d["strategy"] == "progressive":
        total = sum(PAPER_PHASES)
        d.update(p0=0.2, e1=epochs * PAPER_PHASES[0] / total, e2=epochs * PAPER_PHASES[1] / total,
                 e3=epochs * PAPER_PHASES[2] / total)
    return d


# ---- time estimates ---------------------------------------------------------------------------------------------
def measured_img_s(cfg: StudyConfig) -> tuple[float, str]:
    """One process's training throughput: the pretraining run's (or probe's) median, else the assumption."""
    for name in ("pretrain/provenance.json", "probe.json"):
        p = cfg.out / name
        if p.exists():
            v = json.loads(p.read_text()).get("images_per_s")
            if v:
                return float(v), f"measured ({name})"
    return ASSUMED_IMG_S[cfg.device_type], "assumed (H100 logs of var-toy; not measured on this device)"


def unit_seconds(cfg: StudyConfig, strat: str, img_s: float, sharing: int) -> float:
    """Estimated wall seconds of one fine-tune unit (start, train, eval) with ``sharing`` processes on the device."""
    dev = cfg.device_type
    per_proc = min(img_s, ASSUMED_SHARED_IMG_S[dev] / max(1, sharing)) if sharing > 1 else img_s
    kind = parse_strategy(strat)["strategy"]
    train = cfg.finetune_steps * cfg.finetune_batch * PASS_COST[kind] / per_proc
    return START_S[dev] + train + EVAL_S[dev] * cfg.samples / 500


def measured_units(cfg: StudyConfig) -> dict[str, float]:
    """Wall seconds of one fine-tune unit per strategy, as finished units measured them (the slowest seen)."""
    p = cfg.out / UNITS_FILE
    return dict(json.loads(p.read_text())["unit_s"]) if p.exists() else {}


def plan(cfg: StudyConfig) -> dict[str, Any]:
    """What the study will run and how long it should take on this device (stated as an estimate)."""
    img_s, source = measured_img_s(cfg)
    dev = cfg.device_type
    pre_steps, epochs = 0, []
    for rnd in pretrain_rounds(cfg):
        prov = rnd.out / "provenance.json"
        steps = (json.loads(prov.read_text())["steps"] if prov.exists()          # what really ran
                 else rnd.steps if rnd.steps is not None
                 else steps_for_minutes(cfg.pretrain_minutes, img_s, cfg.pretrain_batch))
        pre_steps += steps
        epochs.append(round(steps * cfg.pretrain_batch / rnd.size, 1))
    n_rounds = 1 + len(cfg.pretrain_rounds)
    pre_s = START_S[dev] * n_rounds + pre_steps * cfg.pretrain_batch / img_s + EVAL_S[dev] * cfg.samples / 500
    runs = run_names(cfg)
    sharing = max(1, min(cfg.jobs, len(runs)))
    seen = measured_units(cfg)
    units = {r: seen.get(split_run(r)[0], unit_seconds(cfg, split_run(r)[0], img_s, sharing)) for r in runs}
    ft_s = sum(units.values()) / sharing
    return {
        "device": dev, "throughput_img_s": img_s, "throughput_source": source,
        "shared_throughput_img_s": ASSUMED_SHARED_IMG_S[dev] if sharing > 1 else img_s,
        "pretrain": {"rounds": n_rounds, "steps": pre_steps, "batch": cfg.pretrain_batch,
                     "images": pre_steps * cfg.pretrain_batch,
                     "epochs_of_set": epochs[0] if len(epochs) == 1 else epochs,     # per round
                     "estimate_min": round(pre_s / 60, 1)},
        "finetune": {"runs": len(runs), "steps": cfg.finetune_steps, "batch": cfg.finetune_batch,
                     "images_per_run": cfg.finetune_steps * cfg.finetune_batch,
                     "fraction_of_pretrain": round(cfg.finetune_steps * cfg.finetune_batch
                                                   / max(1, pre_steps * cfg.pretrain_batch), 3),
                     "jobs": sharing, "estimate_min_per_unit": {r: round(s / 60, 2) for r, s in units.items()},
                     "estimate_min": round(ft_s / 60, 1)},
        "eval": {"samples": cfg.samples, "schedules": ["full"] + [f"d{d}" for d in cfg.depths],
                 "estimate_min_per_run": round(EVAL_S[dev] * cfg.samples / 500 / 60, 2)},
        "total_estimate_min": round((pre_s + ft_s) / 60, 1),
        # a pretraining round cannot span calls (its optimizer state does not come back): at least a call per
        # round, then the fine-tune units (whole units only) over as many calls as they need
        "calls_of_max_minutes": (max(n_rounds, math.ceil(pre_s / 60 / cfg.max_minutes))
                                 + math.ceil(ft_s / 60 / cfg.max_minutes) if cfg.max_minutes else None),
    }


def steps_for_minutes(minutes: float, img_s: float, batch: int) -> int:
    """Steps that ``minutes`` of training at ``img_s`` hold, rounded down to a hundred from 1,000 up."""
    steps = int(minutes * 60 * img_s / batch)
    return max(1, steps // 100 * 100 if steps >= 1000 else steps)


PROVENANCE_KEYS = ("init", "commands", "seed", "steps", "batch", "lr", "images", "synthetic_size", "wall_s",
                   "final_train_loss", "final_val")


def init_provenance(init: str | None) -> dict | None:
    """Where a pretraining's starting weights came from, when they are an earlier pretraining of this script
    (its provenance.json beside them), with that one's own origin nested: a pretraining longer than one device
    call runs as rounds, each continued from the last, and the chain names every command behind the weights."""
    if not init or init == "random":
        return None
    path = Path(init).parent / "provenance.json"
    if not path.is_file():
        return {"init": init, "provenance": None}
    prov = json.loads(path.read_text())
    out = {k: prov.get(k) for k in PROVENANCE_KEYS}
    out["commit"] = (prov.get("environment") or {}).get("git_commit")
    out["init_provenance"] = prov.get("init_provenance", init_provenance(prov.get("init")))
    return out


def provenance_rounds(prov: dict) -> list[dict]:
    """The pretraining rounds of a provenance chain, first round first."""
    chain, node = [], prov
    while node:
        chain.append({k: node.get(k) for k in PROVENANCE_KEYS}
                     | {"commands": [portable_command(c.split()) for c in node.get("commands") or []]})
        node = node.get("init_provenance") or (init_provenance(node.get("init")) if node is prov else None)
    return chain[::-1]
