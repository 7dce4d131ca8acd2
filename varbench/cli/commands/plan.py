"""``varbench plan``: the per-scale depth schedule with the smallest predicted loss under a KV, FLOPs or latency
budget, from a measured single-scale sensitivity matrix (``varbench.workflows.planning``)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from varbench.cli.common import JsonOpt, check_out_file, err_console, print_json
from varbench.cli.render import fmt_bytes, fmt_count
from varbench.errors import UsageError
from varbench.target import resolve_spec


def plan(
    sensitivity: Annotated[Path, typer.Option("--sensitivity", help="A sensitivity folder with a single-scale "
                                              "matrix (sensitivity --mode single).")],
    kv_budget: Annotated[Optional[float], typer.Option("--kv-budget", help="KV budget, a fraction of the full "
                                                       "network's (kept accounting).")] = None,
    latency_budget: Annotated[Optional[float], typer.Option("--latency-budget", help="Latency budget in ms "
                                                            "(needs --sweep).")] = None,
    flops_budget: Annotated[Optional[float], typer.Option("--flops-budget", help="FLOPs budget, a fraction of "
                                                          "the full network's.")] = None,
    metric: Annotated[str, typer.Option("--metric", help="Loss from this metric: kl | token_agreement | ssim | "
                                        "toy_acc | toy_fd | fid.")] = "kl",
    sweep: Annotated[Optional[Path], typer.Option("--sweep", help="Sweep folder with per-scale times "
                                                  "(--latency-budget).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="The sweep batch whose times cost the latency "
                                                 "(default: the smallest with a full-network row).")] = None,
    out: Annotated[Path, typer.Option("--out", help="plan.json to write.")] = Path("plan.json"),
    json_out: JsonOpt = False,
) -> None:
    """Pick a depth per scale (any depth of the matrix, not one switch point) minimising the predicted loss, the
    sum of the single-scale losses, under one budget; write plan.json for sweep/sensitivity --schedule."""
    from varbench.workflows import planning

    given = [(k, v) for k, v in (("kv", kv_budget), ("latency", latency_budget), ("flops", flops_budget))
             if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --kv-budget, --latency-budget, --flops-budget")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch: must be >= 1, got {batch}")
    check_out_file(out, "--out")
    kind, value = given[0]
    doc = planning.make_plan(sensitivity, resolve_spec, kind, value, metric, sweep_dir=sweep, batch=batch)
    planning.write_plan(doc, out)
    table = Table(box=box.SIMPLE_HEAD, title=f"plan for {doc['model']} under {kind} budget {value:g}"
                  f"{' ms' if kind == 'latency' else ''} ({metric} loss)")
    for col in ("scale", "tokens", "depth", "loss"):
        table.add_column(col, justify="right")
    spec = resolve_spec(doc["model"])
    for s, (d, l) in enumerate(zip(doc["depths"], doc["per_scale_loss"])):
        table.add_row(str(s), str(spec.tokens[s]), str(d), f"{l:.4g}")
    err_console.print(table)
    c = doc["cost"]
    b = doc["predicted_loss_bounds"]
    err_console.print(f"predicted loss {doc['predicted_loss']:.4g}"
                      + (f" (cells' 95% ends summed: {b[0]:.4g} .. {b[1]:.4g})" if b else "")
                      + f"; {kind} cost {c['fraction_of_full']:.1%} of the full network")
    err_console.print(f"KV per image {fmt_bytes(c['kv_peak_bytes'])} freed ({c['kv_fraction']:.1%}), "
                      f"{fmt_bytes(c['kv_peak_bytes_kept'])} kept ({c['kv_fraction_kept']:.1%}); "
                      f"{fmt_count(c['flops'])}FLOP ({c['flops_fraction']:.1%})")
    err_console.print(f"assumption: {doc['assumption']}")
    err_console.print(f"plan: {out}; measure it with `varbench sensitivity --schedule {out}` and "
                      f"`varbench sweep --schedule {out}`")
    if json_out:
        print_json(doc)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
