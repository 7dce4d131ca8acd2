"""``varbench run SUITE [--out DIR]``: every part of a suite into one results directory, then the report."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from varbench.cli.common import NoMemoryCheckOpt, err_console, out_dir_lock
from varbench.cli.render import SensitivityProgress, sweep_point_printer


def run(
    suite: Annotated[Path, typer.Argument(help="Suite file (suites/*.toml).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Results directory (default out/<suite name>). "
                                                "Re-running resumes finished points.")] = None,
    no_memory_check: NoMemoryCheckOpt = False,
) -> None:
    """Run a suite's sweep, sensitivity and trace parts into one results directory and write report.html there."""
    from varbench.workflows.budget import check_fits
    from varbench.workflows.suites import load_suite, run_suite, suite_plan

    s = load_suite(suite)
    plan = suite_plan(s)
    for p in plan:
        err_console.print(f"{p['part']}: {p['model']} on {p['device']}, {p['what']}; estimate "
                          f"{_duration(p['seconds'])}, {p['memory_bytes'] / 2 ** 30:.1f} GiB (rough, analytic)",
                          markup=False, highlight=False, soft_wrap=True)
        if p["device"] == "cpu":       # on a GPU a point too large is an "oom" row; on the CPU the kernel kills
            check_fits(p["estimate"], f"run {s.name} ({p['part']})", skip=no_memory_check)
    if any(p["device"] == "cpu" for p in plan) and any(p["model"].startswith("var-d") for p in plan):
        err_console.print(f"notice: {s.name} runs official-size models on the CPU; it is meant for a GPU "
                          "(suites/ci.toml is the CPU suite)", style="yellow", markup=False, soft_wrap=True)
    total = sum(p["seconds"] for p in plan)
    with out_dir_lock(out or Path("out") / s.name) as out_dir:
        render = SensitivityProgress()

        def on_part(i: int, n: int, name: str, d: Path) -> None:
            err_console.print(f"[part {i + 1}/{n}] {name} -> {d}", markup=False, highlight=False)

        try:
            dirs = run_suite(s, out_dir, progress=sweep_point_printer, on_part=on_part, on_sensitivity=render)
        finally:
            render.close()
        err_console.print(f"suite {s.name}: {', '.join(dirs)} written under {out_dir} (estimate was "
                          f"{_duration(total)})", markup=False)
        _report(out_dir)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} min" if seconds < 7200
                                                      else f"{seconds / 3600:.1f} h")


def _report(out_dir: Path) -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        err_console.print("notice: plotly is not installed here, so no report.html; copy the results and run "
                          f"'varbench report {out_dir}' where it is", markup=False)
        return
    from varbench.reporting.report import build_report

    path = build_report([out_dir], out_dir / "report.html")
    err_console.print(f"report written to {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
