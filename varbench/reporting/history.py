"""The history view of a report: each sweep metric of each point over the commits its results were measured at.

Given several results folders of one suite (each folder's manifest records ``git_commit`` and ``start_time``),
commits are ordered by when their first folder started (a commit id has no order of its own); every point (the
schema's key fields, older rows normalised as ``varbench compare`` does) becomes one line per metric. Only
metrics that change across commits get a figure: a constant (FLOPs, analytic KV) has no history to show. The
series are plain data (``history_series``, testable without plotly); ``history_figures`` draws them.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from varbench import schema
from varbench.results import finite_number

# shown first when present; every other directed scalar sweep field follows in schema order
HEADLINE = ("latency_ms_p50", "images_per_s", "latency_incl_decode_ms_p50", "peak_allocated_bytes",
            "nvml_peak_used_bytes", "rss_peak_bytes", "kv_bytes")
SAMPLED = {"latency_ms_p50": "latency_ms_samples"}     # error bars: the samples' interquartile range


@dataclass
class Series:
    """One point's values of one metric, one entry per measurement, in commit order."""

    point: str
    commits: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    low: list[float | None] = field(default_factory=list)      # 25th percentile of the raw samples
    high: list[float | None] = field(default_factory=list)     # 75th percentile
    sources: list[str] = field(default_factory=list)


def commit_order(manifests: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short commit labels in the order their first results folder started; manifests without a commit are
    "unknown"."""
    seen: dict[str, str] = {}
    for m in sorted(manifests, key=lambda m: str(m.get("start_time") or "")):
        label = _label(m)
        seen.setdefault(label, str(m.get("start_time") or ""))
    return list(seen)


def _label(m: Mapping[str, Any]) -> str:
    c = m.get("git_commit")
    return str(c)[:10] if c else "unknown"


def _quartiles(samples: Any) -> tuple[float | None, float | None]:
    vals = sorted(v for v in (finite_number(s) for s in (samples or [])) if v is not None)
    if len(vals) < 4:
        return None, None
    import numpy as np

    lo, hi = np.percentile(vals, [25, 75])
    return float(lo), float(hi)


def history_series(manifests: Sequence[Mapping[str, Any]],
                   rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Series]]:
    """{metric: [Series per point]} for the sweep metrics that differ between commits; {} when the folders span
    fewer than two commits. ``rows`` carry ``_source`` (their folder's index in ``manifests``), as
    ``report.load_results`` gives them."""
    from varbench.gating.compare import normal_row, point_labels

    order = commit_order(manifests)
    if len([c for c in order if c != "unknown"]) < 2:
        return {}
    rank = {c: i for i, c in enumerate(order)}
    ok = [normal_row(r) for r in rows if r.get("kind", "sweep") == "sweep" and r.get("status", "ok") == "ok"]
    keyed = [(schema.key_of(r, schema.SWEEP), r) for r in ok]
    labels = point_labels(schema.SWEEP, list(dict.fromkeys(k for k, _ in keyed)))
    fields = [f.name for f in schema.SWEEP.fields if f.direction is not None and f.name not in SAMPLED.values()]
    fields = [f for f in HEADLINE if f in fields] + [f for f in fields if f not in HEADLINE]
    out: dict[str, list[Series]] = {}
    for f in fields:
        per_point: dict[str, list[tuple[int, float, float | None, float | None, str, str]]] = {}
        for k, r in keyed:
            v = finite_number(r.get(f))
            src = r.get("_source")
            if v is None or not isinstance(src, int) or not 0 <= src < len(manifests):
                continue
            commit = _label(manifests[src])
            lo, hi = _quartiles(r.get(SAMPLED[f])) if f in SAMPLED else (None, None)
            per_point.setdefault(labels[k], []).append((rank[commit], v, lo, hi, commit,
                                                        str(manifests[src].get("_dir", ""))))
        series = []
        for point, items in per_point.items():
            items.sort(key=lambda t: t[0])
            if len({t[0] for t in items}) < 2 or len({t[1] for t in items}) < 2:
                continue                     # measured at one commit only, or never changed
            series.append(Series(point, [t[4] for t in items], [t[1] for t in items], [t[2] for t in items],
                                 [t[3] for t in items], [t[5] for t in items]))
        if series:
            out[f] = series
    return out


def history_figures(manifests: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """(title, plotly figure) per metric of ``history_series``: x = commit (ordered), one line per point; the
    latency's error bars are the interquartile range of its raw samples."""
    data = history_series(manifests, rows)
    if not data:
        return []
    import plotly.graph_objects as go

    esc = lambda v: html.escape(str(v), quote=True)   # noqa: E731 - plotly renders HTML in names and hovers
    order = [esc(c) for c in commit_order(manifests)]
    figs = []
    for f, series in data.items():
        u = schema.unit(f, "sweep") or ""
        better = schema.direction(f, "sweep")
        fig = go.Figure()
        for s in series:
            bars = None
            if any(v is not None for v in s.low):
                bars = dict(type="data", symmetric=False,
                            array=[(h - v) if h is not None else 0 for v, h in zip(s.values, s.high)],
                            arrayminus=[(v - lo) if lo is not None else 0 for v, lo in zip(s.values, s.low)])
            fig.add_trace(go.Scatter(x=[esc(c) for c in s.commits], y=s.values, mode="lines+markers",
                                     name=esc(s.point), error_y=bars, text=[esc(d) for d in s.sources],
                                     hovertemplate="%{x}<br>%{y:.4g} " + esc(u) + "<br>%{text}<extra>"
                                                   + esc(s.point) + "</extra>"))
        title = f"{f} over commits ({better} is better)" if better else f"{f} over commits"
        fig.update_layout(template="plotly_white", height=420, title=esc(title),
                          xaxis=dict(title="commit (ordered by the run's start time)", type="category",
                                     categoryorder="array", categoryarray=order),
                          yaxis=dict(title=esc(f"{f} ({u})" if u else f)))
        figs.append((title, fig))
    return figs
