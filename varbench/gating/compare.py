"""Two results sets side by side (``varbench compare A B``): per matching point, the ratio B/A of every metric,
with the gate's significance test on the raw latency samples and a pass/fail threshold per metric.

A side is a results folder (its rows) or a baseline JSON (``varbench check --update-baseline``). Two folders
match rows on their kind's key fields (``varbench.schema``); when either side is a baseline, both become the
gate's named metrics (``regress.metrics_from_rows``) and match by name. Which way is better comes from each
field's schema ``Field``; the verdict rule is the gate's: a time with raw samples on both sides regresses when it
is worse by more than the threshold AND the one-sided Mann-Whitney U test says so (``regress.speed_rule``);
anything else by the threshold alone. This module only reads; the CLI prints and writes the HTML.
"""
from __future__ import annotations

import html
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from varbench import schema
from varbench.errors import UsageError
from varbench.gating import regress
from varbench.results import atomic_write_text, finite_number

# the row field holding raw samples, and the fields those samples measure (the U test applies to these only)
SAMPLES_FIELD = "latency_ms_samples"
SAMPLED_FIELDS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_min")
TIME_UNITS = ("ms", "s", "img/s", "TFLOP/s")     # noisy figures: the speed factor is their default threshold
VERDICT_ORDER = {"regression": 0, "improved": 1, "missing": 2, "new": 3, "ok": 4}


@dataclass
class Side:
    """One side of a comparison: where it came from, its rows (a folder) or metrics (a baseline)."""

    path: str
    source: str                              # "results" | "baseline"
    device_class: str
    git_commit: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, regress.Metric] = field(default_factory=dict)


@dataclass
class Delta:
    """One metric of one matched point. ``ratio`` = b / a; ``p``: the U test's one-sided p-value (None: not
    tested); ``threshold``: how much worse (as a factor in the bad direction) counts as a regression."""

    point: str
    metric: str
    unit: str | None
    better: str | None
    a: float | None
    b: float | None
    ratio: float | None
    p: float | None
    n_a: int
    n_b: int
    threshold: float
    verdict: str                             # ok | regression | improved | missing | new
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == "regression"


@dataclass
class Comparison:
    a: Side
    b: Side
    deltas: list[Delta]
    fail_on: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Delta]:
        """Regressions of the metrics named by ``fail_on`` (the exit-1 condition)."""
        return [d for d in self.deltas if d.failed and d.metric in self.fail_on]

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for d in self.deltas:
            counts[d.verdict] = counts.get(d.verdict, 0) + 1
        side = lambda s: {"path": s.path, "source": s.source, "device_class": s.device_class,  # noqa: E731
                          "git_commit": s.git_commit}
        return {"a": side(self.a), "b": side(self.b), "counts": counts, "fail_on": self.fail_on,
                "failed": [f"{d.point}/{d.metric}" for d in self.failures], "notes": self.notes,
                "deltas": [asdict(d) for d in self.deltas]}


# ----------------------------------------------------------------------------- loading

def load_side(path: str | os.PathLike) -> Side:
    """A results folder (rows of every *.jsonl, read as the report does) or a baseline JSON file."""
    p = Path(path)
    if p.is_file():
        data = regress.load_baseline(p)
        metrics = {m["name"]: regress.Metric(**m) for m in data["metrics"]}
        return Side(str(p), "baseline", str(data.get("device_class", "unknown")),
                    (data.get("manifest") or {}).get("git_commit"), metrics=metrics)
    if not p.is_dir():
        raise UsageError(f"{p} is neither a results folder nor a baseline JSON file")
    from varbench.reporting.report import load_results      # no plotly at import: the loader only

    manifests, rows = load_results([p])
    if not rows:
        raise UsageError(f"{p}: no result rows (*.jsonl) to compare")
    man = manifests[0] if manifests else None
    return Side(str(p), "results", regress.device_class(man, rows), (man or {}).get("git_commit"), rows=rows)


# ----------------------------------------------------------------------------- matching

def normal_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep row written before methods existed gets its canonical variant method, so it matches a newer row
    of the same point (the worker does the same when it reads such a point)."""
    out = dict(r)
    if out.get("kind", "sweep") == "sweep" and not out.get("method") and out.get("depth") is not None:
        try:
            from model import methods, spec as spec_mod

            s = spec_mod.get(str(out.get("model")))
            out["method"] = methods.variant(s, int(out["depth"]), int(out.get("switch") or s.num_scales),
                                            str(out.get("select") or "isometric")).canonical()
        except Exception:  # noqa: BLE001 - an unknown model or odd row keeps its key as written
            pass
    return out


def _usable(r: Mapping[str, Any], kind: schema.RowKind) -> bool:
    return not kind.done_statuses or r.get("status", "ok") == "ok"


def _kinds(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        k = str(r.get("kind", "sweep"))
        rk = schema.ROW_KINDS.get(k)
        if rk is not None and rk.key_fields and _usable(r, rk):
            row = normal_row(r)
            if "run_id" in rk.key_fields:       # a trace run's start time: two runs of one point never share it
                row["run_id"] = None
            out.setdefault(k, []).append(row)
    return out


def point_labels(kind: schema.RowKind, keys: Sequence[tuple]) -> dict[tuple, str]:
    """A short name per point: the model and the key fields whose values differ between the points."""
    idx = {f: i for i, f in enumerate(kind.key_fields)}
    vary = [f for f in kind.key_fields if f != "model" and len({k[idx[f]] for k in keys}) > 1]
    unique = lambda fs: len({tuple(k[idx[f]] for f in fs) for k in keys}) == len(keys)   # noqa: E731
    for f in reversed(list(vary)):         # drop what the others already tell (a method named by its depth)
        if unique([g for g in vary if g != f]):
            vary.remove(f)
    out = {}
    for k in keys:
        parts = [str(k[idx["model"]])] if "model" in idx else []
        parts += [f"{f}={_short(k[idx[f]])}" for f in vary]
        out[k] = (kind.name + ":" if kind.name != "sweep" else "") + " ".join(parts)
    if len(set(out.values())) < len(out):                   # still ambiguous: the full key
        out = {k: f"{kind.name}:{k}" for k in keys}
    return out


def _short(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(_short(x) for x in v)
    return str(v)


def _row_metrics(kind: schema.RowKind, r: Mapping[str, Any]) -> dict[str, tuple[float, list[float] | None]]:
    """(value, raw samples or None) of every directed numeric field of a row; a sensitivity row's ``value`` is
    named by its quality metric."""
    out: dict[str, tuple[float, list[float] | None]] = {}
    samples = [float(s) for s in (r.get(SAMPLES_FIELD) or []) if finite_number(s) is not None] or None
    if kind.name == "sensitivity":
        v = finite_number(r.get("value"))
        if v is not None:
            out[str(r.get("metric"))] = (v, None)
        return out
    for f in kind.fields:
        if f.direction is None or f.name == SAMPLES_FIELD:
            continue
        v = finite_number(r.get(f.name))
        if v is not None:
            out[f.name] = (v, samples if f.name in SAMPLED_FIELDS else None)
    return out


def _decl(metric: str, kind: str | None) -> schema.Field | None:
    if kind == "sensitivity" or kind is None:
        return schema.METRICS.get(metric) or schema.field_of(metric)
    return schema.field_of(metric, kind) or schema.field_of(metric)


# ----------------------------------------------------------------------------- judging

def parse_fail_on(items: Iterable[str]) -> dict[str, float]:
    """``["latency_ms_p50:1.05", ...]`` -> {field: factor}; the metric must be a field with a direction in the
    schema (or a quality metric), the factor >= 1 (how much worse is allowed)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, thr = str(item).rpartition(":")
        if not sep or not name:
            raise UsageError(f"--fail-on: {item!r} is not METRIC:THRESHOLD (e.g. latency_ms_p50:1.05)")
        try:
            t = float(thr)
        except ValueError:
            raise UsageError(f"--fail-on: threshold {thr!r} of {name} is not a number") from None
        if not math.isfinite(t) or t < 1:
            raise UsageError(f"--fail-on: threshold of {name} must be a factor >= 1 (1.05 = 5% worse), got {thr}")
        decl = schema.METRICS.get(name) or schema.field_of(name)
        if decl is None or decl.direction is None:
            known = sorted({f.name for k in schema.ROW_KINDS.values() for f in k.fields if f.direction}
                           | set(schema.METRICS))
            raise UsageError(f"--fail-on: {name!r} is not a metric with a better direction in the schema "
                             f"(known: {', '.join(known)})")
        out[name] = t
    return out


def judge(point: str, metric: str, decl: schema.Field | None, a: tuple[float, list[float] | None] | None,
          b: tuple[float, list[float] | None] | None, threshold: float,
          tol: regress.Tolerances) -> Delta:
    """One metric of one point: ratio b/a, the U test on raw samples where both sides have them, a verdict."""
    unit = decl.unit if decl else None
    better = decl.direction if decl else None
    av, as_ = a if a is not None else (None, None)
    bv, bs = b if b is not None else (None, None)
    d = Delta(point, metric, unit, better, av, bv, None, None, len(as_ or []), len(bs or []), threshold, "ok")
    if av is None or bv is None:
        d.verdict = "missing" if bv is None else "new"
        d.detail = "only in A" if bv is None else "only in B"
        return d
    d.ratio = bv / av if av != 0 else (1.0 if bv == 0 else math.inf)
    if better is None:
        d.detail = "no better direction in the schema"
        return d
    if better == "lower" and as_ and bs and metric in SAMPLED_FIELDS:
        t = regress.Tolerances(speed_factor=threshold, alpha=tol.alpha, min_samples=tol.min_samples)
        d.verdict, d.detail, tested = regress.speed_rule(av, bv, as_, bs, t)
        if tested is not None:              # shown: the one-sided test in the direction of the change
            d.p = (regress.mann_whitney_greater(bs, as_) if d.ratio > 1 else regress.mann_whitney_greater(as_, bs))
            d.detail = (f"x{d.ratio:.4g}, U test {'slower' if d.ratio > 1 else 'faster'} p={d.p:.2g} "
                        f"(alpha {tol.alpha:g}, threshold {threshold:g}, n {d.n_a}/{d.n_b})")
        return d
    worse = d.ratio if better == "lower" else (av / bv if bv != 0 else (1.0 if av == 0 else math.inf))
    if worse > threshold:
        d.verdict = "regression"
    elif worse < 1 / threshold:
        d.verdict = "improved"
    d.detail = f"x{d.ratio:.4g} (threshold {threshold:g}, no raw samples: factor rule only)"
    return d


def _default_threshold(decl: schema.Field | None, tol: regress.Tolerances) -> float:
    if decl is not None and decl.unit in TIME_UNITS:
        return tol.speed_factor
    return 1 + tol.memory_tolerance


def compare_sides(a: Side, b: Side, fail_on: Mapping[str, float] | None = None,
                  tol: regress.Tolerances | None = None, metrics: Sequence[str] | None = None) -> Comparison:
    """Every metric of every point in A or B. ``fail_on`` sets a metric's threshold (and makes its regression
    the exit-1 condition); other metrics get the gate's defaults (speed factor for times and throughputs, memory
    tolerance otherwise). ``metrics``: only these metric names (None: all)."""
    tol = tol or regress.Tolerances()
    fail_on = dict(fail_on or {})
    notes: list[str] = []
    if a.device_class != b.device_class:
        notes.append(f"device classes differ: A {a.device_class}, B {b.device_class}")
    want = set(metrics) if metrics else None
    deltas: list[Delta] = []

    def add(point: str, name: str, decl: schema.Field | None, av: Any, bv: Any) -> None:
        if want is not None and name not in want:
            return
        thr = fail_on.get(name, _default_threshold(decl, tol))
        deltas.append(judge(point, name, decl, av, bv, thr, tol))

    if a.source == "results" and b.source == "results":
        ka, kb = _kinds(a.rows), _kinds(b.rows)
        for kind_name in sorted(set(ka) | set(kb)):
            kind = schema.ROW_KINDS[kind_name]
            ra = {schema.key_of(r, kind): r for r in ka.get(kind_name, [])}      # the latest row of a key wins
            rb = {schema.key_of(r, kind): r for r in kb.get(kind_name, [])}
            keys = list(dict.fromkeys([*ra, *rb]))
            labels = point_labels(kind, keys)
            for k in keys:
                ma = _row_metrics(kind, ra[k]) if k in ra else {}
                mb = _row_metrics(kind, rb[k]) if k in rb else {}
                if k not in ra or k not in rb:      # an unmatched point: one line, not one per metric
                    deltas.append(Delta(labels[k], "(point)", None, None, None, None, None, None, 0, 0, 1.0,
                                        "missing" if k not in rb else "new",
                                        "point only in A" if k not in rb else "point only in B"))
                    continue
                for name in dict.fromkeys([*ma, *mb]):
                    add(labels[k], name, _decl(name, kind_name), ma.get(name), mb.get(name))
    else:
        ma = a.metrics if a.source == "baseline" else regress.metrics_from_rows(a.rows, tol)
        mb = b.metrics if b.source == "baseline" else regress.metrics_from_rows(b.rows, tol)
        for name in dict.fromkeys([*ma, *mb]):
            m = ma.get(name) or mb.get(name)
            point, _, fld = name.rpartition("/")
            fld = m.field or fld
            decl = schema.Field(fld, m.unit, m.better if m.better in ("higher", "lower") else None)
            val = lambda x: None if x is None else (x.value, x.samples)   # noqa: E731
            add(point, fld, decl, val(ma.get(name)), val(mb.get(name)))
    for name in fail_on:
        if not any(d.metric == name and d.ratio is not None for d in deltas):
            raise UsageError(f"--fail-on {name}: no point measured in both A and B has this metric")
    deltas.sort(key=lambda d: (VERDICT_ORDER.get(d.verdict, 9), d.point, d.metric))
    return Comparison(a, b, deltas, fail_on, notes)


# ----------------------------------------------------------------------------- HTML

STYLE = {"regression": "#b00020", "improved": "#00796b", "missing": "#8a6d00", "new": "#1a4fa0", "ok": "#333"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.2em} th,td{border:1px solid #ccc;padding:3px 6px;
text-align:left} th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-style:italic}
"""


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def html_diff(c: Comparison) -> str:
    """The comparison as one self-contained HTML page (no scripts, no network); every string escaped."""
    e = html.escape
    sides = "".join(f"<tr><th>{e(n)}</th><td>{e(s.path)}</td><td>{e(s.source)}</td><td>{e(s.device_class)}</td>"
                    f"<td>{e(str(s.git_commit or '—'))}</td></tr>" for n, s in (("A", c.a), ("B", c.b)))
    rows = []
    for d in c.deltas:
        color = STYLE.get(d.verdict, "#333")
        ratio = "—" if d.ratio is None else f"{d.ratio:.4f}"
        p = "—" if d.p is None else f"{d.p:.2g}"
        rows.append(f"<tr><td>{e(d.point)}</td><td>{e(d.metric)}</td><td>{e(d.unit or '')}</td>"
                    f"<td class=\"num\">{e(_num(d.a))}</td><td class=\"num\">{e(_num(d.b))}</td>"
                    f"<td class=\"num\">{e(ratio)}</td><td class=\"num\">{e(p)}</td>"
                    f"<td style=\"color:{color};font-weight:600\">{e(d.verdict)}</td><td>{e(d.detail)}</td></tr>")
    notes = "".join(f"<p class=\"note\">{e(n)}</p>" for n in c.notes)
    fails = (f"<p style=\"color:#b00020;font-weight:600\">{len(c.failures)} regression(s) past --fail-on "
             f"thresholds: {e(', '.join(f'{d.point}/{d.metric}' for d in c.failures))}</p>" if c.failures else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>varbench compare</title>"
            f"<style>{CSS}</style></head><body><h1>varbench compare</h1>"
            f"<table><tr><th></th><th>path</th><th>source</th><th>device class</th><th>git commit</th></tr>"
            f"{sides}</table>{notes}{fails}"
            "<p class=\"note\">ratio = B / A; p: one-sided Mann-Whitney U test on the raw samples (where both "
            "sides have them); verdicts use each metric's better direction from the schema.</p>"
            "<table><tr><th>point</th><th>metric</th><th>unit</th><th>A</th><th>B</th><th>B/A</th><th>p</th>"
            f"<th>verdict</th><th>detail</th></tr>{''.join(rows)}</table></body></html>\n")


def write_html(c: Comparison, path: str | os.PathLike) -> Path:
    p = Path(path)
    atomic_write_text(p, html_diff(c))
    return p
