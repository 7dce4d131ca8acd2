"""``varbench models``: the model registry, or one model's VARiant subnets with their analytic costs."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table

from varbench.cli.common import (DepthsOpt, JsonOpt, SelectOpt, SwitchOpt, check_select, check_switch,
                                 err_console, print_json, resolve_depths, resolve_spec)
from varbench.errors import UsageError


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fmt_count(n: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    return t


def _registry_table(rows: list[dict[str, Any]]) -> Table:
    t = _table("model registry (* official weights on HF; per image: bf16 KV, CFG)",
               ("model", "depth", "C", "H", "S", "L", "px", "params", "KV", "FLOP"))
    for r in rows:
        t.add_row(r["name"] + ("*" if r["official"] else ""), str(r["depth"]), str(r["width"]), str(r["heads"]),
                  str(r["scales"]), str(r["tokens"]), str(r["image_size"]), _fmt_count(r["params"]),
                  _fmt_bytes(r["kv_bytes_per_image"]), _fmt_count(r["flops_per_image"]))
    return t


def _subnet_table(rows: list[dict[str, Any]]) -> Table:
    r0 = rows[0]
    t = _table(f"{r0['model']} VARiant(d, switch {r0['switch']}, {r0['select']}); analytic, per image, bf16 KV, CFG",
               ("depth", "params", "KV freed", "cut", "KV kept", "cut", "FLOP", "speedup"))
    for r in rows:
        t.add_row(str(r["depth"]), _fmt_count(r["params"]), _fmt_bytes(r["kv_bytes"]), f"{100 * r['kv_reduction']:.1f}%",
                  _fmt_bytes(r["kv_bytes_kept"]), f"{100 * r['kv_reduction_kept']:.1f}%", _fmt_count(r["flops"]),
                  f"{r['flops_speedup']:.2f}x")
    return t


def models(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Show one model's subnets; "
                                                 "without it, list the registry.")] = None,
    depths: DepthsOpt = None,
    switch: SwitchOpt = None,
    select: SelectOpt = "isometric",
    json_out: JsonOpt = False,
) -> None:
    """List the model registry, or one model's VARiant subnets: parameters, KV bytes and FLOPs (analytic)."""
    from model import spec as spec_mod
    from varbench.measuring import analytic

    if model is None:
        if depths is not None:
            raise UsageError("--depths needs --model NAME")
        rows = [analytic.registry_row(s) for s in spec_mod.SPECS.values()]
        if json_out:
            print_json(rows)
        else:
            err_console.print(_registry_table(rows))
        return
    s = resolve_spec(model)
    ds = resolve_depths(s, depths)
    sw = check_switch(s, switch)
    sel = check_select(select)
    rows = analytic.summary_rows(s, ds, sw, sel)
    if json_out:
        print_json(rows)
    else:
        err_console.print(_subnet_table(rows))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
