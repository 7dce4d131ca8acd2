"""Compare a results set with a committed baseline -> per-metric verdicts and one pass/fail (the CI gate).

Rules (DESIGN "check"): memory-like metrics get a relative tolerance (analytic values must be exact); speed is
judged by ratios measured within one run, and absolute times by the asv rule — slower by more than ``factor``
AND a one-sided Mann–Whitney U test on the raw samples with p < ``alpha``; quality gets a tolerance.
A baseline records its device class; comparing across classes is a usage error unless forced.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from varbench import schema
from varbench.errors import UsageError
from varbench.results import finite_number

log = logging.getLogger(__name__)

BASELINE_FORMAT = "varbench-baseline/1"

# metric families: how each row field is judged (its unit and which way is better come from varbench.schema)
ANALYTIC_FIELDS = ("kv_bytes_analytic", "params", "flops", "kv_bytes_kept")
MEMORY_FIELDS = ("kv_bytes", "peak_allocated_bytes")
SPEED_FIELDS = ("latency_ms_p50",)
MODELS_FIELDS = ("params", "kv_bytes", "kv_bytes_kept", "flops")
TRACE_FIELDS = (("kv_bytes_analytic", "analytic"), ("kv_bytes_cache", "memory"), ("peak_allocated_bytes", "memory"))
RATIO_METRIC = "latency_ratio"


@dataclass
class Tolerances:
    """Thresholds of the gate, named as in a suite's [check] table (``varbench.workflows.suites`` maps it here).

    ``tolerance`` maps a field name (e.g. "peak_allocated_bytes") to a relative tolerance that overrides its family's.
    """

    memory_tolerance: float = 0.01
    analytic_tolerance: float = 0.0
    tolerance: dict[str, float] = field(default_factory=dict)
    speed_factor: float = 1.1
    alpha: float = 0.05
    min_samples: int = 5
    check_speed: bool = True
    ratio_tolerance: float = 0.1
    ratios: list[tuple[str, str]] = field(default_factory=lambda: [("full", "d2")])
    quality_tolerance: float = 0.01
    quality_abs: float = 1e-6


@dataclass
class Metric:
    """One comparable number; ``samples`` are raw latencies for the asv rule."""

    name: str
    family: str            # analytic | memory | speed | ratio | quality
    unit: str
    value: float
    better: str = "lower"  # lower | higher
    field: str = ""
    samples: list[float] | None = None


@dataclass
class Verdict:
    metric: str
    family: str
    unit: str
    baseline: float | None
    now: float | None
    change: float | None   # relative change (now - baseline) / |baseline|
    verdict: str           # ok | regression | improved | changed | missing | new
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("regression", "changed", "missing")


@dataclass
class CheckResult:
    verdicts: list[Verdict]
    device_class_baseline: str
    device_class_now: str

    @property
    def passed(self) -> bool:
        return not any(v.failed for v in self.verdicts)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for v in self.verdicts:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
        return {"passed": self.passed, "counts": counts, "device_class_baseline": self.device_class_baseline,
                "device_class_now": self.device_class_now, "verdicts": [asdict(v) for v in self.verdicts]}


# ----------------------------------------------------------------------------- metrics from rows


def _full_depth(model: str, depths: Iterable[int]) -> int:
    try:
        from model import spec as spec_mod
        return spec_mod.get(model).depth
    except Exception:  # noqa: BLE001 - unknown model: the deepest measured point stands for "full"
        return max(depths)


def _field_metric(name: str, family: str, f: str, value: float, samples: list[float] | None = None) -> Metric:
    """A metric of row field ``f``; every field the gate judges declares a unit and a direction in the schema."""
    decl = schema.field_of(f)
    if decl is None or decl.unit is None or decl.direction is None:
        raise KeyError(f"gate field {f!r} has no unit and direction in varbench.schema")
    return Metric(name, family, decl.unit, value, better=decl.direction, field=f, samples=samples)


def _point_name(r: Mapping[str, Any]) -> str:
    """A point's metric-name prefix; a configuration other than a plain variant adds its canonical method."""
    name = (f"{r.get('model')}/d{r.get('depth')}/s{r.get('switch')}/b{r.get('batch')}/{r.get('dtype')}"
            f"/{r.get('select', 'isometric')}")
    method = r.get("method")
    return name if not method or method.startswith("variant:") and "+" not in method else f"{name}/{method}"


def metrics_from_rows(rows: Iterable[Mapping[str, Any]], tol: Tolerances | None = None) -> dict[str, Metric]:
    """Every gate metric a results set provides, keyed by a stable name."""
    tol = tol or Tolerances()
    out: dict[str, Metric] = {}

    def put(m: Metric) -> None:
        out[m.name] = m

    sweep = [r for r in rows if r.get("kind", "sweep") == "sweep" and r.get("status", "ok") == "ok"]
    for r in sweep:
        base = _point_name(r)
        for f in ANALYTIC_FIELDS + MEMORY_FIELDS:
            v = finite_number(r.get(f))
            if v is not None:
                put(_field_metric(f"{base}/{f}", "analytic" if f in ANALYTIC_FIELDS else "memory", f, v))
        if tol.check_speed:
            for f in SPEED_FIELDS:
                v = finite_number(r.get(f))
                if v is not None:
                    samples = [float(s) for s in (r.get("latency_ms_samples") or []) if finite_number(s) is not None]
                    put(_field_metric(f"{base}/{f}", "speed", f, v, samples=samples or None))
    # ratios measured within the same run: latency(a) / latency(b), e.g. full/d2 = the d2 speedup
    groups: dict[tuple, dict[int, float]] = {}
    for r in sweep:
        v = finite_number(r.get("latency_ms_p50"))
        if v is not None and r.get("depth") is not None:
            key = (r.get("model"), r.get("switch"), r.get("batch"), r.get("dtype"), r.get("select", "isometric"))
            groups.setdefault(key, {})[int(r["depth"])] = v
    for (model, switch, batch, dtype, select), lat in groups.items():
        full = _full_depth(str(model), lat)
        for a, b in tol.ratios:
            da, db = (full if t == "full" else _parse_depth_token(t) for t in (a, b))
            if da in lat and db in lat and lat[db] > 0:
                put(_field_metric(f"{model}/s{switch}/b{batch}/{dtype}/{select}/latency_{a}_over_{b}", "ratio",
                                  RATIO_METRIC, lat[da] / lat[db]))
    for r in rows:
        kind = r.get("kind")
        if kind == "models":
            base = f"{r.get('model')}/d{r.get('depth')}/s{r.get('switch')}"
            for f in MODELS_FIELDS:
                v = finite_number(r.get(f))
                if v is not None:
                    put(_field_metric(f"models/{base}/{f}", "analytic", f, v))
        elif kind == "trace_scale":
            base = (f"{r.get('model')}/trace/d{r.get('depth')}/s{r.get('switch')}/b{r.get('batch')}/"
                    f"{r.get('dtype')}/scale{r.get('scale')}")
            for f, fam in TRACE_FIELDS:
                v = finite_number(r.get(f))
                if v is not None:
                    put(_field_metric(f"{base}/{f}", fam, f, v))
        elif kind == "sensitivity":
            metric = str(r.get("metric"))
            v = finite_number(r.get("value"))
            if v is None:
                continue
            where = r.get("group") if r.get("mode") == "groups" else r.get("scale")
            decl = schema.METRICS.get(metric)            # a metric the schema does not know: unitless, lower better
            put(Metric(f"{r.get('model')}/{r.get('mode')}/{where}/d{r.get('depth')}/{metric}", "quality",
                       decl.unit if decl else "1", v, better=decl.direction if decl else "lower", field=metric))
    return out


def _parse_depth_token(t: str) -> int:
    t = t.strip().lower()
    if t.startswith("d") and t[1:].isdigit():
        return int(t[1:])
    if t.isdigit():
        return int(t)
    raise UsageError(f"ratio term {t!r} is not 'full' or 'dN' (e.g. d2)")


# ----------------------------------------------------------------------------- statistics

def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value that x is stochastically greater than y: ``scipy.stats.mannwhitneyu`` (a runtime
    dependency), method "auto": the exact distribution for small samples without ties (the gate's five-sample
    minimum), the tie-corrected normal approximation with continuity correction otherwise."""
    from scipy.stats import mannwhitneyu

    if len(x) == 0 or len(y) == 0:
        return 1.0
    return float(mannwhitneyu([float(v) for v in x], [float(v) for v in y], alternative="greater",
                              method="auto").pvalue)


# ----------------------------------------------------------------------------- comparison

def _rel(now: float, base: float) -> float | None:
    if base == 0:
        return 0.0 if now == 0 else None
    return (now - base) / abs(base)


def _judge(b: Metric, n: Metric, tol: Tolerances) -> Verdict:
    change = _rel(n.value, b.value)
    v = Verdict(b.name, b.family, b.unit, b.value, n.value, change, "ok")
    worse = (n.value - b.value) if b.better == "lower" else (b.value - n.value)  # > 0 means worse
    scale = abs(b.value) if b.value else 1.0
    if b.family == "analytic":
        rt = tol.tolerance.get(b.field, tol.analytic_tolerance)
        if abs(n.value - b.value) > rt * scale:
            v.verdict, v.detail = "changed", f"analytic value must match (tol {rt:g})"
    elif b.family in ("memory", "ratio", "quality"):
        if b.family == "memory":
            rt, at = tol.tolerance.get(b.field, tol.memory_tolerance), 0.0
        elif b.family == "ratio":
            rt, at = tol.tolerance.get(b.field, tol.ratio_tolerance), 0.0
        else:
            rt, at = tol.tolerance.get(b.field, tol.quality_tolerance), tol.quality_abs
        limit = rt * scale + at
        if worse > limit:
            v.verdict = "regression"
        elif -worse > limit:
            v.verdict = "improved"
        v.detail = f"tol {rt:g}" + (f" + {at:g}" if at else "")
    elif b.family == "speed":
        v.verdict, v.detail, _ = speed_rule(b.value, n.value, b.samples, n.samples, tol)
    return v


def speed_rule(base: float, now: float, base_samples: Sequence[float] | None, now_samples: Sequence[float] | None,
               tol: Tolerances) -> tuple[str, str, float | None]:
    """The asv rule for a lower-is-better time: (verdict "regression" | "improved" | "ok", detail, p or None).

    Slower (faster) by more than ``tol.speed_factor`` AND, when both sides have ``tol.min_samples`` raw samples,
    a one-sided U test in that direction with p < ``tol.alpha``; with fewer samples the factor rule alone. Shared
    by ``compare`` (the gate) and ``varbench.gating.compare`` (two results sets)."""
    factor = now / base if base > 0 else math.inf
    slower = factor > tol.speed_factor
    faster = factor < 1 / tol.speed_factor
    bs, ns = base_samples or [], now_samples or []
    p: float | None = None
    if len(bs) >= tol.min_samples and len(ns) >= tol.min_samples:
        p = mann_whitney_greater(ns, bs) if slower else mann_whitney_greater(bs, ns)
        detail = f"x{factor:.3f}, p={p:.2g} (alpha {tol.alpha:g}, factor {tol.speed_factor:g})"
        significant = p < tol.alpha
    else:
        detail = f"x{factor:.3f}, too few samples for the U test; factor rule only"
        significant = True
    verdict = "regression" if slower and significant else "improved" if faster and significant else "ok"
    return verdict, detail, p


def compare(baseline: Mapping[str, Any], now_metrics: Mapping[str, Metric], device_class_now: str,
            tol: Tolerances | None = None, force: bool = False) -> CheckResult:
    """Judge every baseline metric against the current ones; metrics only in ``now`` are reported as new."""
    tol = tol or Tolerances()
    base_class = str(baseline.get("device_class", "unknown"))
    if base_class != device_class_now and not force:
        raise UsageError(f"baseline was measured on {base_class!r} but this run is on {device_class_now!r}; "
                         f"use a baseline for this device class or pass --force")
    base_metrics = {m["name"]: Metric(**m) for m in baseline.get("metrics", [])}
    verdicts: list[Verdict] = []
    for name, b in base_metrics.items():
        n = now_metrics.get(name)
        if n is None:
            if b.family == "speed" and not tol.check_speed:
                continue
            verdicts.append(Verdict(name, b.family, b.unit, b.value, None, None, "missing",
                                    "in the baseline, not measured now (failed point or changed grid?)"))
        else:
            verdicts.append(_judge(b, n, tol))
    for name, n in now_metrics.items():
        if name not in base_metrics:
            verdicts.append(Verdict(name, n.family, n.unit, None, n.value, None, "new", "not in the baseline"))
    return CheckResult(verdicts, base_class, device_class_now)


# ----------------------------------------------------------------------------- baselines and device class

def device_class(manifest: Mapping[str, Any] | None, rows: Iterable[Mapping[str, Any]] = ()) -> str:
    """'cpu' or 'cuda:<GPU name>': timings and allocator numbers are only comparable within one class."""
    devices = {str(r.get("device")) for r in rows if r.get("device")}
    if any(d.startswith("cuda") for d in devices):
        gpu = (manifest or {}).get("gpu_name") or "unknown-gpu"
        return f"cuda:{gpu}"
    return "cpu"


def make_baseline(metrics: Mapping[str, Metric], device_cls: str, manifest: Mapping[str, Any] | None = None,
                  suite: str | None = None) -> dict[str, Any]:
    """The committed form: device class, the environment it was measured in, every metric (with raw samples)."""
    env = {k: v for k, v in (manifest or {}).items() if not k.startswith("_")}
    return {"format": BASELINE_FORMAT, "device_class": device_cls, "suite": suite, "manifest": env,
            "metrics": [asdict(m) for m in metrics.values()]}


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline file, validated enough that a wrong file is a one-line UsageError."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"baseline {p} does not exist (create it with --update-baseline)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"baseline {p} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT or not isinstance(data.get("metrics"), list):
        raise UsageError(f"baseline {p} is not a {BASELINE_FORMAT} file")
    try:
        for m in data["metrics"]:
            Metric(**m)
    except TypeError as e:
        raise UsageError(f"baseline {p}: bad metric entry ({e})") from None
    return data


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Temp file + rename, so an interrupted write never leaves half a baseline."""
    import os
    import tempfile
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=False, allow_nan=False, default=str)
            f.write("\n")
        os.chmod(tmp, 0o644)                  # mkstemp makes 0600; baselines are committed and shared
        os.replace(tmp, p)
    except BaseException:                     # a full disk or Ctrl-C leaves no temp file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def benchmark_action_json(metrics: Mapping[str, Metric]) -> list[dict[str, Any]]:
    """github-action-benchmark "customSmallerIsBetter" entries: only metrics where smaller is better."""
    return [{"name": m.name, "unit": m.unit, "value": m.value} for m in metrics.values() if m.better == "lower"]
