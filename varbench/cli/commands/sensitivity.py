"""``varbench sensitivity``: the scale × depth ablation matrix (which scales can run shallow, at what price)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from varbench.cli.common import (CkptOpt, DeviceOpt, JsonOpt, ModelOpt, OutOpt, SelectOpt, VaeOpt, check_select,
                                 ensure_out_dir, err_console, parse_int_list, print_json, resolve_device,
                                 resolve_spec)
from varbench.errors import UsageError

TITLES = {"kl": "KL(full || schedule), mean over scales", "token_agreement": "token agreement (coupled sampling)",
          "psnr": "PSNR vs full samples (dB)", "ssim": "SSIM vs full samples", "toy_acc": "toy classifier accuracy",
          "toy_fd": "toy feature Fréchet distance", "fid": "FID"}


def _damage(values: Sequence[float], higher_is_better: bool) -> list[float]:
    """0 = least damage in this matrix, 1 = most (inf PSNR counts as no damage)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [0.0] * len(values)
    lo, hi = min(finite), max(finite)
    out = []
    for v in values:
        if math.isnan(v):
            out.append(0.0)
        elif not math.isfinite(v):
            out.append(0.0 if (v > 0) == higher_is_better else 1.0)
        elif hi == lo:
            out.append(0.0)
        else:
            out.append((hi - v) / (hi - lo) if higher_is_better else (v - lo) / (hi - lo))
    return out


def _fmt(v: float, metric: str) -> str:
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf"
    if metric in ("token_agreement", "toy_acc"):
        return f"{100 * v:.1f}%"
    if metric == "kl":
        return f"{v:.3g}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def matrix_table(rows: list[dict[str, Any]], mode: str, metric: str, full_depth: int = 0) -> Table | None:
    """A rich table of one matrix, cells coloured green -> yellow -> red by damage within the matrix."""
    from varbench.quality.sensitivity import HIGHER_IS_BETTER, matrix

    labels, depths, vals = matrix(rows, mode, metric)
    if not labels:
        return None
    flat = _damage([v for r in vals for v in r], HIGHER_IS_BETTER.get(metric, False))
    t = Table(title=f"{TITLES.get(metric, metric)} · mode {mode}", title_justify="left")
    t.add_column("group" if mode == "groups" else ("scale" if mode == "single" else "from scale"))
    for d in depths:
        t.add_column(f"d{d} (full)" if d == full_depth else f"d{d}", justify="right")
    for i, (lab, row) in enumerate(zip(labels, vals)):
        cells = []
        for j, v in enumerate(row):
            dmg = flat[i * len(depths) + j]
            cells.append(Text(_fmt(v, metric), style="green" if dmg < 1 / 3 else "yellow" if dmg < 2 / 3 else "red"))
        t.add_row(lab, *cells)
    return t


class _Renderer:
    """Turns the library's progress events into an estimate line and a rich progress bar on stderr."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, event: str, done: int, total: int, info: dict) -> None:
        if event == "plan":
            if info["weights"] == "random":
                err_console.print(Text("RANDOM WEIGHTS (--allow-random): these quality numbers are meaningless; "
                                       "use them for plumbing and timing only", style="bold yellow"))
            err_console.print(f"sensitivity {info['model']} · mode {info['mode']}: {info['cells']} cells × "
                              f"{info['samples']} samples; {info['todo']} to run (about {info['generations']} "
                              "sampled images + as many teacher-forced passes)")
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=err_console, transient=True)
            self.bar.start()
        desc = "full-network reference" if event == "reference" else "cells"
        if self.task is None or self.bar.tasks[self.task].description != desc:
            self.task = self.bar.add_task(desc, total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def sensitivity(
    model: ModelOpt = "var-d30",
    ckpt: CkptOpt = None,
    vae: VaeOpt = None,
    depths: Annotated[Optional[str], typer.Option("--depths", help="Subnet depths, e.g. 2,4,8,16 (default: "
                                                  "those below D; groups mode: D/2).")] = None,
    scales: Annotated[str, typer.Option("--scales", help="Rows of the matrix: all | 0,3,5.")] = "all",
    mode: Annotated[str, typer.Option("--mode", help="single: only scale s shallow; from: scales >= s "
                                      "(VARiant switch); groups: a group of scales.")] = "single",
    groups: Annotated[Optional[str], typer.Option("--groups", help="Scale groups for --mode groups, e.g. "
                                                  "0-2,3-5,6-9 (default: thirds).")] = None,
    select: SelectOpt = "isometric",
    samples: Annotated[int, typer.Option("--samples", help="Images per cell (labels cycle over classes).")] = 16,
    batch: Annotated[int, typer.Option("--batch", help="Images per forward pass.")] = 8,
    metric: Annotated[str, typer.Option("--metric", help="fidelity (data-free) | fid (torch-fidelity) | "
                                        "toy (toy classifier).")] = "fidelity",
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (shared by every cell: coupled).")] = 0,
    out: OutOpt = Path("out/sensitivity"),
    json_out: JsonOpt = False,
    allow_random: Annotated[bool, typer.Option("--allow-random", help="Run on random weights (unless --ckpt "
                                               "is given): plumbing tests and timing only.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Which scales can run a shallow subnet, and at what price: scale × depth matrix of fidelity to the full
    network (KL, token agreement, PSNR/SSIM), with analytic KV bytes and FLOPs per cell."""
    from varbench.quality import sensitivity as sens

    spec = resolve_spec(model)
    if mode not in sens.MODES:
        raise UsageError(f"--mode: {mode!r} is not one of {', '.join(sens.MODES)}")
    if groups is not None and mode != "groups":
        raise UsageError("--groups only applies to --mode groups")
    if samples < 1 or batch < 1:
        raise UsageError(f"--samples and --batch must be >= 1 (got {samples}, {batch})")
    cfg = sens.SensitivityConfig(
        model=spec.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None,
        depths=parse_int_list(depths, "--depths") if depths is not None else None,
        scales=scales, mode=mode, groups=sens.parse_groups(groups, spec.num_scales) if groups else None,
        select=check_select(select), samples=samples, batch=batch, metric=metric, seed=seed,
        allow_random=allow_random, device=resolve_device(device))
    sens.plan_cells(cfg, spec)                      # bad scales/depths -> exit 2 before anything is loaded
    sens.metric_names(metric)
    out_dir = ensure_out_dir(out)
    render = _Renderer()
    try:
        rows = sens.run_sensitivity(cfg, out_dir, progress=render)
    finally:
        render.close()
    for m in sens.metric_names(metric):
        table = matrix_table(rows, mode, m, spec.depth)
        if table is not None:
            err_console.print(table)
    ref = [r for r in rows if r["mode"] == "reference"]
    for r in ref:
        err_console.print(f"full network ({spec.name}, d{spec.depth}): {r['metric']} = {_fmt(r['value'], r['metric'])}")
    err_console.print(f"rows: {out_dir / sens.ROWS_FILE}; matrices: {out_dir}/sensitivity_matrix_{mode}_*.csv")
    if json_out:
        print_json(rows)


def register(app: typer.Typer) -> None:
    app.command("sensitivity")(sensitivity)
