"""``varbench methods``: the registered efficiency methods, their parameters (types, defaults, ranges) and papers."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from varbench.cli.common import JsonOpt, err_console, print_json
from varbench.target import resolve_spec


def methods(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Show defaults and ranges for this "
                                                 "model (default var-d30).")] = "var-d30",
    json_out: JsonOpt = False,
) -> None:
    """List the efficiency methods: NAME, what it sets (schedule or plan), parameters, and the paper it follows."""
    from model import methods as methods_mod

    spec = resolve_spec(model)
    rows = methods_mod.describe(spec)
    if json_out:
        print_json(rows)
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"efficiency methods ({spec.name}); compose with '+': "
                  "--method variant:depth=2+kv-fp8")
    for col in ("method", "sets", "parameters (default, range)", "follows"):
        table.add_column(col, overflow="fold")
    for r in rows:
        params = "; ".join(f"{p['name']}: {p['type']} = {p['default']}"
                           + (f" in {p['range'][0]}..{p['range'][1]}" if p["range"][0] is not None else "")
                           + (f" ({'|'.join(p['choices'])})" if p.get("choices") else "") for p in r["params"])
        table.add_row(r["name"], r["sets"], params or "—", f"{r['doc']} · {r['paper']}")
    err_console.print(table)


def register(app: typer.Typer) -> None:
    app.command("methods")(methods)
