"""``varbench demo [--out DIR] [--quick]``: the whole pipeline on the shipped toy model, offline, on a CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from varbench.cli.common import OutOpt, err_console, out_dir_lock
from varbench.cli.render import (SensitivityProgress, fmt_metric, matrix_table, subnet_table, sweep_point_printer,
                                 sweep_table, trace_scales_table, trace_summary_lines)
from varbench.errors import RegressionFailed

SHOWN_METRICS = ("kl", "toy_acc")      # of the six metrics per cell, the two printed (the report has them all)


class _Printer:
    """Prints each part's table on stderr as the library finishes it; one progress bar per sensitivity mode."""

    def __init__(self, trace_dir: Path) -> None:
        self.trace_dir = trace_dir
        self.render = SensitivityProgress()

    def sensitivity_progress(self, event: str, done: int, total: int, info: dict) -> None:
        self.render(event, done, total, info)

    def part(self, name: str, payload: Any) -> None:
        from model import spec as spec_mod

        spec = spec_mod.get("var-toy")
        if name == "models":
            err_console.print(subnet_table(payload))
            err_console.print(f"weights: {payload[0]['weights']}", markup=False, highlight=False, soft_wrap=True)
        elif name.startswith("sensitivity-"):
            self.render.close()
            self.render = SensitivityProgress()
            mode = name.split("-", 1)[1]
            for m in SHOWN_METRICS:
                table = matrix_table(payload, mode, m, spec.depth)
                if table is not None:
                    err_console.print(table)
            for r in payload:
                if r["mode"] == "reference":
                    extra = f" (real images at this count: {r['real_fd']:.3f})" if r.get("real_fd") else ""
                    value = fmt_metric(r["value"], r["metric"])
                    err_console.print(f"full network (d{spec.depth}): {r['metric']} = {value}{extra}", markup=False,
                                      highlight=False, soft_wrap=True)
        elif name == "sweep":
            err_console.print(sweep_table(payload))
            bad = [r for r in payload if r.get("status") != "ok"]
            for r in bad:
                err_console.print(Text(f"sweep point depth={r.get('depth')} batch={r.get('batch')}: "
                                       f"{r.get('status')}: {r.get('error')}", style="red"))
        elif name == "trace":
            from varbench.workflows.demo import trace_scale_rows

            rows = trace_scale_rows(self.trace_dir, payload["run_id"])
            if rows:
                err_console.print(trace_scales_table(rows, payload))
            for line in trace_summary_lines(payload):
                err_console.print(line, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        self.render.close()


def demo(
    out: OutOpt = Path("results/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Fewest samples, repeats and grid points (CI): "
                                        "well under a minute.")] = False,
) -> None:
    """The whole pipeline on the shipped toy model (offline, CPU): models table, sensitivity matrices, sweep,
    trace and report; ends with the report's path and the best Pareto configurations. Re-running resumes."""
    from varbench.workflows.demo import shipped_weights

    var_p, _ = shipped_weights()
    with out_dir_lock(out) as out_dir:
        _demo(out_dir, quick, var_p)


def _demo(out_dir: Path, quick: bool, var_p: Path) -> None:
    from varbench.workflows.demo import run_demo

    err_console.print(f"varbench demo{' --quick' if quick else ''}: var-toy on the CPU, weights {var_p} "
                      f"(trained by varbench, shipped in the package); results in {out_dir}",
                      markup=False, highlight=False, soft_wrap=True)
    printer = _Printer(out_dir / "trace")
    try:
        res = run_demo(out_dir, quick=quick, on_part=printer.part, on_sweep_point=sweep_point_printer,
                       on_sensitivity=printer.sensitivity_progress)
    finally:
        printer.close()
    note = f" (kept from an earlier run: {', '.join(res.resumed)})" if res.resumed else ""
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in res.part_seconds.items())
    err_console.print(f"demo finished in {res.seconds:.0f} s ({parts}){note}", markup=False, highlight=False,
                      soft_wrap=True)
    typer.echo(f"report: {res.report}")
    for line in res.summary:
        typer.echo(line)
    failed = [r for r in res.sweep if r.get("status") == "error"]
    if failed:
        raise RegressionFailed(f"{len(failed)} of {len(res.sweep)} sweep points failed (status error); "
                               "rerun the demo to retry them")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
