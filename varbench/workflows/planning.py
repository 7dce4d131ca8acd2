"""``varbench plan``: the per-scale depth schedule with the smallest predicted quality loss under a cost budget.

Inputs: a measured single-scale sensitivity matrix (rows of mode "single": the loss of running one scale at depth
d, every other scale at full depth) and a per-(scale, depth) cost from the analytic model. The search is a
multiple-choice knapsack over scales × depths, solved exactly by dynamic programming over Pareto frontiers of
(cost, loss) (``solve``): no discretisation of the budget, so the result is the true optimum of the additive
model.

Two modelling assumptions, both written into plan.json:
- **additive loss**: the loss of a schedule is predicted as the sum of its scales' single-scale losses (scales
  interact: a shallow scale changes the inputs of the later ones, so the prediction is checked by measuring the
  schedule with ``sensitivity --schedule``);
- **additive cost** per scale, chosen so that the budget holds for the real schedule:
  ``kv``: KV token-slots in the kept accounting (every block a schedule runs holds its tokens for the whole
  generation: ``--keep-skipped``, the paper's accounting): exactly Σ_s d_s · tokens_s · bytes per slot, an upper
  bound on the freed peak; ``flops``: each scale's FLOPs with every earlier scale at full depth (its attention then sees
  the most keys), an upper bound on the schedule's FLOPs; ``latency``: the full network's measured per-scale time
  (a sweep row) scaled by the scale's FLOP fraction at depth d, or the measured per-scale time of a VARiant row
  that runs depth d at that scale when the sweep has one.
The plan also records the schedule's exact analytic KV peak (freed and kept) and FLOPs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from model.schedule import DepthSchedule, subnet_layers
from model.spec import VARSpec
from varbench import results
from varbench.errors import UsageError
from varbench.schema import METRICS, SENSITIVITY

BUDGET_KINDS = ("kv", "flops", "latency")
PLAN_KIND = "plan"
PLAN_FILE = "plan.json"
ADDITIVITY = ("predicted loss = sum over scales of the single-scale loss of running that scale at its depth "
              "with every other scale at full depth (scales are assumed not to interact; measure the schedule "
              "with `sensitivity --schedule` to check)")
COST_MODELS = {
    "kv": "KV token-slots per image, kept accounting (each block holds every token it processed for the whole "
          "generation: keep_skipped, the paper's accounting): sum_s depth_s * tokens_s * bytes per slot; an "
          "upper bound on the freed peak",
    "flops": "transformer FLOPs per image with CFG, each scale costed with every earlier scale at full depth "
             "(an upper bound on the schedule's FLOPs)",
    "latency": "per-scale ms: a sweep row's measured time of that scale at that depth where one exists (VARiant "
               "rows with switch <= scale), else the full network's measured time of the scale scaled by its "
               "FLOP fraction at that depth",
}


@dataclass(frozen=True)
class Solution:
    """One schedule of the knapsack: a depth per scale, its summed loss and summed cost."""

    depths: tuple[int, ...]
    loss: float
    cost: float


def solve(losses: Sequence[Mapping[int, float]], costs: Sequence[Mapping[int, float]], budget: float,
          eps: float = 1e-12) -> Solution:
    """Exact minimum of Σ_s losses[s][d_s] subject to Σ_s costs[s][d_s] <= budget, one depth per scale from the
    keys of losses[s] (costs[s] must cover them). Dynamic programming over Pareto frontiers: after each scale only
    the (cost, loss) pairs no other pair beats on both are kept, so the answer is exact for real-valued costs.
    Ties in loss go to the cheaper schedule, then to the deeper one. UsageError when nothing fits."""
    if len(losses) != len(costs) or not losses:
        raise ValueError("losses and costs need one mapping per scale (and at least one scale)")
    frontier: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]       # (cost, loss, depths)
    for s, (ls, cs) in enumerate(zip(losses, costs)):
        if not ls:
            raise ValueError(f"scale {s}: no depth to choose from")
        missing = [d for d in ls if d not in cs]
        if missing:
            raise ValueError(f"scale {s}: no cost for depths {missing}")
        cand = [(c + cs[d], l + ls[d], ds + (d,)) for c, l, ds in frontier for d in ls
                if c + cs[d] <= budget + eps]
        # cheapest first; equal cost: lower loss, then deeper (more blocks = the safer choice)
        cand.sort(key=lambda t: (t[0], t[1], tuple(-d for d in t[2])))
        frontier, best = [], math.inf
        for c, l, ds in cand:
            if l < best - eps:
                frontier.append((c, l, ds))
                best = l
        if not frontier:
            raise UsageError(f"no schedule fits the budget ({budget:.6g}): even the cheapest depths of scales "
                             f"0..{s} cost more")
    c, l, ds = min(frontier, key=lambda t: (t[1], t[0]))
    return Solution(ds, l, c)


# ---- the loss matrix -----------------------------------------------------------------------------------------
def loss_of(metric: str, value: float, full: float | None) -> float:
    """Quality loss against the full network: KL as is; agreement/SSIM 1 − value; toy accuracy full − value;
    toy FD value − full. PSNR has no finite full-network value and is refused."""
    if metric == "kl":
        return float(value)
    if metric in ("token_agreement", "ssim"):
        return 1.0 - float(value)
    if metric in ("toy_acc", "toy_fd", "fid"):
        if full is None:
            raise UsageError(f"--metric {metric}: the sensitivity folder has no reference row for the full "
                             f"network's {metric}")
        return float(full) - float(value) if METRICS[metric].direction == "higher" else float(value) - float(full)
    raise UsageError(f"--metric {metric!r}: plan supports kl, token_agreement, ssim, toy_acc, toy_fd, fid")


@dataclass(frozen=True)
class LossMatrix:
    """Per-scale losses of a single-scale matrix, the full depth included at loss 0."""

    model: str
    weights: str
    select: str
    metric: str
    depths: tuple[int, ...]                        # the matrix's depths, the full depth last
    losses: tuple[dict[int, float], ...]           # per scale: depth -> loss
    bounds: tuple[dict[int, tuple[float, float] | None], ...]   # the loss's 95% bounds where rows carry them
    samples: int | None
    kl_kind: str | None


def load_matrix(sens_dir: str | os.PathLike, metric: str, spec_of: Any) -> LossMatrix:
    """The single-scale matrix of ``metric`` in a sensitivity folder (one model, weights and select); every
    scale must have every depth. ``spec_of(name)`` resolves the model (UsageError for an unknown one)."""
    path = Path(sens_dir) / SENSITIVITY.rows_file
    if not path.is_file():
        raise UsageError(f"--sensitivity: {path} does not exist (run `varbench sensitivity --mode single` first)")
    rows = [r for r in results.read_rows(path, SENSITIVITY.rows_file) if r.get("kind") == SENSITIVITY.name]
    single = [r for r in rows if r.get("mode") == "single" and r.get("metric") == metric]
    if not single:
        have = sorted({r.get("metric") for r in rows if r.get("mode") == "single"})
        raise UsageError(f"--sensitivity: {path} has no single-scale rows of metric {metric!r} "
                         f"(single-scale metrics there: {', '.join(have) or 'none'})")
    ident = {(r["model"], r["weights"], r["select"]) for r in single}
    if len(ident) > 1:
        raise UsageError(f"--sensitivity: {path} mixes models/weights/selections {sorted(ident)}; plan needs one")
    model, weights, select = ident.pop()
    spec: VARSpec = spec_of(model)
    full_rows = [r for r in rows if r.get("mode") == "reference" and r.get("metric") == metric
                 and r.get("weights") == weights]
    full = full_rows[-1]["value"] if full_rows else None
    depths = sorted({int(r["depth"]) for r in single} - {spec.depth})
    losses: list[dict[int, float]] = [dict() for _ in range(spec.num_scales)]
    bounds: list[dict[int, Any]] = [dict() for _ in range(spec.num_scales)]
    for r in single:                                 # later rows win (a rerun of a cell)
        s, d = int(r["scale"]), int(r["depth"])
        losses[s][d] = loss_of(metric, r["value"], full)
        lo, hi = r.get("ci_low"), r.get("ci_high")
        if lo is not None and hi is not None:
            a, b = loss_of(metric, lo, full), loss_of(metric, hi, full)
            bounds[s][d] = (min(a, b), max(a, b))
        else:
            bounds[s][d] = None
    gaps = [(s, d) for s in range(spec.num_scales) for d in depths if d not in losses[s]]
    if gaps:
        raise UsageError(f"--sensitivity: the single-scale matrix misses cells (scale, depth) {gaps[:5]}"
                         f"{' ...' if len(gaps) > 5 else ''}: run sensitivity --mode single --scales all")
    for s in range(spec.num_scales):
        losses[s][spec.depth] = 0.0
        bounds[s][spec.depth] = (0.0, 0.0)
    ns = {r.get("n") for r in single}
    return LossMatrix(model, weights, select, metric, tuple(depths) + (spec.depth,), tuple(losses), tuple(bounds),
                      ns.pop() if len(ns) == 1 else None, single[0].get("kl_kind"))


# ---- costs ---------------------------------------------------------------------------------------------------------
def kv_costs(spec: VARSpec, depths: Sequence[int]) -> list[dict[int, float]]:
    """Per scale and depth, bytes per image (bf16, CFG) in the kept accounting: d · tokens_s · bytes per slot."""
    import torch

    from varbench.measuring import analytic
    per_slot = analytic.kv_bytes_per_token(spec, batch=1, dtype=torch.bfloat16)
    return [{d: float(d * spec.tokens[s] * per_slot) for d in depths} for s in range(spec.num_scales)]


def _single(spec: VARSpec, s: int, d: int, select: str) -> DepthSchedule:
    full = tuple(range(spec.depth))
    return DepthSchedule([subnet_layers(spec.depth, d, select) if si == s else full
                          for si in range(spec.num_scales)])


def flops_costs(spec: VARSpec, depths: Sequence[int], select: str) -> list[dict[int, float]]:
    """Per scale and depth, the scale's FLOPs per image (CFG) with every earlier scale at full depth; scale 0
    also carries the AdaLN cost of every block (the analytic model charges it at a block's first active scale,
    which a schedule can move later), so the sum bounds any schedule's FLOPs from above."""
    from varbench.measuring import analytic
    ada = 0.0 if spec.shared_aln else 12.0 * spec.width ** 2 * 2          # one block's AdaLN, CFG rows
    return [{d: float(analytic.flops_per_scale(spec, _single(spec, s, d, select), batch=1)[s])
             + (ada * (spec.depth - d) if s == 0 else 0.0) for d in depths}
            for s in range(spec.num_scales)]


def latency_costs(spec: VARSpec, depths: Sequence[int], select: str, sweep_rows: Sequence[Mapping[str, Any]],
                  batch: int | None) -> tuple[list[dict[int, float]], list[dict[int, str]], int]:
    """Per scale and depth, ms (see COST_MODELS["latency"]); also where each number came from, and the batch.
    Needs an ok variant row of the full network at the batch (the smallest batch there when ``batch`` is None)."""
    ok = [r for r in sweep_rows if r.get("status") == "ok" and r.get("model") == spec.name
          and r.get("scale_ms_p50") and r.get("select") in (select, None)
          and str(r.get("method") or "variant").startswith("variant")
          and not r.get("keep_skipped") and not r.get("plan_overrides")]
    full = [r for r in ok if int(r["depth"]) == spec.depth]
    if batch is None and full:
        batch = min(int(r["batch"]) for r in full)
    full = [r for r in full if int(r["batch"]) == batch]
    if not full:
        raise UsageError(f"--latency-budget: the sweep has no ok row of the full {spec.name} (depth {spec.depth})"
                         f"{f' at batch {batch}' if batch is not None else ''} with per-scale times; run "
                         f"`varbench sweep --model {spec.name} --depths {spec.depth}` into it")
    base = full[-1]["scale_ms_p50"]
    fl = flops_costs(spec, depths, select)
    costs: list[dict[int, float]] = []
    source: list[dict[int, str]] = []
    for s in range(spec.num_scales):
        c, src = {}, {}
        for d in depths:
            meas = [r for r in ok if int(r["batch"]) == batch and int(r["depth"]) == d
                    and int(r.get("switch", 0)) <= s]
            if d == spec.depth:
                c[d], src[d] = float(base[s]), "measured (full network)"
            elif meas:
                r = max(meas, key=lambda r: int(r["switch"]))     # the row whose earlier scales are fullest
                c[d], src[d] = float(r["scale_ms_p50"][s]), f"measured (VARiant d{d} switch {r['switch']})"
            else:
                c[d] = float(base[s]) * fl[s][d] / fl[s][spec.depth]
                src[d] = "full network's time x FLOP fraction"
        costs.append(c)
        source.append(src)
    return costs, source, int(batch)


# ---- the plan ------------------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def schedule_of(spec: VARSpec, depths: Sequence[int], select: str) -> DepthSchedule:
    """The DepthSchedule of per-scale depths (``DepthSchedule.per_scale``), validated for the model."""
    try:
        return DepthSchedule.per_scale(spec, [int(d) for d in depths], select).validate(spec)
    except ValueError as e:
        raise UsageError(f"schedule: {e}") from None


def schedule_label(depths: Sequence[int], select: str) -> str:
    """The string rows carry as ``method`` for a per-scale schedule, e.g. ``schedule:depths=12/12/4/2,select=
    isometric`` (one key per schedule, so a plan's rows never collide with other points); ``model.methods.parse``
    reads it back (the ``schedule`` method)."""
    return f"schedule:depths={'/'.join(str(int(d)) for d in depths)},select={select}"


def make_plan(sens_dir: str | os.PathLike, spec_of: Any, budget_kind: str, budget: float, metric: str = "kl",
              sweep_dir: str | os.PathLike | None = None, batch: int | None = None) -> dict[str, Any]:
    """Solve and describe: the plan.json document. ``budget``: a fraction of the full network's cost for kv and
    flops, milliseconds for latency (which needs ``sweep_dir``)."""
    import torch

    from varbench.measuring import analytic

    if budget_kind not in BUDGET_KINDS:
        raise UsageError(f"budget kind {budget_kind!r} is not one of {', '.join(BUDGET_KINDS)}")
    if metric not in _LOSS_DOC:
        raise UsageError(f"--metric {metric!r}: plan supports {', '.join(_LOSS_DOC)}")
    if not math.isfinite(budget) or budget <= 0 or (budget_kind != "latency" and budget > 1):
        what = "milliseconds > 0" if budget_kind == "latency" else "a fraction in (0, 1]"
        raise UsageError(f"--{budget_kind}-budget: {budget} is not {what}")
    mat = load_matrix(sens_dir, metric, spec_of)
    spec: VARSpec = spec_of(mat.model)
    extra: dict[str, Any] = {}
    if budget_kind == "kv":
        costs = kv_costs(spec, mat.depths)
    elif budget_kind == "flops":
        costs = flops_costs(spec, mat.depths, mat.select)
    else:
        if sweep_dir is None:
            raise UsageError("--latency-budget needs --sweep DIR (a sweep with per-scale times of the full network)")
        rows = results.read_rows(Path(sweep_dir))
        costs, source, batch = latency_costs(spec, mat.depths, mat.select, rows, batch)
        extra = {"latency_batch": batch, "latency_sources": [{str(d): v for d, v in s.items()} for s in source],
                 "sweep": {"dir": str(sweep_dir), "manifest_sha256": file_sha256(Path(sweep_dir) / "manifest.json")}}
    full_cost = sum(c[spec.depth] for c in costs)
    limit = budget * full_cost if budget_kind != "latency" else budget
    sol = solve(mat.losses, costs, limit)
    sched = schedule_of(spec, sol.depths, mat.select)
    lo = [mat.bounds[s][d] for s, d in enumerate(sol.depths)]
    full_sched = DepthSchedule.full(spec)
    kv_free = analytic.kv_peak_bytes(spec, sched, batch=1, dtype=torch.bfloat16)
    kv_kept = analytic.kv_peak_bytes(spec, sched, batch=1, dtype=torch.bfloat16, keep_skipped=True)
    fl = analytic.flops(spec, sched, batch=1)
    sdir = Path(sens_dir)
    return {
        "kind": PLAN_KIND, "model": spec.name, "weights": mat.weights, "select": mat.select,
        "depths": list(sol.depths), "layers": [list(b) for b in sched.layers], "schedule": sched.describe(),
        "method": schedule_label(sol.depths, mat.select),
        "metric": metric, "kl_kind": mat.kl_kind if metric == "kl" else None,
        "loss_definition": _LOSS_DOC.get(metric, metric),
        "predicted_loss": sol.loss,
        "predicted_loss_bounds": ([sum(b[0] for b in lo), sum(b[1] for b in lo)] if all(lo) else None),
        "predicted_loss_bounds_note": "sums of the cells' 95% interval ends (not an interval of the sum)",
        "per_scale_loss": [mat.losses[s][d] for s, d in enumerate(sol.depths)],
        "assumption": ADDITIVITY,
        "budget": {"kind": budget_kind, "value": budget, "unit": "ms" if budget_kind == "latency" else "fraction",
                   "limit": limit, "cost_model": COST_MODELS[budget_kind]},
        "cost": {"value": sol.cost, "fraction_of_full": sol.cost / full_cost if full_cost else None,
                 "full": full_cost, "unit": {"kv": "bytes", "flops": "FLOP", "latency": "ms"}[budget_kind],
                 "kv_peak_bytes": kv_free, "kv_peak_bytes_kept": kv_kept,
                 "kv_fraction": kv_free / analytic.kv_peak_bytes(spec, full_sched, batch=1, dtype=torch.bfloat16),
                 "kv_fraction_kept": kv_kept / analytic.kv_peak_bytes(spec, full_sched, batch=1,
                                                                       dtype=torch.bfloat16, keep_skipped=True),
                 "flops": fl, "flops_fraction": fl / analytic.flops(spec, full_sched, batch=1),
                 "per": "image (bf16 KV, CFG)"},
        "choices": {"depths": list(mat.depths), "scales": spec.num_scales},
        "sensitivity": {"dir": str(sdir), "manifest_sha256": file_sha256(sdir / "manifest.json"),
                        "rows_sha256": file_sha256(sdir / SENSITIVITY.rows_file), "samples": mat.samples},
        **extra,
    }


_LOSS_DOC = {"kl": "KL(full || schedule) in nats per token (the row's value)",
             "token_agreement": "1 - token agreement with the full network", "ssim": "1 - SSIM",
             "toy_acc": "full network's toy accuracy - the cell's", "toy_fd": "the cell's toy FD - the full network's",
             "fid": "the cell's FID - the full network's"}


# ---- plan.json ------------------------------------------------------------------------------------------------------
def write_plan(plan: Mapping[str, Any], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    results.atomic_write_text(p, json.dumps(plan, indent=2, sort_keys=True) + "\n")
    return p


@dataclass(frozen=True)
class PlannedSchedule:
    """What ``--schedule plan.json`` hands to sweep and sensitivity."""

    model: str
    depths: tuple[int, ...]
    select: str
    label: str
    predicted_loss: float | None
    metric: str | None
    path: str


def read_plan(path: str | os.PathLike, spec: VARSpec | None = None) -> PlannedSchedule:
    """A plan.json (or any JSON with ``depths`` and optionally ``select``/``model``), checked against ``spec``:
    one line of UsageError for a missing file, bad JSON, wrong lengths or another model."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"--schedule: cannot read {p} ({e.strerror or e})") from None
    except ValueError as e:
        raise UsageError(f"--schedule: {p} is not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("depths"), list) or not doc["depths"]:
        raise UsageError(f"--schedule: {p} has no 'depths' list (one depth per scale)")
    try:
        depths = tuple(int(d) for d in doc["depths"])
    except (TypeError, ValueError):
        raise UsageError(f"--schedule: {p}: depths must be integers, got {doc['depths']!r}") from None
    select = str(doc.get("select") or "isometric")
    if spec is not None:
        if doc.get("model") not in (None, spec.name):
            raise UsageError(f"--schedule: {p} is a plan for {doc['model']}, not {spec.name}")
        schedule_of(spec, depths, select)
    pl = doc.get("predicted_loss")
    return PlannedSchedule(str(doc.get("model") or (spec.name if spec else "")), depths, select,
                           schedule_label(depths, select), float(pl) if isinstance(pl, (int, float)) else None,
                           doc.get("metric"), str(p))
