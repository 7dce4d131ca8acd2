"""``varbench sensitivity``: the scale × depth ablation matrix (which scales can run shallow, at what price)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from varbench.cli.common import (CkptOpt, DeviceOpt, JsonOpt, ModelOpt, OutOpt, SelectOpt, VaeOpt, check_weight_files,
                                 err_console, out_dir_lock, print_json)
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
    metric: Annotated[str, typer.Option("--metric", help="fidelity (data-free) | fid (torch-fidelity) | "
                                        "toy (toy classifier).")] = "fidelity",
    kl: Annotated[str, typer.Option("--kl", help="guided: KL of the distributions sampled (CFG ramp, top-k/top-p, "
                                    "renormalised); conditional: of the conditional logits alone.")] = "guided",
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (shared by every cell: coupled).")] = 0,
    out: OutOpt = Path("out/sensitivity"),
    json_out: JsonOpt = False,
    allow_random: Annotated[bool, typer.Option("--allow-random", help="Fall back to random weights when no "
                                               "weights are found (--ckpt, shipped, official): plumbing tests and "
                                               "timing only.")] = False,
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
        select=check_select(select), samples=samples, batch=batch, metric=metric, seed=seed, kl=kl,
        allow_random=allow_random, device=resolve_device(device))
    if kl not in sens.KL_KINDS:
        raise UsageError(f"--kl: {kl!r} is not one of {', '.join(sens.KL_KINDS)}")
    sens.plan_cells(cfg, spec)                      # bad scales/depths -> exit 2 before anything is loaded
    sens.metric_names(metric)
    check_weight_files(ckpt, vae, spec)
    check_fits(inference_estimate(spec, batch, resolve_dtype(None, cfg.device), cfg.device, ckpt is not None,
                                  f"{spec.name} at batch {batch}"), "sensitivity")
    render = SensitivityProgress()
    with out_dir_lock(out) as out_dir:
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
        value = fmt_metric(r["value"], r["metric"])
        if r.get("ci_low") is not None and r.get("ci_high") is not None:
            value += (f" [{fmt_metric(r['ci_low'], r['metric'])}, {fmt_metric(r['ci_high'], r['metric'])}] "
                      f"(95%, n = {r.get('n')})")
        err_console.print(f"full network ({spec.name}, d{spec.depth}): {r['metric']} = {value}")
    err_console.print(f"rows: {out_dir / sens.ROWS_FILE}; matrices: {out_dir}/sensitivity_matrix_{mode}_*.csv")
    if json_out:
        print_json(rows)


def register(app: typer.Typer) -> None:
    app.command("sensitivity")(sensitivity)
