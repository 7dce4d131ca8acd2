"""``varbench sensitivity``: the scale × depth ablation matrix (which scales can run shallow, at what price)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from varbench.cli.common import (CkptOpt, DeviceOpt, InceptionWeightsOpt, JsonOpt, ModelOpt, NoMemoryCheckOpt, OutOpt,
                                 SelectOpt, VaeOpt,
                                 check_weight_files, err_console, out_dir_lock, print_json)
from varbench.cli.render import SensitivityProgress, fmt_metric, matrix_table
from varbench.errors import UsageError
from varbench.workflows.budget import check_fits, inference_estimate
from varbench.target import check_select, parse_int_list, resolve_device, resolve_dtype, resolve_spec


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
    metric: Annotated[str, typer.Option("--metric", help="fidelity (data-free: KL, token agreement, PSNR, SSIM) | "
                                        "kl (the KL alone: no generation per cell, the fast matrix) | fid "
                                        "(torch-fidelity) | toy (toy classifier).")] = "fidelity",
    kl: Annotated[str, typer.Option("--kl", help="guided: KL of the distributions sampled (CFG ramp, top-k/top-p, "
                                    "renormalised); conditional: of the conditional logits alone.")] = "guided",
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (shared by every cell: coupled).")] = 0,
    out: OutOpt = Path("out/sensitivity"),
    json_out: JsonOpt = False,
    allow_random: Annotated[bool, typer.Option("--allow-random", help="Fall back to random weights when no "
                                               "weights are found (--ckpt, shipped, official): plumbing tests and "
                                               "timing only.")] = False,
    device: DeviceOpt = "auto",
    method: Annotated[Optional[list[str]], typer.Option("--method", help="Score an efficiency-method "
                                                        "configuration NAME[:key=value,...] (varbench methods) "
                                                        "against the full network instead of the matrix; "
                                                        "repeatable.")] = None,
    schedule: Annotated[Optional[list[Path]], typer.Option("--schedule", help="Score the per-scale schedule of "
                                                           "a plan.json (varbench plan) instead of the matrix; "
                                                           "repeatable.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the kernels "
                                                    "(default on CUDA).")] = None,
    fid_ref: Annotated[Optional[Path], typer.Option("--fid-ref", help="--metric fid: reference statistics (an "
                                                    "ADM-style .npz with mu and sigma, or an image folder); "
                                                    "default: the full network's own samples.")] = None,
    inception_weights: InceptionWeightsOpt = None,
    no_memory_check: NoMemoryCheckOpt = False,
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
    from varbench.workflows.planning import read_plan
    plans = [read_plan(p, spec) for p in schedule or ()]
    cfg = sens.SensitivityConfig(
        model=spec.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None,
        depths=parse_int_list(depths, "--depths") if depths is not None else None,
        scales=scales, mode=mode, groups=sens.parse_groups(groups, spec.num_scales) if groups else None,
        select=check_select(select), samples=samples, batch=batch, metric=metric, seed=seed, kl=kl,
        allow_random=allow_random, device=resolve_device(device), methods=list(method) if method else None,
        schedules=[{"depths": list(p.depths), "select": p.select, "plan": p.path, "predicted_loss": p.predicted_loss,
                    "plan_metric": p.metric} for p in plans] or None, compile=compile,
        fid_ref=str(fid_ref) if fid_ref else None,
        inception_weights=str(inception_weights) if inception_weights else None)
    if (fid_ref or inception_weights) and metric != "fid":
        raise UsageError("--fid-ref and --inception-weights apply to --metric fid only")
    if fid_ref is not None and not fid_ref.exists():
        raise UsageError(f"--fid-ref: {fid_ref} does not exist")
    if kl not in sens.KL_KINDS:
        raise UsageError(f"--kl: {kl!r} is not one of {', '.join(sens.KL_KINDS)}")
    sens.plan_cells(cfg, spec)                      # bad scales/depths -> exit 2 before anything is loaded
    sens.metric_names(metric)
    check_weight_files(ckpt, vae, spec)
    check_fits(inference_estimate(spec, batch, resolve_dtype(None, cfg.device), cfg.device, ckpt is not None,
                                  f"{spec.name} at batch {batch}"), "sensitivity",
               skip=no_memory_check)
    render = SensitivityProgress()
    with out_dir_lock(out) as out_dir:
        try:
            rows = sens.run_sensitivity(cfg, out_dir, progress=render)
        finally:
            render.close()
    if cfg.methods or cfg.schedules:
        err_console.print(candidates_table(rows, sens.metric_names(metric), spec.name))
    for m in sens.metric_names(metric) if not (cfg.methods or cfg.schedules) else ():
        table = matrix_table(rows, mode, m, spec.depth)
        if table is not None:
            err_console.print(table)
    ref = [r for r in rows if r["mode"] == "reference"]
    for r in ref:
        value = fmt_metric(r["value"], r["metric"])
        if r.get("ci_low") is not None and r.get("ci_high") is not None:
            value += (f" [{fmt_metric(r['ci_low'], r['metric'])}, {fmt_metric(r['ci_high'], r['metric'])}] "
                      f"(95%, n = {r.get('n')})")
        err_console.print(f"full network ({spec.name}, d{spec.depth}): {r['metric']} = {value}")
    tables = ("sensitivity_candidates.csv" if cfg.methods or cfg.schedules
              else f"sensitivity_matrix_{mode}_*.csv")
    err_console.print(f"rows: {out_dir / sens.ROWS_FILE}; tables: {out_dir}/{tables}")
    if json_out:
        print_json(rows)


def candidates_table(rows: list[dict], metrics: list[str], model: str) -> Table:
    """One line per method / schedule: each metric with its 95% interval (and a plan's predicted loss)."""
    table = Table(box=box.SIMPLE_HEAD, title=f"methods against the full network ({model}); 95% intervals")
    table.add_column("configuration", overflow="fold")
    for m in metrics:
        table.add_column(m, justify="right")
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r.get("mode") in ("method", "schedule"):
            by.setdefault(r["method"], {})[r["metric"]] = r
    for name, cells in by.items():
        out = []
        for m in metrics:
            r = cells.get(m)
            if r is None:
                out.append("—")
                continue
            v = fmt_metric(r["value"], m)
            if r.get("ci_low") is not None and r.get("ci_high") is not None:
                v += f" [{fmt_metric(r['ci_low'], m)}, {fmt_metric(r['ci_high'], m)}]"
            if r.get("predicted_loss") is not None and r.get("plan_metric") == m:
                v += f" (plan's predicted loss {r['predicted_loss']:.4g})"
            out.append(v)
        table.add_row(name, *out)
    n = next((r.get("n") for r in rows if r.get("mode") in ("method", "schedule")), None)
    if n is not None:
        table.caption = f"n = {n} samples each"
    return table


def register(app: typer.Typer) -> None:
    app.command("sensitivity")(sensitivity)
