"""``varbench models``: the model registry, or one model's VARiant subnets with their analytic costs."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from varbench.cli.common import DepthsOpt, JsonOpt, SelectOpt, SwitchOpt, err_console, print_json
from varbench.cli.render import registry_table, subnet_table
from varbench.errors import UsageError
from varbench.target import check_select, check_switch, resolve_depths, resolve_spec


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
            err_console.print(registry_table(rows))
        return
    s = resolve_spec(model)
    ds = resolve_depths(s, depths)
    sw = check_switch(s, switch)
    sel = check_select(select)
    rows = analytic.summary_rows(s, ds, sw, sel)
    if json_out:
        print_json(rows)
    else:
        err_console.print(subnet_table(rows))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
