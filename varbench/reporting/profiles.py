"""The report's drill-down section: per profiled point (``--profile``), links to its Chrome trace and memory
snapshot and the per-scale / per-phase time breakdown read from the trace (``measuring.profiling.breakdown``,
stored in the row). Plain HTML (no figure): one row per point, a bar per scale scaled to the slowest scale.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from varbench.results import finite_number

PHASE_COLOURS = {"blocks": "#4c78a8", "head": "#f58518", "sampling": "#54a24b", "other": "#bab0ac"}
# the viewers are named, not linked: the report links nothing outside the results (tests/test_report.py)
VIEWERS = ("Open a trace in ui.perfetto.dev (Open trace file) or chrome://tracing, and a memory snapshot in "
           "pytorch.org/memory_viz (drag the file in). Times are the ranges of one profiled generation "
           "(synchronised at every range on CUDA); phases are exclusive: 'sampling' is CFG, top-k/top-p and the "
           "next scale's input, without the head. The profiler's own cost inflates launch-bound points (eager, "
           "batch 1: about 2x on an H200): read the shares, and the sweep rows for latency.")


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _ms(v: Any) -> str:
    x = finite_number(v)
    return "" if x is None else f"{x:.2f}"


def _link(result_dir: str | None, rel: str | None, html_dir: Path, label: str) -> str:
    """A link from the report's folder to ``result_dir/rel`` (relative, so the folder can move together)."""
    if not rel or result_dir is None:
        return ""
    target = Path(result_dir) / rel
    try:
        href = os.path.relpath(target.resolve(), html_dir.resolve())
    except ValueError:                        # another drive (Windows): an absolute file URL
        href = target.resolve().as_uri()
    return f"<a href=\"{_esc(Path(href).as_posix())}\">{_esc(label)}</a>"


def _scale_bars(per_scale: Sequence[Mapping[str, Any]]) -> str:
    """One stacked bar per scale (phases coloured), widths relative to the slowest scale."""
    widest = max((finite_number(d.get("ms")) or 0.0 for d in per_scale), default=0.0) or 1.0
    out = []
    for d in per_scale:
        ms = finite_number(d.get("ms"))
        if ms is None:
            out.append(f"<div class=\"pbar\"><span class=\"plabel\">{_esc(d.get('scale'))}</span> —</div>")
            continue
        segs = "".join(
            f"<span style=\"display:inline-block;height:10px;"
            f"width:{100 * (finite_number(d.get(p)) or 0) / widest:.2f}%;"
            f"background:{c}\" title=\"scale {_esc(d.get('scale'))} {p}: {_ms(d.get(p))} ms\"></span>"
            for p, c in PHASE_COLOURS.items())
        out.append(f"<div class=\"pbar\" title=\"scale {_esc(d.get('scale'))}: {_ms(ms)} ms\">"
                   f"<span class=\"plabel\">{_esc(d.get('scale'))}</span>"
                   f"<span style=\"display:inline-block;width:70%\">{segs}</span> {_ms(ms)}</div>")
    return "".join(out)


def profiles_html(manifests: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
                  html_dir: str | os.PathLike) -> str:
    """The section, or "" when no row was profiled. ``rows``: sweep / trace rows with ``_source`` (the index of
    their directory in ``manifests``, as ``report.load_results`` sets); ``html_dir``: where the report is
    written, so the links are relative to it."""
    prof = [r for r in rows if r.get("profile_trace") or r.get("profile_error")]
    if not prof:
        return ""
    where = Path(html_dir)
    head = ("<tr><th>point</th><th>files</th><th>total ms<br><span class=\"unit\">scales</span></th>"
            + "".join(f"<th>{p} ms</th>" for p in ("blocks", "head", "sampling", "other", "decode"))
            + "<th>per scale (ms)</th></tr>")
    body = []
    for r in prof:
        src = r.get("_source")
        rdir = manifests[src].get("_dir") if isinstance(src, int) and 0 <= src < len(manifests) else None
        point = ", ".join(f"{k} {r.get(k)}" for k in ("model", "method", "batch", "dtype", "device", "execution")
                          if r.get(k) is not None)
        if r.get("run_id"):
            point += f", run {r.get('run_id')}"
        files = [_link(rdir, r.get("profile_trace"), where, "trace.json")]
        if r.get("profile_memory_snapshot"):
            files.append(_link(rdir, r.get("profile_memory_snapshot"), where, "memory snapshot"))
        else:
            files.append(f"<span class=\"note\">{_esc(r.get('profile_memory_snapshot_reason'))}</span>")
        if r.get("profile_error"):
            files.append(f"<span class=\"note\">profiling failed: {_esc(r.get('profile_error'))}</span>")
        phases = r.get("profile_phase_ms") or {}
        scales = [finite_number(v) for v in (r.get("profile_scale_ms") or [])]
        total = sum(v for v in scales if v is not None) if scales else None
        cells = "".join(f"<td>{_ms(phases.get(p))}</td>" for p in ("blocks", "head", "sampling", "other", "decode"))
        body.append(f"<tr><td>{_esc(point)}</td><td>{'<br>'.join(f for f in files if f)}</td><td>{_ms(total)}</td>"
                    f"{cells}<td style=\"min-width:320px\">{_scale_bars(r.get('profile_scale_phase_ms') or [])}</td>"
                    f"</tr>")
    legend = " ".join(f"<span style=\"display:inline-block;width:10px;height:10px;background:{c}\"></span> {p}"
                      for p, c in PHASE_COLOURS.items())
    return ("<h2>Drill-down: profiled points</h2>"
            f"<p class=\"note\">{VIEWERS}</p><p>{legend}</p>"
            "<style>.pbar{font-size:11px;white-space:nowrap} .plabel{display:inline-block;width:2em}</style>"
            f"<div class=\"scroll\"><table class=\"profiles\">{head}{''.join(body)}</table></div>")
