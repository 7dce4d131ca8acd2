"""Plotly figures of the report: Pareto frontiers, sensitivity heatmaps, per-scale memory timelines.

Every string that reaches a figure (names, paths, labels) is HTML-escaped first, because plotly renders a
subset of HTML in titles and hover text; units are part of every axis title.
"""
from __future__ import annotations

import html
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from varbench.reporting.pareto import not_separable, pareto_indices, step_line
from varbench.results import finite_number as _num
from varbench.schema import METRICS, direction, unit

MIB = 2 ** 20
QUALITY_PREFERENCE = ("toy_fd", "fid", "toy_acc", "kl", "token_agreement", "psnr", "ssim")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "pentagon", "hexagon", "triangle-down")
# x-axis choices of the Pareto selector: point key, axis title (with unit), larger is better (the direction of the
# row field each is derived from; memory is shown in MiB)
AXES: dict[str, tuple[str, str, bool]] = {
    "latency": ("latency_ms", f"latency p50 ({unit('latency_ms_p50')})", direction("latency_ms_p50") == "higher"),
    "throughput": ("throughput", f"throughput ({unit('images_per_s')})", direction("images_per_s") == "higher"),
    "kv": ("kv_mib", "KV cache (MiB)", direction("kv_bytes") == "higher"),
    "peak": ("peak_mib", "peak memory (MiB; allocator, else NVML; on CPU the KV cache's bytes)",
             direction("peak_allocated_bytes") == "higher"),
    # GPU board energy per image (measuring.energy); an option only where some point has it (pareto_figures)
    "energy": ("energy_j", f"energy per image ({unit('energy_j_per_image')}, GPU board, generate + decode)",
               direction("energy_j_per_image") == "higher"),
}


def metric_unit(metric: str) -> str:
    """A quality metric's unit for axis titles ("1" for an unknown metric)."""
    decl = METRICS.get(metric)
    return decl.unit if decl and decl.unit else "1"


def higher_is_better(metric: str) -> bool:
    decl = METRICS.get(metric)
    return decl is not None and decl.direction == "higher"
LAYOUT = dict(template="plotly_white", height=480, margin=dict(l=70, r=30, t=110, b=60))


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _full_depth(model: str) -> int | None:
    try:
        from model import spec as spec_mod
        return spec_mod.get(model).depth
    except Exception:  # noqa: BLE001 - a model outside the registry simply has no known full depth
        return None


# ----------------------------------------------------------------------------- Pareto

def join_quality(sweep_rows: Sequence[Mapping[str, Any]], sens_rows: Sequence[Mapping[str, Any]],
                 metric: str) -> list[float | None]:
    """Quality of each sweep config: the sensitivity row of the same configuration (mode method / schedule, same
    ``method`` string), else for VARiant points mode "from" at scale == switch and the same depth. Other
    methods without such a row get None (their quality is not VARiant's at the same depth).

    The full network needs no ablation; any sensitivity row of the full depth stands for it.
    """
    table: dict[tuple, float] = {}
    full: dict[tuple, float] = {}
    by_method: dict[tuple, float] = {}       # sensitivity --method / --schedule rows: the same configuration
    for r in sens_rows:
        if r.get("metric") != metric or _num(r.get("value")) is None:
            continue
        if r.get("mode") in ("method", "schedule") and r.get("method"):
            by_method[(r.get("model"), r["method"])] = float(r["value"])
            continue
        if r.get("mode") == "from" and r.get("scale") is not None:
            table[(r.get("model"), int(r["scale"]), r.get("depth"))] = float(r["value"])
        if r.get("depth") is not None and r.get("depth") == _full_depth(str(r.get("model"))):
            full[(r.get("model"), r.get("depth"))] = float(r["value"])
    out: list[float | None] = []
    for r in sweep_rows:
        sw = r.get("switch")
        q = by_method.get((r.get("model"), r.get("method")))
        if q is None and not str(r.get("method") or "variant").startswith("variant"):
            out.append(None)                 # another method's quality is not VARiant's at the same depth
            continue
        q = q if q is not None else (table.get((r.get("model"), int(sw), r.get("depth"))) if sw is not None
                                     else None)
        if q is None:
            q = full.get((r.get("model"), r.get("depth")))
        out.append(q)
    return out


def sweep_points(sweep_rows: Sequence[Mapping[str, Any]], sens_rows: Sequence[Mapping[str, Any]]
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """Successful sweep rows as plot points with derived axes, plus the quality metric joined (or None)."""
    ok = [r for r in sweep_rows if r.get("status", "ok") == "ok"]
    metric = None
    quality: list[float | None] = [None] * len(ok)
    for m in QUALITY_PREFERENCE + tuple(sorted({str(r.get("metric")) for r in sens_rows})):
        q = join_quality(ok, sens_rows, m)
        if any(v is not None for v in q):
            metric, quality = m, q
            break
    pts = []
    for r, q in zip(ok, quality):
        kv = _num(r.get("kv_bytes")) if _num(r.get("kv_bytes")) is not None else _num(r.get("kv_bytes_analytic"))
        # allocator peak on GPU; NVML if the allocator was not read; process RSS peak on CPU
        # on the CPU the process RSS is the same for every point (flat plots): the cache's own bytes instead
        cpu = str(r.get("device", "")).startswith("cpu")
        fields = ("kv_bytes", "kv_bytes_analytic") if cpu else ("peak_allocated_bytes", "nvml_peak_used_bytes",
                                                                  "rss_peak_bytes")
        peak = next((v for v in (_num(r.get(f)) for f in fields) if v), None)
        pts.append({**r, "quality": q, "latency_ms": _num(r.get("latency_ms_p50")),
                    "throughput": _num(r.get("images_per_s")),
                    "kv_mib": kv / MIB if kv is not None else None,
                    "peak_mib": peak / MIB if peak is not None else None,
                    "energy_j": _num(r.get("energy_j_per_image"))})
    if metric is not None:         # the joined rows' 95% intervals, by the same join (ends read as values)
        for end in ("low", "high"):
            ends = join_quality(ok, [{**r, "value": r.get(f"ci_{end}")} for r in sens_rows], metric)
            for p, v in zip(pts, ends):
                p[f"quality_{end}"] = v
    return pts, metric


def _hover(p: Mapping[str, Any], metric: str | None) -> str:
    keys = ("model", "weights", "method", "depth", "switch", "select", "batch", "dtype", "device", "layers")
    lines = [f"{k}: {esc(p.get(k))}" for k in keys if p.get(k) is not None]
    lines.append(f"path: {_path_label(p)}")
    lines += [f"latency p50: {p['latency_ms']:.3f} ms" if p.get("latency_ms") is not None else "",
              f"throughput: {p['throughput']:.2f} img/s" if p.get("throughput") is not None else "",
              f"KV: {p['kv_mib']:.3f} MiB" if p.get("kv_mib") is not None else "",
              f"peak: {p['peak_mib']:.3f} MiB" if p.get("peak_mib") is not None else "",
              f"energy: {p['energy_j']:.3f} J/img" if p.get("energy_j") is not None else "",
              f"{esc(metric)}: {p['quality']:.4g}" + (f" [{p['quality_low']:.4g}, {p['quality_high']:.4g}] (95%)"
                                                       if p.get("quality_low") is not None
                                                       and p.get("quality_high") is not None else "")
              if metric and p.get("quality") is not None else ""]
    return "<br>".join(s for s in lines if s)


def method_name(p: Mapping[str, Any]) -> str:
    """The methods of a row's configuration without their parameters ("variant", "scale-window+kv-fp8"); rows
    written before methods existed are variant points."""
    method = p.get("method")
    return "+".join(part.split(":")[0] for part in str(method).split("+")) if method else "variant"


def _path_label(p: Mapping[str, Any]) -> str:
    """How a sweep point was run: eager, CUDA graphs and/or compiled (older rows lack the fields: eager)."""
    parts = [name for name, key in (("graphs", "cuda_graphs"), ("compile", "compile")) if p.get(key)]
    return "+".join(parts) or "eager"


NOT_SEPARABLE = "not separable from the front (95% intervals overlap)"


def _error_bars(points: Sequence[Mapping[str, Any]], y_key: str) -> dict[str, Any]:
    """Asymmetric 95% error bars from quality_low/quality_high (none where a point has no interval)."""
    up, down = [], []
    for p in points:
        y, lo, hi = _num(p.get(y_key)), _num(p.get("quality_low")), _num(p.get("quality_high"))
        up.append(hi - y if y is not None and hi is not None else None)
        down.append(y - lo if y is not None and lo is not None else None)
    return dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1.2, width=4, color="#444")


def pareto_figure(points: Sequence[dict[str, Any]], title: str, y_key: str, y_label: str, y_higher: bool,
                  x_options: Sequence[str], default_x: str, metric: str | None,
                  reported: Sequence[Mapping[str, Any]] = ()) -> go.Figure:
    """Scatter of every config (colour = depth, symbol = batch or switch) + per-group Pareto step lines;
    ``reported`` points (``varbench.reporting.reported.plot_points``, keyed like the points) drawn hollow and
    labelled "reported, not measured here", never part of a front.

    The x-axis selector (updatemenus) swaps x data and recomputes nothing in the browser: the front of
    every option is precomputed here.
    """
    points = [{**p, "method_name": method_name(p)} for p in points]
    batches = sorted({p.get("batch") for p in points}, key=str)
    if len({p["method_name"] for p in points}) > 1:        # several efficiency methods: one symbol each
        sym_key = "method_name"
    else:
        sym_key = "batch" if len(batches) > 1 else "switch"
    sym_vals = sorted({p.get(sym_key) for p in points}, key=str)
    groups = defaultdict(list)
    for p in points:
        groups[(p.get("model"), p.get("batch"), p.get("dtype"), p.get("device"), _path_label(p))].append(p)
    multi = len(groups) > 1
    # quality with 95% intervals (sensitivity rows' ci_low/ci_high): error bars and "not separable" rings
    show_ci = y_key == "quality" and any(p.get("quality_low") is not None for p in points)

    def xy_for(opt: str) -> tuple[list[list], list[list]]:
        key, _, higher = AXES[opt]
        xs, ys = [], []
        for v in sym_vals:
            sel = [p for p in points if p.get(sym_key) == v]
            xs.append([p.get(key) for p in sel])
            ys.append([p.get(y_key) for p in sel])
        for g in groups.values():
            idx = pareto_indices(g, minimize=[k for k, h in ((key, higher), (y_key, y_higher)) if not h],
                                 maximize=[k for k, h in ((key, higher), (y_key, y_higher)) if h])
            fx, fy = step_line([g[i] for i in idx], key, y_key, x_minimize=not higher, y_minimize=not y_higher)
            xs.append(fx)
            ys.append(fy)
        if show_ci:                 # points whose place relative to their group's front the intervals leave open
            unsure = [g[i] for g in groups.values() for i in not_separable(
                g, key, y_key, "quality_low", "quality_high", x_minimize=not higher, y_minimize=not y_higher)]
            xs.append([p.get(key) for p in unsure])
            ys.append([p.get(y_key) for p in unsure])
        return xs, ys

    if not any(p.get(AXES[default_x][0]) is not None for p in points):   # e.g. no peak memory measured
        default_x = next((o for o in x_options if any(p.get(AXES[o][0]) is not None for p in points)), default_x)
    fig = go.Figure()
    x0, y0 = xy_for(default_x)
    depths = [d for d in (_num(p.get("depth")) for p in points) if d is not None]
    lo, hi = min(depths, default=0.0), max(depths, default=1.0)

    def colour(p: Mapping[str, Any]) -> str:
        # explicit colours, not a coloraxis: plotly warns in the console when legend items use one
        d = _num(p.get("depth"))
        t = 0.5 if d is None or hi == lo else (d - lo) / (hi - lo)
        return sample_colorscale("Viridis", [t])[0]

    for i, v in enumerate(sym_vals):
        sel = [p for p in points if p.get(sym_key) == v]
        fig.add_trace(go.Scatter(
            x=x0[i], y=y0[i], mode="markers", name=f"{sym_key}={esc(v)}",
            hovertext=[_hover(p, metric) for p in sel], hoverinfo="text",
            marker=dict(symbol=SYMBOLS[i % len(SYMBOLS)], size=11, color=[colour(p) for p in sel],
                        line=dict(width=1, color="#333")),
            error_y=_error_bars(sel, y_key) if show_ci else None))
    for j, key in enumerate(groups):
        label = "Pareto front" + (" (" + ", ".join(esc(k) for k in key if k is not None) + ")" if multi else "")
        fig.add_trace(go.Scatter(x=x0[len(sym_vals) + j], y=y0[len(sym_vals) + j], mode="lines", name=label,
                                 hoverinfo="skip", line=dict(color="#555", dash="dash", width=1.5)))
    if show_ci:
        fig.add_trace(go.Scatter(x=x0[-1], y=y0[-1], mode="markers", name=NOT_SEPARABLE, hoverinfo="skip",
                                 marker=dict(symbol="square-open", size=20, color="#e67e22", line=dict(width=2))))
    # an empty trace that only carries the depth colour bar
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(colorscale="Viridis", cmin=lo, cmax=hi, color=[lo], showscale=True,
                                         colorbar=dict(title="depth (blocks)"))))
    rep = [p for p in reported if _num(p.get(y_key)) is not None]
    if rep:
        from varbench.reporting.reported import LABEL
        fig.add_trace(go.Scatter(
            x=[p.get(AXES[default_x][0]) for p in rep], y=[p.get(y_key) for p in rep], mode="markers+text",
            name=esc(LABEL), text=[esc(p["method"]) for p in rep], textposition="top center",
            hovertext=["<br>".join(esc(f"{k}: {v}") for k, v in p.items() if v is not None and k != "label")
                       + f"<br><b>{esc(LABEL)}</b>" for p in rep], hoverinfo="text",
            marker=dict(symbol="circle-open", size=13, color="#c0392b", line=dict(width=2))))
    buttons = []
    for opt in x_options:
        xs, ys = xy_for(opt)
        xs.append([None])
        ys.append([None])
        if rep:
            xs.append([p.get(AXES[opt][0]) for p in rep])
            ys.append([p.get(y_key) for p in rep])
        buttons.append(dict(label=opt, method="update",
                            args=[{"x": xs, "y": ys}, {"xaxis.title.text": AXES[opt][1]}]))
    fig.update_layout(
        **LAYOUT, title=dict(text=esc(title)), xaxis_title=AXES[default_x][1], yaxis_title=y_label,
        legend=dict(orientation="h", y=-0.18),
        updatemenus=[dict(type="buttons", direction="right", x=0, y=1.03, xanchor="left", yanchor="bottom",
                          showactive=True,
                          active=list(x_options).index(default_x), buttons=buttons)])
    return fig


def pareto_figures(sweep_rows: Sequence[Mapping[str, Any]], sens_rows: Sequence[Mapping[str, Any]],
                   reported: Sequence[Mapping[str, Any]] = ()) -> list[tuple[str, go.Figure | str]]:
    """The three frontiers; a figure that lacks its data becomes a one-line note instead. ``reported`` points
    join the quality figures when the quality metric is FID (theirs) and the latency-vs-memory figure."""
    points, metric = sweep_points(sweep_rows, sens_rows)
    rep_q = [{**p, "quality": p.get("quality_fid")} for p in reported] if metric == "fid" else []
    out: list[tuple[str, go.Figure | str]] = []
    if not points:
        return [("Pareto frontiers", "no successful sweep rows")]
    energy = any(p.get("energy_j") is not None for p in points)      # GPU rows with an energy pass
    axes = [o for o in AXES if o != "energy" or energy]
    if metric is None:
        note = ("no quality joined: needs sensitivity rows with mode 'from' at scale = switch and the same depth")
        out += [("Quality vs latency", note), ("Quality vs peak memory", note)]
    else:
        higher = higher_is_better(metric)
        y_label = f"{esc(metric)} ({metric_unit(metric)}, {'higher' if higher else 'lower'} is better)"
        qpts = [p for p in points if p.get("quality") is not None]
        out.append(("Quality vs latency", pareto_figure(qpts, f"Quality ({metric}) vs latency", "quality", y_label,
                                                        higher, axes, "latency", metric, rep_q)))
        out.append(("Quality vs peak memory", pareto_figure(qpts, f"Quality ({metric}) vs peak memory", "quality",
                                                            y_label, higher, axes, "peak", metric, rep_q)))
    out.append(("Latency vs memory", pareto_figure(points, "Latency vs memory", "latency_ms", "latency p50 (ms)",
                                                   False, ["peak", "kv"], "peak", metric, reported)))
    if energy:
        epts = [p for p in points if p.get("energy_j") is not None]
        out.append(("Energy per image vs throughput", pareto_figure(
            epts, "Energy per image vs throughput", "energy_j", AXES["energy"][1], AXES["energy"][2],
            ["throughput", "latency", "peak"], "throughput", metric)))
    return out


# ----------------------------------------------------------------------------- sensitivity heatmaps

def heatmap_figures(sens_rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, go.Figure]]:
    """One scale × depth heatmap per (model, mode, metric), the value written in each cell."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in sens_rows:
        if _num(r.get("value")) is not None:
            groups[(str(r.get("model")), str(r.get("mode")), str(r.get("metric")))].append(r)
    figs = []
    for (model, mode, metric), rows in sorted(groups.items()):
        col = "group" if mode == "groups" else "scale"
        cols = sorted({r.get(col) for r in rows if r.get(col) is not None},
                      key=lambda v: (int(str(v).split("-")[0]) if str(v).split("-")[0].isdigit() else 0, str(v)))
        depths = sorted({int(r["depth"]) for r in rows if r.get("depth") is not None})
        if mode == "reference" or not cols or not depths:     # the full network's value: no matrix to draw
            continue
        z = [[None] * len(cols) for _ in depths]
        for r in rows:
            if r.get(col) in cols and r.get("depth") is not None:
                z[depths.index(int(r["depth"]))][cols.index(r.get(col))] = float(r["value"])
        text = [["" if v is None else f"{v:.3g}" for v in row] for row in z]
        m_unit = metric_unit(metric)
        xlab = {"from": "subnet from scale (index)", "single": "ablated scale (index)",
                "groups": "ablated scale group (indices)"}.get(mode, "scale (index)")
        fig = go.Figure(go.Heatmap(
            z=z, x=[esc(c) for c in cols], y=[str(d) for d in depths], text=text, texttemplate="%{text}",
            colorscale="Viridis", reversescale=higher_is_better(metric), hoverongaps=False,
            colorbar=dict(title=f"{esc(metric)} ({m_unit})"),
            hovertemplate=f"{col} %{{x}}<br>depth %{{y}} blocks<br>{esc(metric)} %{{z:.4g}} {m_unit}<extra></extra>"))
        title = f"Sensitivity: {model}, mode {mode}, {metric}"
        fig.update_layout(**LAYOUT, title=dict(text=esc(title)), xaxis_title=xlab,
                          yaxis_title="subnet depth (blocks)", xaxis_type="category", yaxis_type="category")
        figs.append((title, fig))
    return figs


# ----------------------------------------------------------------------------- memory timeline

TRACE_SERIES = (("kv_bytes_analytic", "KV analytic"), ("kv_bytes_cache", "KV cache (real)"),
                ("allocated_bytes", "allocator allocated"), ("peak_allocated_bytes", "allocator peak"),
                ("reserved_bytes", "allocator reserved"), ("nvml_device_used_bytes", "NVML device used"),
                ("nvml_process_used_bytes", "NVML process used"))


def trace_figures(scale_rows: Sequence[Mapping[str, Any]], sample_rows: Iterable[Mapping[str, Any]]
                  ) -> list[tuple[str, go.Figure]]:
    """Per traced run: analytic, allocator and NVML memory on one time axis, scale boundaries marked."""
    keys = ("_source", "run_id", "model", "depth", "switch", "batch", "dtype")
    runs: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in scale_rows:
        runs[tuple(r.get(k) for k in keys)].append(r)
    samples: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for s in sample_rows:
        samples[(s.get("_source"), s.get("run_id"))].append(s)
    figs = []
    for key, rows in runs.items():
        rows = sorted(rows, key=lambda r: _num(r.get("elapsed_ms")) or 0.0)
        fig = go.Figure()
        xs = [_num(r.get("elapsed_ms")) for r in rows]
        for f, name in TRACE_SERIES:
            ys = [_num(r.get(f)) for r in rows]
            if any(v is not None for v in ys):
                fig.add_trace(go.Scatter(x=xs, y=[v / MIB if v is not None else None for v in ys],
                                         mode="lines+markers", name=name, line_shape="hv"))
        # timeline samples of the same run (same results dir and run_id; a run without run_id takes its dir's)
        same = sorted(samples.get((key[0], key[1]), []), key=lambda s: _num(s.get("t_ms")) or 0.0)
        for fields, name in ((("nvml_device_used_bytes", "device_used_bytes"), "NVML device used (sampled)"),
                             (("nvml_process_used_bytes", "process_used_bytes"), "NVML process used (sampled)")):
            ys = [next((_num(s.get(f)) for f in fields if _num(s.get(f)) is not None), None) for s in same]
            if any(v is not None for v in ys):
                fig.add_trace(go.Scatter(x=[_num(s.get("t_ms")) for s in same],
                                         y=[v / MIB if v is not None else None for v in ys],
                                         mode="lines", name=name, line=dict(width=1)))
        for r, x in zip(rows, xs):
            if x is not None:
                fig.add_vline(x=x, line=dict(color="#999", dash="dot", width=1),
                              annotation_text=f"s{esc(r.get('scale'))}", annotation_position="top")
        desc = ", ".join(f"{k} {v}" for k, v in zip(keys[2:], key[2:]) if v is not None)
        title = f"Memory timeline: {desc}" if desc else "Memory timeline"
        fig.update_layout(**LAYOUT, title=dict(text=esc(title)), xaxis_title="time since generation start (ms)",
                          yaxis_title="memory (MiB)", legend=dict(orientation="h", y=-0.2),
                          updatemenus=[dict(type="buttons", direction="right", x=1, xanchor="right", y=1.03,
                                            yanchor="bottom",
                                            buttons=[dict(label="linear", method="relayout",
                                                          args=[{"yaxis.type": "linear"}]),
                                                     dict(label="log", method="relayout",
                                                          args=[{"yaxis.type": "log"}])])])
        figs.append((title, fig))
    return figs
