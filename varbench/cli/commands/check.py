"""``varbench check --suite S --baseline B``: run a suite and gate it against a committed baseline (CI).

Exit 0 pass, 1 regression or failed measurement, 2 bad input (including a baseline of another device class
without --force), 3 environment unavailable.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from varbench.cli.common import JsonOpt, ensure_out_dir, err_console, print_json
from varbench.errors import RegressionFailed, UsageError

STYLE = {"ok": "green", "improved": "cyan", "new": "blue", "regression": "bold red", "changed": "bold red",
         "missing": "bold red"}


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1000 and float(v).is_integer() else f"{v:.4g}"


def verdict_table(result) -> Table:
    """metric / baseline / now / change / verdict, failures first; units next to the numbers."""
    t = Table(title="varbench check", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("metric", overflow="fold", min_width=34, ratio=3)
    for col in ("baseline", "now", "change"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    t.add_column("detail", overflow="fold", ratio=1)
    order = {"regression": 0, "changed": 0, "missing": 0, "improved": 1, "new": 2, "ok": 3}
    for v in sorted(result.verdicts, key=lambda v: order.get(v.verdict, 9)):
        change = "—" if v.change is None else f"{100 * v.change:+.2f}%"
        t.add_row(Text(v.metric), f"{_fmt(v.baseline)} {v.unit}", f"{_fmt(v.now)} {v.unit}", change,
                  Text(v.verdict, style=STYLE.get(v.verdict, "")), Text(v.detail))
    return t


def check(
    baseline: Annotated[Path, typer.Option("--baseline", help="Baseline JSON (results/baselines/<name>.json).")],
    suite: Annotated[Optional[Path], typer.Option("--suite", help="Suite to run (suites/*.toml); its check "
                                                  "table sets the tolerances.")] = None,
    results: Annotated[Optional[Path], typer.Option("--results", help="Gate existing results instead of running "
                                                    "the suite (the suite still gives tolerances).")] = None,
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="Write the baseline from this run "
                                                  "instead of comparing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Compare even across device classes.")] = False,
    json_out: JsonOpt = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where this run's results and benchmark.json go "
                                                "(default out/check/<suite>-<time>).")] = None,
) -> None:
    """Run the suite, compare memory, speed and quality with the baseline; exit 1 on a regression."""
    from varbench.gating import regress
    from varbench.reporting.report import load_results
    from varbench.workflows.suites import load_suite, run_suite

    if suite is None and results is None:
        raise UsageError("check needs --suite (to run it) or --results (to gate existing results)")
    s = load_suite(suite) if suite is not None else None
    tol = s.tolerances() if s is not None else regress.Tolerances()
    if not update_baseline:
        base = regress.load_baseline(baseline)            # fail on a bad baseline before a long run
    if results is not None:
        out_dir = ensure_out_dir(out) if out is not None else results
        src = results
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = ensure_out_dir(out if out is not None else Path("out") / "check" / f"{s.name}-{stamp}")
        if any(out_dir.rglob("*.jsonl")):
            raise UsageError(f"--out {out_dir} already holds results; the gate needs a fresh measurement "
                             f"(use --results {out_dir} to gate them as they are)")
        run_suite(s, out_dir)
        src = out_dir
    manifests, rows = load_results([src])
    failed = [r for r in rows if r.get("status") not in (None, "ok")]
    metrics = regress.metrics_from_rows(rows, tol)
    dev = regress.device_class(manifests[0] if manifests else None, rows)
    regress.write_json_atomic(out_dir / "benchmark.json", regress.benchmark_action_json(metrics))
    if update_baseline:
        if failed:
            raise RegressionFailed(f"{len(failed)} measurement(s) failed (first: {_point(failed[0])}); "
                                   f"not writing a baseline")
        if not metrics:
            raise UsageError(f"no metrics in {src}; nothing to put in a baseline")
        regress.write_json_atomic(baseline, regress.make_baseline(metrics, dev, manifests[0] if manifests else None,
                                                                  s.name if s else None))
        err_console.print(f"baseline with {len(metrics)} metrics ({dev}) written to {baseline}", markup=False)
        if json_out:
            print_json({"baseline": str(baseline), "metrics": len(metrics), "device_class": dev})
        return
    result = regress.compare(base, metrics, dev, tol, force=force)
    err_console.print(verdict_table(result))
    summary = result.summary()
    summary["failed_points"] = [_point(r) for r in failed]
    summary["benchmark_json"] = str(out_dir / "benchmark.json")
    if json_out:
        print_json(summary)
    bad = [v for v in result.verdicts if v.failed]
    if bad or failed:
        first = bad[0].metric if bad else _point(failed[0])
        raise RegressionFailed(f"{len(bad)} metric(s) regressed, {len(failed)} measurement(s) failed "
                               f"against {baseline} (first: {first})")
    err_console.print(f"pass: {len(result.verdicts)} metrics within tolerance of {baseline}", markup=False)


def _point(r: dict) -> str:
    what = " ".join(f"{k}={r.get(k)}" for k in ("kind", "model", "depth", "switch", "batch") if r.get(k) is not None)
    return f"{what} status={r.get('status')} {str(r.get('error') or '')[:80]}".strip()


def register(app: typer.Typer) -> None:
    app.command("check")(check)
