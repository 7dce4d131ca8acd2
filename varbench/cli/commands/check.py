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

from varbench.cli.common import JsonOpt, check_out_file, ensure_out_dir, err_console, print_json
from varbench.errors import RegressionFailed, UsageError

STYLE = {"ok": "green", "improved": "cyan", "new": "blue", "regression": "bold red", "changed": "bold red",
         "missing": "bold red"}


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1000 and float(v).is_integer() else f"{v:.4g}"


def verdict_table(result, width: int | None = None) -> Table:
    """point / metric / baseline / now / change / verdict (/ detail where it fits), failures first; a metric
    name ``model/d2/s2/b1/fp32/isometric/latency_ms_p50`` is split into its point and its field so neither is
    cut; numbers never wrap. The full verdicts are in --json."""
    width = width or err_console.width
    order = {"regression": 0, "changed": 0, "missing": 0, "improved": 1, "new": 2, "ok": 3}
    verdicts = sorted(result.verdicts, key=lambda v: order.get(v.verdict, 9))
    points = [v.metric.rpartition("/")[0].split("/") for v in verdicts]
    common = [c for c in (points[0] if points else []) if c and all(c in p for p in points)]
    narrow = width < 100                       # units go (the field names carry them: _ms, _bytes, flops)
    cells = []
    for v, parts in zip(verdicts, points):
        field = v.metric.rpartition("/")[2]
        unit, fmt = ("", _short) if narrow else (f" {v.unit}", _fmt)
        change = "—" if v.change is None else f"{100 * v.change:+.1f}%"
        cells.append(("/".join(c for c in parts if c not in common) or "-", field, f"{fmt(v.baseline)}{unit}",
                      f"{fmt(v.now)}{unit}", change, v.verdict, v.detail))
    if narrow:                                 # the point becomes a heading row above its metrics
        return _narrow_table(title_of(common), cells)
    heads = ("point", "metric", "baseline", "now", "change", "verdict")
    used = sum(max([len(h), *(len(c[i]) for c in cells)]) + 3 for i, h in enumerate(heads)) + 2
    detail = width - used >= 24 and any(c[6] for c in cells)
    t = Table(title=title_of(common), box=box.SIMPLE_HEAD, pad_edge=False,
              caption=None if detail or not any(c[6] for c in cells) else "details (tests, tolerances): --json")
    for h in heads:
        t.add_column(h, justify="right" if h in ("baseline", "now", "change") else "left", no_wrap=True)
    if detail:
        t.add_column("detail", overflow="fold")
    for c in cells:
        row = [Text(c[0]), Text(c[1]), c[2], c[3], c[4], Text(c[5], style=STYLE.get(c[5], ""))]
        t.add_row(*row, *([Text(c[6])] if detail else []))
    return t


def title_of(common: list[str]) -> str:
    return "varbench check" + (f" · {'/'.join(common)}" if common else "")


def _short(v: float | None) -> str:
    """A number in at most ~6 characters for a narrow terminal: 15.4M, 5.32, 61.4k."""
    if v is None:
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div * 10:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.4g}"


def _narrow_table(title: str, cells: list[tuple[str, ...]]) -> Table:
    t = Table(title=title, caption="units, tests and tolerances: --json", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ("metric", "baseline", "now", "change", "verdict"):
        t.add_column(h, justify="right" if h in ("baseline", "now", "change") else "left", no_wrap=True)
    last = None
    for c in cells:
        if c[0] != last:
            t.add_row(Text(c[0], style="bold"), "", "", "", "")
            last = c[0]
        t.add_row(Text("  " + c[1]), c[2], c[3], c[4], Text(c[5], style=STYLE.get(c[5], "")))
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
    from varbench.results import lock_dir
    from varbench.workflows.suites import load_suite

    if suite is None and results is None:
        raise UsageError("check needs --suite (to run it) or --results (to gate existing results)")
    s = load_suite(suite) if suite is not None else None
    tol = s.tolerances() if s is not None else regress.Tolerances()
    if update_baseline:
        check_out_file(baseline, "--baseline")            # a folder or unwritable path: exit 2 before the run
    else:
        base = regress.load_baseline(baseline)            # fail on a bad baseline before a long run
    if results is not None:
        if not results.is_dir():
            raise UsageError(f"--results: {results} is not a results directory")
        out_dir = ensure_out_dir(out) if out is not None else results
        src = results
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = ensure_out_dir(out if out is not None else Path("out") / "check" / f"{s.name}-{stamp}")
        if any(out_dir.rglob("*.jsonl")):
            raise UsageError(f"--out {out_dir} already holds results; the gate needs a fresh measurement "
                             f"(use --results {out_dir} to gate them as they are)")
        src = out_dir
    with lock_dir(out_dir):
        return _gate(s, tol, base if not update_baseline else None, baseline, src, out_dir, results is None,
                     update_baseline, force, json_out)


def _gate(s, tol, base, baseline: Path, src: Path, out_dir: Path, run: bool, update_baseline: bool, force: bool,
          json_out: bool) -> None:
    """Run the suite (unless gating given results), then write the baseline or compare with it."""
    from varbench.gating import regress
    from varbench.reporting.report import load_results
    from varbench.workflows.suites import run_suite

    if run:
        run_suite(s, out_dir)
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
