"""``varbench run SUITE [--out DIR]``: every part of a suite into one results directory, then the report."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from varbench.cli.common import ensure_out_dir, err_console
from varbench.cli.render import sweep_point_printer


def run(
    suite: Annotated[Path, typer.Argument(help="Suite file (suites/*.toml).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Results directory (default out/<suite name>). "
                                                "Re-running resumes finished points.")] = None,
) -> None:
    """Run a suite's sweep, sensitivity and trace parts into one results directory and write report.html there."""
    from varbench.workflows.suites import load_suite, run_suite

    s = load_suite(suite)
    out_dir = ensure_out_dir(out or Path("out") / s.name)
    dirs = run_suite(s, out_dir, progress=sweep_point_printer)
    err_console.print(f"suite {s.name}: {', '.join(dirs)} written under {out_dir}", markup=False)
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
