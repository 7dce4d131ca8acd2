"""``varbench scenarios DIR... [--latency-slo MS]``: MLPerf-like offline (max throughput) and server-like (best
throughput within a p99 batch-latency bound) answers from a finished sweep folder, without rerunning it."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from varbench.cli.common import JsonOpt, err_console, print_json
from varbench.errors import UsageError


def _f(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def scenarios_table(results, slo_ms: float | None) -> Table:
    """One heading row per configuration, then one row per scenario: the chosen batch, its img/s and p99."""
    from rich.text import Text

    t = Table(title="scenarios: max-throughput (offline)" + (f", p99 <= {slo_ms:g} ms (server-like)"
                                                               if slo_ms is not None else ""),
              caption="p99 = batch latency: generation p99 over the reps + median decode; no queueing model",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ("scenario", "batch", "img/s", "p99 ms", "n", "of batches"):
        t.add_column(h, justify="left" if h in ("scenario", "of batches") else "right",
                     no_wrap=h != "scenario", overflow="fold", max_width=44 if h == "scenario" else None)
    for r in results:
        t.add_row(Text(r.config, style="bold"), "", "", "", "", "")
        batches = ",".join(str(p.batch) + ("" if p.ok else f" ({p.status})") for p in r.points)
        picks = [("max-throughput", r.max_throughput)]
        if slo_ms is not None:
            picks.append((f"p99 <= {slo_ms:g} ms", r.slo))
        for name, c in picks:
            if c is None:
                t.add_row(Text("  " + name), "none fits" if name != "max-throughput" else "—", "—", "—", "—",
                          batches)
            else:
                t.add_row(Text("  " + name), str(c.batch), _f(c.images_per_s), _f(c.latency_p99_ms), str(c.n),
                          batches)
    return t


def scenarios(
    results: Annotated[list[Path], typer.Argument(help="Sweep results folders (sweep.jsonl over several "
                                                  "batch sizes).")],
    latency_slo: Annotated[Optional[float], typer.Option("--latency-slo", help="p99 batch-latency bound in ms: "
                                                         "also report the best throughput within it.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Best images/s over the sweep's batch sizes, and the best within a p99 latency bound, per configuration."""
    from varbench.measuring.scenarios import analyse
    from varbench.reporting.report import load_results

    for p in results:
        if not p.is_dir():
            raise UsageError(f"{p} is not a results directory")
    _, rows = load_results(results)
    out = analyse(rows, latency_slo)
    err_console.print(scenarios_table(out, latency_slo))
    if json_out:
        print_json([r.as_dict() for r in out])


def register(app: typer.Typer) -> None:
    app.command("scenarios")(scenarios)
