"""``varbench demo``: the whole pipeline on the shipped toy model, offline, on a CPU, in a few minutes.

A newcomer's first run (DESIGN "Who uses it", user 4): the analytic models table, a sensitivity matrix (``from`` and
``single``), a latency/memory sweep, a memory trace and the report, each part in its own subfolder of ``out`` as
``varbench run`` lays a suite out, then three lines naming the best Pareto configurations. Every part runs on the
trained ``var-toy`` weights shipped in the package; if they are missing the demo stops (it never falls back to
random weights). Re-running resumes: the sweep and sensitivity skip finished points, the trace is kept once written.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from varbench import results
from varbench.errors import EnvironmentUnavailable, UsageError

log = logging.getLogger(__name__)

MODEL = "var-toy"
SWITCH = 4                          # var-toy has 7 scales: the subnet runs the last three (5x5, 6x6, 8x8 tokens)
DEPTHS = (2, 4, 6, 12)              # 12 = the full network
SENS_MODES = ("from", "single")
DEMO_FILE = "demo.json"             # which demo (quick or full) wrote this directory
MODELS_FILE = "models.jsonl"
# "close enough to the full network" for the summary, in the guided KL (the distributions really sampled: CFG, top-k,
# top-p; varbench.quality.metrics.sampled_kl_per_sample_scale): the 95% upper end of the interval must be <= 0.5
# nats per token, which bounds the total-variation distance of each sampled next-token distribution by
# sqrt(0.5 / 2) = 50% (Pinsker). The shipped var-toy (issue 22: full network at toy accuracy 0.78) is sharper than
# the first one (0.56), so its subnets sit further from it: from scale 4, d2/d4/d6 at 0.52/0.47/0.42 nats
# (n = 500, intervals +-0.02; results/toy/study), and at the demo's 16 samples 0.47 [0.39, 0.55], 0.44 [0.35, 0.54],
# 0.38 [0.32, 0.46]: 0.5 claims d6 and names d2/d4 as not separable; the first toy's 0.15 would claim nothing.
KL_TOLERANCE = 0.5
# one intra-op thread everywhere: var-toy's ops are tiny, and on a busy 2-core machine two threads spin against
# each other (measured: generate of 8 images 0.36 s on 1 thread, 0.7-13 s on 2 with other jobs running)
THREADS = 1
MIB = 1 << 20

PartCallback = Callable[[str, Any], None]


@dataclass
class DemoPlan:
    """Every part's settings; ``quick`` shrinks samples, repeats and the grid to the minimum that still plots."""

    quick: bool
    sensitivity: list[Any]          # one SensitivityConfig per mode
    sweep: Any                      # SweepConfig
    trace: Any                      # TraceConfig
    model_depths: tuple[int, ...] = DEPTHS
    switch: int = SWITCH
    threads: int = THREADS


@dataclass
class DemoResult:
    """What the demo wrote and found; the CLI prints it, tests inspect it."""

    out: Path
    weights: str
    dirs: dict[str, Path]
    models: list[dict[str, Any]]
    sensitivity: dict[str, list[dict[str, Any]]]
    sweep: list[dict[str, Any]]
    trace: dict[str, Any]
    report: Path
    summary: list[str]
    seconds: float
    part_seconds: dict[str, float] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)


def shipped_weights(model: str = MODEL) -> tuple[Path, Path]:
    """(var, vae) safetensors shipped in the package; missing files are an environment problem (exit 3)."""
    from model.pipeline import WEIGHTS_DIR

    d = Path(WEIGHTS_DIR) / model
    var_p, vae_p = d / "var.safetensors", d / "vae.safetensors"
    missing = [p.name for p in (var_p, vae_p) if not p.exists()]
    if missing:
        raise EnvironmentUnavailable(f"the shipped {model} weights are missing ({', '.join(missing)} in {d}); "
                                     "reinstall varbench (the demo never runs on random weights)")
    return var_p, vae_p


def demo_plan(quick: bool = False) -> DemoPlan:
    """The demo's configs. Full: about 2 minutes on 2 idle cores (sensitivity 77 s, sweep 41 s); quick (CI,
    tests): ~18 s."""
    from varbench.quality.sensitivity import SensitivityConfig
    from varbench.measuring.sweep import SweepConfig
    from varbench.measuring.trace import TraceConfig

    shipped_weights()                   # missing: exit 3 here; present: every part's target resolves to them
    w = {"model": MODEL}
    if quick:
        sens = dict(depths=[2], scales=[SWITCH, 6], samples=2, batch=2)
        grid = dict(depths=[2, 12], batches=[1], repeats=1, min_seconds=0.0)
        trace_batch = 1
    else:
        # 16 samples: KL and token agreement are stable at this count; toy accuracy moves in steps of 6%, and the
        # toy FD is biased upwards (compare it with the reference row's real_fd, the floor at 16 images)
        sens = dict(depths=[2, 4, 6], scales="all", samples=16, batch=16)
        grid = dict(depths=list(DEPTHS), batches=[1, 8], repeats=3, min_seconds=0.0)
        trace_batch = 8
    sensitivity = [SensitivityConfig(**w, **sens, mode=m, metric="toy", seed=0, device="cpu", dtype="fp32")
                   for m in SENS_MODES]
    sweep = SweepConfig(**w, **grid, switches=[SWITCH], select="isometric", dtype="fp32", device="cpu", warmup=1,
                        allow_random=False, timeout_s=300.0, threads=THREADS)
    trace = TraceConfig(**w, depth=4, switch=SWITCH, batch=trace_batch, dtype="fp32", device="cpu",
                        overhead_repeats=0, allow_random=False)
    return DemoPlan(quick=quick, sensitivity=sensitivity, sweep=sweep, trace=trace)


def _check_out(out: Path, plan: DemoPlan, weights: str) -> None:
    """One directory holds one kind of demo: mixing quick and full rows would put two sample counts in one plot."""
    meta = {"model": MODEL, "weights": weights, "quick": plan.quick, "torch_threads": plan.threads}
    path = out / DEMO_FILE
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
    if isinstance(old, dict) and old.get("quick") is not None and old.get("quick") != plan.quick:
        kind = "quick" if old["quick"] else "full"
        raise UsageError(f"--out {out} holds a {kind} demo; use another --out (or delete it) to run the "
                         f"{'quick' if plan.quick else 'full'} demo")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_models(out_dir: Path, weights: str, depths: Sequence[int] = DEPTHS, switch: int = SWITCH
                 ) -> list[dict[str, Any]]:
    """The analytic subnet table of var-toy as ``models.jsonl`` (rewritten whole: it is cheap and deterministic)."""
    from model import spec as spec_mod
    from varbench.measuring import analytic

    spec = spec_mod.get(MODEL)
    rows = [{**r, "weights": weights} for r in analytic.summary_rows(spec, list(depths), switch)]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODELS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    for r in rows:
        results.append_row(tmp, r)
    os.replace(tmp, path)
    results.write_manifest(out_dir, {"kind": "models", "weights": weights, "model": MODEL,
                                     "config": {"depths": list(depths), "switch": switch, "select": "isometric"}})
    return rows


def _share_reference(src_dir: Path, dst_dir: Path) -> None:
    """Give the next mode the full network's cached samples: its meta check accepts them only if settings match."""
    from varbench.quality.sensitivity import REFERENCE_FILE

    src, dst = src_dir / REFERENCE_FILE, dst_dir / REFERENCE_FILE
    if src.exists() and not dst.exists():
        dst_dir.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def finished_trace(trace_dir: Path, cfg: Any, weights: str) -> dict[str, Any] | None:
    """The summary row of an earlier trace with the same settings, so a rerun (demo, suite) does not trace again."""
    from varbench.measuring.trace import read_trace

    if not (trace_dir / "trace.jsonl").exists():
        return None
    want = {"model": cfg.model, "weights": weights, "depth": cfg.depth, "switch": cfg.switch, "batch": cfg.batch,
            "dtype": cfg.dtype, "device": cfg.device, "select": cfg.select}
    _, summaries = read_trace(trace_dir)
    hits = [s for s in summaries if all(s.get(k) == v for k, v in want.items())]
    return hits[-1] if hits else None


def trace_scale_rows(trace_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """Per-scale rows of one trace run."""
    from varbench.measuring.trace import read_trace

    return [r for r in read_trace(trace_dir)[0] if r.get("run_id") == run_id]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count for the in-process parts (sensitivity, trace), restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_demo(out: str | os.PathLike = "results/demo", quick: bool = False, on_part: PartCallback | None = None,
             on_sweep_point: Callable[..., None] | bool = False, on_sensitivity: Callable[..., None] | None = None,
             kl_tolerance: float = KL_TOLERANCE) -> DemoResult:
    """Run every part into ``out`` (resuming what is there), build ``out/report.html``, return the summary.

    ``on_part(name, payload)`` is called as each part finishes (payload: its rows, or the trace summary);
    ``on_sweep_point`` and ``on_sensitivity`` are the sweep's and sensitivity's own progress callbacks.
    """
    from varbench.reporting.report import build_report
    from varbench.quality.sensitivity import run_sensitivity
    from varbench.measuring.sweep import run_sweep
    from varbench.measuring.trace import run_trace
    from varbench.target import resolve_weights

    t0 = time.perf_counter()
    plan = demo_plan(quick)
    weights = resolve_weights(plan.sweep.target()).label   # the label every part writes (one resolver, one hash)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_out(out_dir, plan, weights)
    dirs = {name: out_dir / name for name in ("models", *[f"sensitivity-{m}" for m in SENS_MODES], "sweep",
                                               "trace")}
    part_seconds: dict[str, float] = {}
    last = [time.perf_counter()]
    resumed: list[str] = []

    def done(name: str, payload: Any) -> Any:
        now = time.perf_counter()
        part_seconds[name], last[0] = now - last[0], now
        if on_part is not None:
            on_part(name, payload)
        return payload

    with torch_threads(plan.threads):
        models = done("models", write_models(dirs["models"], weights, plan.model_depths, plan.switch))
        sens: dict[str, list[dict[str, Any]]] = {}
        prev: Path | None = None
        for cfg in plan.sensitivity:
            d = dirs[f"sensitivity-{cfg.mode}"]
            if prev is not None:
                _share_reference(prev, d)       # the full network's samples are generated once
            log.info("demo: sensitivity %s into %s", cfg.mode, d)
            sens[cfg.mode] = done(f"sensitivity-{cfg.mode}", run_sensitivity(cfg, d, progress=on_sensitivity))
            prev = d
        log.info("demo: sweep into %s", dirs["sweep"])
        sweep_rows = done("sweep", run_sweep(plan.sweep, dirs["sweep"], progress=on_sweep_point))
        trace = finished_trace(dirs["trace"], plan.trace, weights)
        if trace is None:
            log.info("demo: trace into %s", dirs["trace"])
            trace = run_trace(plan.trace, dirs["trace"])
        else:
            resumed.append("trace")
        done("trace", trace)

    report = build_report([dirs[k] for k in dirs], out_dir / "report.html")
    part_seconds["report"] = time.perf_counter() - last[0]
    summary = pareto_summary(sweep_rows, [r for rows in sens.values() for r in rows], kl_tolerance)
    return DemoResult(out=out_dir, weights=weights, dirs=dirs, models=models, sensitivity=sens, sweep=sweep_rows,
                      trace=trace, report=report, summary=summary, seconds=time.perf_counter() - t0,
                      part_seconds=part_seconds, resumed=resumed)


# ------------------------------------------------------------------------------------------ Pareto summary

def demo_points(sweep_rows: Sequence[Mapping[str, Any]], sens_rows: Sequence[Mapping[str, Any]]
                ) -> list[dict[str, Any]]:
    """Successful sweep configs with per-image costs and their quality joined from the ``from`` matrix.

    Quality of VARiant(d, switch) is the ``from`` cell at scale = switch; the full network's KL to itself is 0 and
    its toy accuracy is the reference row. Memory is the KV cache's real bytes per image: on a CPU the process RSS
    is dominated by the interpreter and says nothing about the schedule.
    """
    from model import spec as spec_mod
    from varbench.reporting.figures import join_quality

    ok = [r for r in sweep_rows if r.get("status") == "ok"]
    kl, acc = join_quality(ok, sens_rows, "kl"), join_quality(ok, sens_rows, "toy_acc")
    pts = []
    for r, k, a in zip(ok, kl, acc):
        full = r.get("depth") == spec_mod.get(str(r.get("model"))).depth
        b = int(r.get("batch") or 1)
        kv, fl = r.get("kv_bytes"), r.get("flops")
        kl_ci = (0.0, 0.0) if full and k is None else _interval(sens_rows, r, "kl", full)
        pts.append({**r, "kl": 0.0 if full and k is None else k, "toy_acc": a, "full": full,
                    "kl_ci": kl_ci, "toy_acc_ci": _interval(sens_rows, r, "toy_acc", full),
                    "kv_mib_per_image": kv / b / MIB if kv is not None else None,
                    "gflop_per_image": fl / b / 1e9 if fl is not None else None})
    return pts


def _interval(sens_rows: Sequence[Mapping[str, Any]], point: Mapping[str, Any], metric: str, full: bool
              ) -> tuple[float, float] | None:
    """(ci_low, ci_high) of the sensitivity row ``join_quality`` reads for a sweep point (the ``from`` cell at
    scale = switch; the reference row for the full network); None for rows written before intervals."""
    for r in sens_rows:
        if r.get("metric") != metric or r.get("model") != point.get("model"):
            continue
        hit = (r.get("mode") == "reference" or r.get("depth") == point.get("depth")) if full else \
            (r.get("mode") == "from" and r.get("scale") == point.get("switch") and r.get("depth") == point.get("depth"))
        if hit and r.get("ci_low") is not None and r.get("ci_high") is not None:
            return float(r["ci_low"]), float(r["ci_high"])
    return None


def _ci(ci: tuple[float, float] | None, fmt: Callable[[float], str]) -> str:
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _cfg(p: Mapping[str, Any]) -> str:
    name = "full" if p.get("full") else f"d{p['depth']}"
    return f"{name} (switch {p['switch']}, batch {p['batch']})"


def _acc(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def pareto_summary(sweep_rows: Sequence[Mapping[str, Any]], sens_rows: Sequence[Mapping[str, Any]],
                   kl_tolerance: float = KL_TOLERANCE) -> list[str]:
    """Three lines: fastest config close to the full network, smallest KV cache close to it, best accuracy/FLOP.

    "Close" is the 95% upper end of KL(full || config) <= ``kl_tolerance`` nats (mean over scales, teacher-forced;
    the row's ``kl_kind``, guided by default): the most sample-efficient of the quality measures at the demo's
    sample count, and a claim the interval separates. Configs whose KL is below the tolerance but whose interval
    crosses it are named as not separable. The accuracy pick says whether its Wilson interval separates it from the
    full network's. Each pick is taken from a Pareto front (varbench.reporting.pareto) so a dominated config can
    never be named.
    """
    from varbench.reporting.pareto import pareto_front

    pts = demo_points(sweep_rows, sens_rows)
    samples = next((r.get("samples") for r in sens_rows if r.get("metric") == "toy_acc"), None)
    kl_hi = lambda p: p["kl_ci"][1] if p.get("kl_ci") else p["kl"]   # noqa: E731 - rows before intervals: value
    close = [p for p in pts if p.get("kl") is not None and kl_hi(p) <= kl_tolerance]
    unsure = [p for p in pts if p.get("kl") is not None and p["kl"] <= kl_tolerance < kl_hi(p)]
    full_by_batch = {p["batch"]: p for p in pts if p["full"]}
    full_acc = next((p.get("toy_acc") for p in full_by_batch.values()), None)
    full_acc_ci = next((p.get("toy_acc_ci") for p in full_by_batch.values()), None)
    quality = lambda p: (f"KL {p['kl']:.3f}{_ci(p.get('kl_ci'), lambda v: f'{v:.3f}')}, toy accuracy "  # noqa: E731
                         f"{_acc(p.get('toy_acc'))}{_ci(p.get('toy_acc_ci'), _acc)} (full {_acc(full_acc)}"
                         f"{_ci(full_acc_ci, _acc)})")
    lines = []

    front = pareto_front(close, minimize=["kl"], maximize=["images_per_s"])
    if front:
        p = max(front, key=lambda q: q["images_per_s"])
        f = full_by_batch.get(p["batch"])
        ratio = f" = {p['images_per_s'] / f['images_per_s']:.2f}x the full network" if f and not p["full"] else ""
        lines.append(f"fastest within KL {kl_tolerance:g} nats of full: {_cfg(p)}: {p['images_per_s']:.1f} img/s"
                     f"{ratio}; {quality(p)}")
    else:
        lines.append(f"fastest within KL {kl_tolerance:g} nats of full: no measured configuration qualifies")
    if unsure:                  # said on the same line: the summary stays three lines
        names = sorted({f"d{p['depth']} (KL {p['kl']:.3f}{_ci(p.get('kl_ci'), lambda v: f'{v:.3f}')})"
                        for p in unsure})
        lines[-1] += f"; not separable from the tolerance at this sample count: {', '.join(names)}"

    front = pareto_front(close, minimize=["kv_mib_per_image", "kl"])
    if front:
        p = min(front, key=lambda q: (q["kv_mib_per_image"], -(q.get("images_per_s") or 0.0)))
        f = next(iter(full_by_batch.values()), None)
        cut = (f" ({100 * (1 - p['kv_mib_per_image'] / f['kv_mib_per_image']):.0f}% less than full "
               f"{f['kv_mib_per_image']:.3f} MiB)" if f and f.get("kv_mib_per_image") and not p["full"] else "")
        lines.append(f"lowest memory within KL {kl_tolerance:g} nats of full: {_cfg(p)}: KV cache "
                     f"{p['kv_mib_per_image']:.3f} MiB/image{cut}; {quality(p)}")
    else:
        lines.append(f"lowest memory within KL {kl_tolerance:g} nats of full: no measured configuration qualifies")

    by_depth = {p["depth"]: p for p in sorted(pts, key=lambda q: q["batch"]) if p.get("toy_acc") is not None}
    front = pareto_front(list(by_depth.values()), minimize=["gflop_per_image"], maximize=["toy_acc"])
    front = [p for p in front if p["gflop_per_image"]]
    if front:
        p = max(front, key=lambda q: q["toy_acc"] / q["gflop_per_image"])
        f = next((q for q in by_depth.values() if q["full"]), None)
        vs = (f" (full: {_acc(f['toy_acc'])}{_ci(f.get('toy_acc_ci'), _acc)} at {f['gflop_per_image']:.2f})"
              if f and not p["full"] else "")
        n = f", {samples} samples" if samples else ""
        sep = ""
        if f and not p["full"] and p.get("toy_acc_ci") and f.get("toy_acc_ci"):
            a, b = p["toy_acc_ci"], f["toy_acc_ci"]
            sep = ("; separable from full" if a[1] < b[0] or b[1] < a[0] else
                   "; not separable from full at this sample count (95% intervals overlap)")
        lines.append(f"best quality per FLOP: d{p['depth']} (switch {p['switch']}): toy accuracy "
                     f"{_acc(p['toy_acc'])}{_ci(p.get('toy_acc_ci'), _acc)} at {p['gflop_per_image']:.2f} "
                     f"GFLOP/image{vs}{n}{sep}")
    else:
        lines.append("best quality per FLOP: no configuration has a toy accuracy")
    return lines

