"""``varbench train``: progressive supernet training of a VAR (``--stage var``) or the toy VQ-VAE (``--stage vqvae``).

Option precedence: TrainConfig defaults < ``--config train.toml`` (top level or a [train] table, keys = TrainConfig
field names) < command-line options. ``--resume DIR`` takes every training option from DIR's checkpoint; only
runtime options (--max-steps, --log-every, --val-every, --save-every, --workers, --device, --out) may change.
Works under ``torchrun --nproc-per-node N -m varbench train ...`` (rank 0 prints and writes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from varbench.cli.common import NoMemoryCheckOpt, err_console, out_dir_lock, print_json
from varbench.errors import EnvironmentUnavailable, UsageError
from varbench.target import parse_int_list, resolve_device, resolve_spec
from varbench.workflows.budget import check_fits, train_estimate, vqvae_train_estimate

RUNTIME_OPTIONS = ("max_steps", "log_every", "val_every", "save_every", "save_final", "workers", "device", "out")
FLAGS = {"p": "--subnet-p"}           # config fields whose option is not --field-name (torchrun owns --p*)


@dataclass(frozen=True)
class TrainOptions:
    """The command line's training options, typed, each None unless given. Field names are TrainConfig's (and
    VQVAETrainConfig's for ``recon``/``restart_every``), so ``overrides()`` lays them over the defaults and the
    TOML file without any renaming."""

    model: str | None = None
    init: str | None = None
    vae: str | None = None
    data: str | None = None
    strategy: str | None = None
    p: float | None = None
    p0: float | None = None
    e1: float | None = None
    e2: float | None = None
    e3: float | None = None
    depths: list[int] | None = None
    depth_weights: list[float] | None = None
    switch: int | None = None
    select: str | None = None
    distill: bool | None = None
    epochs: int | None = None
    batch: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    tblr: float | None = None
    wd: float | None = None
    warmup: int | None = None
    grad_clip: float | None = None
    precision: str | None = None
    label_smoothing: float | None = None
    drop_path: float | None = None
    cond_drop: float | None = None
    synthetic_size: int | None = None
    val_size: int | None = None
    log_every: int | None = None
    val_every: int | None = None
    save_every: int | None = None
    compile: bool | None = None
    save_final: bool | None = None
    seed: int | None = None
    workers: int | None = None
    fsdp: bool | None = None
    grad_checkpoint: bool | None = None
    device: str | None = None
    out: str | None = None
    recon: str | None = None
    restart_every: int | None = None

    def overrides(self) -> dict[str, Any]:
        """Only the options given on the command line: config field -> value."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


def flag(field: str) -> str:
    """The command-line spelling of a config field, for error messages."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _opt(help_: str, *names: str) -> Any:
    return typer.Option(*names, help=help_)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--config: {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--config: {path} is not valid TOML ({e})") from None
    return dict(data.get("train", data))


def _float_list(text: str, name: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not a comma-separated list of numbers") from None


class _Progress:
    """Rich progress bar on stderr fed by the trainer's per-log-step rows (rank 0 only)."""

    def __init__(self) -> None:
        self.bar, self.task = None, None

    def __call__(self, row: dict) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if row.get("kind") == "notice":
            err_console.print(f"notice: {row['message']}", style="yellow", markup=False, soft_wrap=True)
            return
        if row.get("kind") == "val":
            err_console.print(f"  val step {row['step']}: {row['schedule']} loss {row['loss']:.4f}")
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err_console)
            self.bar.start()
            self.task = self.bar.add_task("train", total=row["total_steps"], info="")
        info = f"loss {row['loss']:.4f} lr {row['lr']:.2e}" if "lr" in row else f"loss {row['loss']:.4f}"
        if "subnet_p" in row:
            info += f" p {row['subnet_p']:.2f} d {row['depth']}"
        info += f" {row['images_per_s']:.1f} img/s"
        self.bar.update(self.task, completed=row["step"], info=info)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(
    model: Annotated[Optional[str], _opt("Model name from the registry.", "--model", "-m")] = None,
    stage: Annotated[str, _opt("var (the transformer/supernet) | vqvae (the toy tokenizer).", "--stage")] = "var",
    init: Annotated[Optional[str], _opt("VAR init: 'random' or an official .pth / .safetensors.", "--init")] = None,
    vae: Annotated[Optional[str], _opt("Frozen VQ-VAE weights ('random' for plumbing tests).", "--vae")] = None,
    data: Annotated[Optional[str], _opt("ImageNet-layout folder, pre-tokenised folder or 'synthetic'.", "--data")] = None,
    strategy: Annotated[Optional[str], _opt("progressive | fixed | sandwich | full.", "--strategy")] = None,
    subnet_p: Annotated[Optional[float], _opt("fixed: subnet-step probability (config field p).",
                                              "--subnet-p")] = None,
    p0: Annotated[Optional[float], _opt("progressive: phase-1 subnet probability.", "--p0")] = None,
    e1: Annotated[Optional[float], _opt("progressive: epochs at p0.", "--e1")] = None,
    e2: Annotated[Optional[float], _opt("progressive: epochs of the ramp to 1.", "--e2")] = None,
    e3: Annotated[Optional[float], _opt("progressive: epochs at p = 1.", "--e3")] = None,
    depths: Annotated[Optional[str], _opt("Subnet depths, e.g. 2,4,8,16.", "--depths")] = None,
    depth_weights: Annotated[Optional[str], _opt("Draw weights per subnet depth.", "--depth-weights")] = None,
    switch: Annotated[Optional[int], _opt("First scale of the flexible zone (VARiant N).", "--switch")] = None,
    select: Annotated[Optional[str], _opt("Subnet layer selection: isometric | nested.", "--select")] = None,
    distill: Annotated[Optional[bool], _opt("In-place distillation from the full net.", "--distill/--no-distill")] = None,
    epochs: Annotated[Optional[int], _opt("Epochs (default E1+E2+E3 for progressive).", "--epochs")] = None,
    batch: Annotated[Optional[int], _opt("Global batch size.", "--batch")] = None,
    max_steps: Annotated[Optional[int], _opt("Stop after N optimizer steps.", "--max-steps")] = None,
    lr: Annotated[Optional[float], _opt("Absolute peak lr (overrides --tblr).", "--lr")] = None,
    tblr: Annotated[Optional[float], _opt("lr per 256 images (peak = tblr·batch/256).", "--tblr")] = None,
    wd: Annotated[Optional[float], _opt("Weight decay.", "--wd")] = None,
    warmup: Annotated[Optional[int], _opt("Warm-up iterations (default 2% of the run).", "--warmup")] = None,
    grad_clip: Annotated[Optional[float], _opt("Gradient-norm clip.", "--grad-clip")] = None,
    precision: Annotated[Optional[str], _opt("auto | bf16 | fp16 | fp32.", "--precision")] = None,
    label_smoothing: Annotated[Optional[float], _opt("Label smoothing.", "--label-smoothing")] = None,
    drop_path: Annotated[Optional[float], _opt("Override the spec's drop-path rate.", "--drop-path")] = None,
    cond_drop: Annotated[Optional[float], _opt("Override the class-dropout rate.", "--cond-drop")] = None,
    synthetic_size: Annotated[Optional[int], _opt("Images in the synthetic set.", "--synthetic-size")] = None,
    val_size: Annotated[Optional[int], _opt("Images in the synthetic validation set (0 = none).", "--val-size")] = None,
    log_every: Annotated[Optional[int], _opt("Metrics row every N steps.", "--log-every")] = None,
    val_every: Annotated[Optional[int], _opt("Validation every N steps (0 = at the end).", "--val-every")] = None,
    save_every: Annotated[Optional[int], _opt("Checkpoint every N steps (0 = at the end).", "--save-every")] = None,
    compile: Annotated[Optional[bool], _opt("torch.compile each block (CUDA: fuses the element-wise passes; "
                                            "compiles for ~1 min first).", "--compile/--no-compile")] = None,
    save_final: Annotated[Optional[bool], _opt("Write the checkpoint at the end (--no-save-final for "
                                               "benchmarks).", "--save-final/--no-save-final")] = None,
    seed: Annotated[Optional[int], _opt("Seed of init, data order and draws.", "--seed")] = None,
    workers: Annotated[Optional[int], _opt("DataLoader workers.", "--workers")] = None,
    fsdp: Annotated[Optional[bool], _opt("Shard with FSDP (per block) instead of DDP.", "--fsdp/--no-fsdp")] = None,
    grad_checkpoint: Annotated[Optional[bool], _opt("Activation checkpointing per block (less memory, ~1.3x "
                                                    "compute).", "--grad-checkpoint/--no-grad-checkpoint")] = None,
    device: Annotated[Optional[str], _opt("auto | cpu | cuda.", "--device")] = None,
    out: Annotated[Optional[Path], _opt("Run folder (metrics.jsonl, checkpoint/).", "--out")] = None,
    config: Annotated[Optional[Path], _opt("TOML file of training options.", "--config")] = None,
    resume: Annotated[Optional[Path], _opt("Continue exactly from this run folder's checkpoint.", "--resume")] = None,
    recon: Annotated[Optional[str], _opt("vqvae stage: l1 | mse reconstruction loss.", "--recon")] = None,
    restart_every: Annotated[Optional[int], _opt("vqvae stage: dead-code restart period.", "--restart-every")] = None,
    json_out: Annotated[bool, _opt("Print the final metrics as JSON on stdout.", "--json")] = False,
    no_memory_check: NoMemoryCheckOpt = False,
) -> None:
    """Train a VARiant supernet (progressive / fixed / sandwich / full) or the toy VQ-VAE."""
    opts = TrainOptions(
        model=model, init=init, vae=vae, data=data, strategy=strategy, p=subnet_p, p0=p0, e1=e1, e2=e2, e3=e3,
        depths=parse_int_list(depths, "--depths") if depths is not None else None,
        depth_weights=_float_list(depth_weights, "--depth-weights") if depth_weights is not None else None,
        switch=switch, select=select, distill=distill, epochs=epochs, batch=batch, max_steps=max_steps, lr=lr,
        tblr=tblr, wd=wd, warmup=warmup, grad_clip=grad_clip, precision=precision, label_smoothing=label_smoothing,
        drop_path=drop_path, cond_drop=cond_drop, synthetic_size=synthetic_size, val_size=val_size,
        log_every=log_every, val_every=val_every, save_every=save_every, compile=compile, save_final=save_final,
        seed=seed, workers=workers, fsdp=fsdp, grad_checkpoint=grad_checkpoint, device=device,
        out=str(out) if out is not None else None, recon=recon, restart_every=restart_every)
    if opts.device:
        resolve_device(opts.device)                     # cuda without a GPU -> exit 3, before any work
    if opts.model is not None:
        resolve_spec(opts.model)
    given = opts.overrides()
    if stage == "vqvae":
        result = _run_vqvae(given, config, no_memory_check)
    elif stage == "var":
        result = _run_var(given, config, resume, no_memory_check)
    else:
        raise UsageError(f"--stage: {stage!r} is not one of var, vqvae")
    if json_out and int(os.environ.get("RANK", "0")) == 0:
        print_json(result)


def _run_var(given: dict[str, Any], config: Path | None, resume: Path | None, no_memory_check: bool) -> dict:
    from model.train import state as state_mod
    from model.train.loop import TrainConfig, config_from_dict, train as run_train

    for k in ("recon", "restart_every"):
        if k in given:
            raise UsageError(f"{flag(k)} only applies to --stage vqvae")
    try:
        if resume is not None:
            fixed = sorted(k for k in given if k not in RUNTIME_OPTIONS)
            if fixed or config is not None:
                raise UsageError(f"--resume takes the training options from the checkpoint; drop "
                                 f"{', '.join(flag(k) for k in fixed) or '--config'}")
            saved = state_mod.load_meta(resume)["config"]
            cfg = config_from_dict(saved | {"out": str(resume)} | given | {"resume": str(resume)})
        else:
            base = dataclasses.asdict(TrainConfig()) | (_load_toml(config) if config else {})
            cfg = config_from_dict(base | given).validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if resume is None and any((Path(cfg.out).expanduser() / state_mod.CKPT_DIR / f).exists()
                              for f in (state_mod.MODEL_FILE, state_mod.STATE_FILE)):
        raise UsageError(f"--out {cfg.out} already holds a training checkpoint; pass --resume {cfg.out} to "
                         f"continue it, or another --out")
    if resume is None:                 # a bad --init/--vae file: exit 2 before the run folder is made
        from varbench.target import check_weight_files

        check_weight_files(resolve_spec(cfg.model), None if cfg.init == "random" else cfg.init,
                           None if cfg.vae in (None, "random") else cfg.vae, names=("--init", "--vae"))
    check_fits(train_estimate(cfg), "train", skip=no_memory_check)
    prog = _Progress()
    t0 = time.perf_counter()
    try:
        with _run_folder(cfg.out):
            result = run_train(cfg, on_log=prog)
    except ValueError as e:                              # bad data/checkpoint found while starting
        raise UsageError(str(e)) from None
    except ImportError as e:                             # Pillow missing for an image folder
        raise EnvironmentUnavailable(str(e).splitlines()[0]) from None
    finally:
        prog.stop()
    if int(os.environ.get("RANK", "0")) == 0:
        val = " ".join(f"{k} {v:.4f}" for k, v in result["val"].items())
        err_console.print(f"trained {cfg.model} ({cfg.strategy}) to step {result['step']} in "
                          f"{time.perf_counter() - t0:.1f} s; loss {result['loss']:.4f}; val {val or '-'}; "
                          f"-> {result['out']}", soft_wrap=True)
    return result


def _run_vqvae(given: dict[str, Any], config: Path | None, no_memory_check: bool) -> dict:
    from model.train.vqvae_trainer import VQVAETrainConfig, train_vqvae

    names = {f.name for f in dataclasses.fields(VQVAETrainConfig)}
    mapped = dict(given)
    if "max_steps" in mapped:
        mapped["steps"] = mapped.pop("max_steps")
    base = dataclasses.asdict(VQVAETrainConfig()) | (_load_toml(config) if config else {})
    bad = sorted(set(mapped) - names) + sorted(set(base) - names)
    if bad:
        raise UsageError(f"--stage vqvae does not take {', '.join(bad)}")
    cfg = VQVAETrainConfig(**(base | mapped))
    if (Path(cfg.out).expanduser() / "vae.safetensors").exists():
        raise UsageError(f"--out {cfg.out} already holds a trained VQ-VAE (vae.safetensors); choose another --out")
    try:
        cfg.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_fits(vqvae_train_estimate(cfg), "train --stage vqvae", skip=no_memory_check)
    prog = _Progress()
    try:
        with _run_folder(cfg.out):
            result = train_vqvae(cfg, on_log=prog)
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        prog.stop()
    err_console.print(f"VQ-VAE trained for {result['steps']} steps -> {result['weights']}", soft_wrap=True)
    return result


@contextlib.contextmanager
def _run_folder(out: str) -> Iterator[None]:
    """The run folder writable and held by this run (rank 0 writes; the other ranks only read it)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with out_dir_lock(out):
        yield


def register(app: typer.Typer) -> None:
    app.command("train")(train)
