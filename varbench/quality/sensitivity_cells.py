"""What a sensitivity run scores: its cells (a scale × depth matrix cell, or a candidate method or per-scale
schedule) and how ``--mode``, ``--scales``, ``--groups``, ``--depths``, ``--method`` and ``--schedule`` parse into
them. Pure: no model runs here (``varbench.quality.sensitivity`` evaluates the cells).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from model.schedule import SELECTS, DepthSchedule, subnet_layers
from model.spec import VARSpec
from varbench.errors import UsageError
from varbench.target import resolve_depths

if TYPE_CHECKING:
    from varbench.quality.sensitivity import SensitivityConfig

MODES = ("single", "from", "groups")


@dataclass(frozen=True)
class Cell:
    """One thing scored: a matrix cell, or a candidate (a method configuration or a per-scale schedule) with the
    plan fields and refiner it runs under."""
    mode: str
    scale: int | None
    group: tuple[int, int] | None
    depth: int
    schedule: DepthSchedule
    layers: tuple[int, ...]
    method: str | None = None
    plan_changes: tuple[tuple[str, Any], ...] = ()
    refiner: str | None = None
    extra: dict = dataclasses.field(default_factory=dict, compare=False)    # method_params, plan's prediction

    @property
    def label(self) -> str:
        if self.method is not None:
            return self.method
        return f"{self.group[0]}-{self.group[1]}" if self.group else str(self.scale)

    @property
    def key(self) -> tuple:
        """What a generation depends on: cells with the same key share one evaluation."""
        return (self.schedule, self.plan_changes, self.refiner)


# ---- parsing and planning -----------------------------------------------------------------------------------
def parse_scales(text: str | Sequence[int], num_scales: int) -> list[int]:
    """'all' -> every scale; '0,3,5' -> those, each in 0..S-1 (UsageError otherwise)."""
    if isinstance(text, str):
        if text.strip().lower() == "all":
            return list(range(num_scales))
        items = [t.strip() for t in text.split(",")]
        try:
            vals = [int(t) for t in items]
        except ValueError:
            raise UsageError(f"--scales: expected 'all' or integers like 0,3,5, got {text!r}") from None
    else:
        vals = [int(v) for v in text]
    if not vals:
        raise UsageError("--scales: empty list")
    bad = [v for v in vals if not 0 <= v < num_scales]
    if bad:
        raise UsageError(f"--scales: {bad[0]} is outside 0..{num_scales - 1} (the model has {num_scales} scales)")
    return list(dict.fromkeys(vals))


def parse_groups(text: str, num_scales: int) -> list[tuple[int, int]]:
    """'0-2,3-5,6-9' -> [(0, 2), (3, 5), (6, 9)]; a bare '4' is (4, 4). Bounds inclusive, within 0..S-1."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        lo_s, sep, hi_s = item.partition("-")
        try:
            lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        except ValueError:
            raise UsageError(f"--groups: {item!r} is not a scale range like 0-2 (got {text!r})") from None
        out.append((lo, hi))
    return check_groups(out, num_scales)


def check_groups(groups: Sequence[tuple[int, int]], num_scales: int) -> list[tuple[int, int]]:
    out = []
    for lo, hi in groups:
        if not 0 <= lo <= hi < num_scales:
            raise UsageError(f"--groups: {lo}-{hi} is not a range within 0..{num_scales - 1} with lo <= hi")
        out.append((int(lo), int(hi)))
    if not out:
        raise UsageError("--groups: empty list")
    return list(dict.fromkeys(out))


def default_groups(num_scales: int) -> list[tuple[int, int]]:
    """First, middle and last third, the remainder going to the last (10 scales: 0-2, 3-5, 6-9 as in the paper)."""
    k = num_scales // 3
    if k == 0:
        return [(s, s) for s in range(num_scales)]
    return [(0, k - 1), (k, 2 * k - 1), (2 * k, num_scales - 1)]


def cell_depths(cfg: SensitivityConfig, spec: VARSpec) -> list[int]:
    """The matrix's columns: as given, else 2,4,8,16 below D (groups mode: D/2); the full network is the
    reference, not a column."""
    default = [max(2, round(spec.depth / 2))] if cfg.mode == "groups" else (2, 4, 8, 16)
    return resolve_depths(spec, cfg.depths, default, with_full=False)


def candidate_cells(cfg: SensitivityConfig, spec: VARSpec) -> list[Cell]:
    """The method configurations (mode "method") and per-scale schedules (mode "schedule") to score, in order;
    UsageError naming a bad method or schedule."""
    from model.methods import MethodError, parse as parse_configuration

    cells = []
    for text in cfg.methods or ():
        try:
            conf = parse_configuration(text, spec)
        except MethodError as e:
            raise UsageError(f"--method: {e}") from None
        depth, _, _ = conf.descriptor()
        changes = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                               for k, v in conf.plan_changes().items()))
        mode = "schedule" if "schedule" in conf.params() else "method"
        cells.append(Cell(mode, None, None, depth, conf.schedule(), tuple(conf.layers()), conf.canonical(),
                          changes, conf.refiner(), {"method_params": conf.params()}))
    for sch in cfg.schedules or ():
        from varbench.workflows.planning import schedule_label, schedule_of
        depths, select = [int(d) for d in sch["depths"]], str(sch.get("select") or "isometric")
        schedule = schedule_of(spec, depths, select)
        extra = {"method_params": {"schedule": {"depths": depths, "select": select}},
                 "predicted_loss": sch.get("predicted_loss"), "plan_metric": sch.get("plan_metric"),
                 "plan_file": sch.get("plan")}
        cells.append(Cell("schedule", None, None, depths[-1], schedule, schedule.layers[-1],
                          schedule_label(depths, select), (), None, extra))
    return list({c.method: c for c in cells}.values())


def plan_cells(cfg: SensitivityConfig, spec: VARSpec) -> list[Cell]:
    """Every (row, depth) cell of the matrix with its schedule, rows in scale/group order, depths as given; with
    ``methods``/``schedules``, those candidates instead (``candidate_cells``)."""
    if cfg.methods or cfg.schedules:
        matrix_opts = [o for o, set_ in (("--groups", cfg.groups), ("--depths", cfg.depths is not None),
                                         ("--scales", not (isinstance(cfg.scales, str)
                                                           and cfg.scales.strip().lower() == "all"))) if set_]
        if matrix_opts:
            raise UsageError(f"{', '.join(matrix_opts)} do(es) not apply with --method/--schedule (they replace "
                             f"the matrix)")
        return candidate_cells(cfg, spec)
    if cfg.mode not in MODES:
        raise UsageError(f"--mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.select not in SELECTS:
        raise UsageError(f"--select: {cfg.select!r} is not one of {', '.join(SELECTS)}")
    depths, S, D = cell_depths(cfg, spec), spec.num_scales, spec.depth
    full = tuple(range(D))
    cells = []
    if cfg.mode == "groups":
        if not (isinstance(cfg.scales, str) and cfg.scales.strip().lower() == "all"):
            raise UsageError("--scales does not apply to --mode groups; give the scale ranges with --groups")
        for g in check_groups(cfg.groups, S) if cfg.groups else default_groups(S):
            for d in depths:
                sub = subnet_layers(D, d, cfg.select)
                sch = DepthSchedule([sub if g[0] <= si <= g[1] else full for si in range(S)])
                cells.append(Cell("groups", None, g, d, sch, sub))
        return cells
    if cfg.groups:
        raise UsageError("--groups only applies to --mode groups")
    for s in parse_scales(cfg.scales, S):
        for d in depths:
            sub = subnet_layers(D, d, cfg.select)
            if cfg.mode == "single":
                sch = DepthSchedule([sub if si == s else full for si in range(S)])
            else:
                sch = DepthSchedule.variant(spec, d, switch=s, select=cfg.select)
            cells.append(Cell(cfg.mode, s, None, d, sch, sub))
    return cells
