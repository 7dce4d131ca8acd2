"""``varbench report RESULTS_DIR... [-o report.html]``: one self-contained interactive HTML file."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from varbench.cli.common import check_out_file, err_console
from varbench.errors import EnvironmentUnavailable, UsageError


def report(
    results: Annotated[list[Path], typer.Argument(help="Results directories (sweep, sensitivity, trace, models).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="HTML file to write "
                                                   "(default: report.html in the first results directory).")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Also export static PNGs here "
                                                "(needs the optional kaleido package).")] = None,
    reported: Annotated[Optional[Path], typer.Option("--reported", help="TOML of published points to draw "
                                                     "hollow, 'reported, not measured here' (e.g. "
                                                     "suites/reported_points.toml).")] = None,
) -> None:
    """Write a self-contained HTML report: Pareto frontiers, sensitivity heatmaps, memory timelines, all rows."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise EnvironmentUnavailable("varbench report needs plotly (pip install plotly)") from None
    from varbench.reporting.report import build_report, find_result_dirs

    find_result_dirs(results)                     # every argument a folder: exit 2 before anything is written
    from varbench.reporting.reported import load_reported
    points = load_reported(reported) if reported is not None else []
    out = check_out_file(output if output is not None else results[0] / "report.html", "--output")
    if png is not None and png.exists() and not png.is_dir():
        raise UsageError(f"--png: {png} exists and is not a directory")
    path = build_report(results, out, png_dir=png, reported=points)
    err_console.print(f"report written to {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
