"""``varbench compare A B``: per matching point, B/A of every metric with the gate's U test on raw samples.

A and B are results folders or baseline JSON files. Exit 0; 1 when a ``--fail-on METRIC:FACTOR`` metric regresses
past its factor (worse in the schema's direction, and significant where raw samples exist); 2 bad input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from varbench.cli.common import JsonOpt, check_out_file, err_console, print_json
from varbench.errors import RegressionFailed, UsageError

STYLE = {"ok": "", "improved": "cyan", "new": "blue", "missing": "yellow", "regression": "bold red"}


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(v) >= div:
            return f"{v / div:.4g}{suffix}"
    return f"{v:.4g}"


def compare_table(c) -> Table:
    """metric / A / B / B÷A / p / verdict under one heading row per point (so nothing is cut at any width);
    points with a regression first, then by their worst verdict. The full deltas are in --json."""
    from varbench.gating.compare import VERDICT_ORDER

    t = Table(title=f"varbench compare · A {c.a.path} · B {c.b.path}", box=box.SIMPLE_HEAD, pad_edge=False,
              caption="B/A: ratio; p: one-sided U test on raw samples (— : not tested); * : past --fail-on")
    for h in ("metric", "A", "B", "B/A", "p", "verdict"):
        t.add_column(h, justify="left" if h in ("metric", "verdict") else "right", no_wrap=h != "metric",
                     overflow="fold", max_width=48 if h == "metric" else None)
    points: dict[str, list] = {}
    for d in c.deltas:
        points.setdefault(d.point, []).append(d)
    worst = lambda ds: min(VERDICT_ORDER.get(d.verdict, 9) for d in ds)      # noqa: E731
    failed = {id(d) for d in c.failures}
    for point, ds in sorted(points.items(), key=lambda kv: (worst(kv[1]), kv[0])):
        t.add_row(Text(point, style="bold"), "", "", "", "", "")
        for d in ds:
            t.add_row(Text("  " + d.metric), _num(d.a), _num(d.b), "—" if d.ratio is None else f"{d.ratio:.3f}",
                      "—" if d.p is None else f"{d.p:.2g}",
                      Text(d.verdict + (" *" if id(d) in failed else ""), style=STYLE.get(d.verdict, "")))
    return t


def compare(
    a: Annotated[Path, typer.Argument(help="A: a results folder or a baseline JSON (the reference).")],
    b: Annotated[Path, typer.Argument(help="B: a results folder or a baseline JSON (compared with A).")],
    fail_on: Annotated[Optional[list[str]], typer.Option("--fail-on", help="METRIC:FACTOR, e.g. "
                                                         "latency_ms_p50:1.05: exit 1 when B is worse than A by "
                                                         "more than FACTOR (and significantly so, where raw "
                                                         "samples exist); repeatable.")] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="Only this metric (a row field, e.g. "
                                                        "images_per_s); repeatable.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the U test.")] = 0.05,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML diff "
                                                     "here.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare two results sets point by point; exit 1 when a --fail-on metric regresses past its factor."""
    from varbench.gating import compare as cmp
    from varbench.gating.regress import Tolerances

    if not 0 < alpha < 1:
        raise UsageError(f"--alpha: must be in (0, 1), got {alpha}")
    thresholds = cmp.parse_fail_on(fail_on or [])
    if html_out is not None:
        check_out_file(html_out, "--html")
    side_a, side_b = cmp.load_side(a), cmp.load_side(b)
    result = cmp.compare_sides(side_a, side_b, thresholds, Tolerances(alpha=alpha), metrics=metric)
    if metric and not result.deltas:
        raise UsageError(f"--metric: none of {', '.join(metric)} is measured in {a} or {b}")
    err_console.print(compare_table(result))
    for note in result.notes:
        err_console.print(Text(f"note: {note}", style="yellow"))
    if html_out is not None:
        err_console.print(f"HTML diff written to {cmp.write_html(result, html_out)}", markup=False)
    if json_out:
        print_json(result.summary())
    if result.failures:
        first = result.failures[0]
        raise RegressionFailed(f"{len(result.failures)} metric(s) regressed past --fail-on (first: {first.point} "
                               f"{first.metric} x{first.ratio:.3f} > {first.threshold:g})")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
