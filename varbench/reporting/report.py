"""One self-contained interactive HTML report from one or more results directories.

plotly.js is inlined once and every figure is written without its own copy, so the file opens offline from a
file:// URL and loads nothing from the network. Every user-supplied string is escaped: html.escape for markup,
and \\u003c-style escapes for JSON inside <script>, so no value can close the script element.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from varbench import schema
from varbench.errors import UsageError
from varbench.results import atomic_write_text, finite_number, read_rows, strict_json_value

log = logging.getLogger(__name__)


def unit_of(field: str) -> str:
    """The unit shown under a table header: the schema's for a declared field, else the naming convention (units
    in field names) for fields of rows the schema does not describe."""
    decl = schema.field_of(field)
    if decl is not None:
        return decl.unit or "—"
    if "_ms" in field:
        return "ms"
    if field.endswith("bytes") or "_bytes" in field:
        return "bytes"
    if field.endswith("_s") or "seconds" in field:
        return "s"
    return "—"


def json_for_script(obj: Any) -> str:
    """JSON safe to place inside <script>: '<', '>', '&' and line separators escaped, so '</script>' can't end it."""
    text = json.dumps(strict_json_value(obj), default=str)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return text


# ----------------------------------------------------------------------------- loading

def find_result_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Each path, or (for a directory holding no rows itself, like ``varbench run``'s output) its subdirectories
    that hold rows or a manifest; a path that is not a directory is a UsageError."""
    out: list[Path] = []
    for d in paths:
        p = Path(d)
        if not p.is_dir():
            raise UsageError(f"{p} is not a results directory")
        if any(p.glob("*.jsonl")):
            out.append(p)
            continue
        subs = sorted(q for q in p.iterdir()
                      if q.is_dir() and (any(q.glob("*.jsonl")) or (q / "manifest.json").exists()))
        out.extend(subs or [p])
    return out


def load_results(result_dirs: Sequence[str | os.PathLike]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(manifests, rows) of every directory; each row gets ``_source`` = index of its directory."""
    manifests: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    empty: list[Path] = []
    if not result_dirs:
        raise UsageError("report needs at least one results directory")
    for i, p in enumerate(find_result_dirs(result_dirs)):
        man: dict[str, Any] = {}
        mp = p / "manifest.json"
        if mp.exists():
            try:
                loaded = json.loads(mp.read_text(encoding="utf-8"))
                man = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                log.warning("%s: unreadable manifest, shown as empty", mp)
        manifests.append({"_dir": str(p), **man})
        files = sorted(p.glob("*.jsonl"))
        if not files:
            empty.append(p)
        for f in files:
            for r in read_rows(f):
                r.setdefault("kind", _kind_from_name(f.name, r))
                r["_source"] = i
                rows.append(r)
    if rows:                                  # with no rows at all the caller says so in one line
        for p in empty:
            log.warning("%s: no *.jsonl result files", p)
    return manifests, rows


TIMELINE_KINDS = schema.kinds_in(schema.TIMELINE_FILE)     # plotted, not tabulated


def _kind_from_name(name: str, row: Mapping[str, Any]) -> str:
    stem = name.split(".")[0]
    if stem.startswith("trace"):
        return "trace_sample" if "t_ms" in row else "trace_scale"
    return stem


def random_weights(manifests: Iterable[Mapping[str, Any]], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Models measured with random weights (from rows and manifests): flagged at the top of the report."""
    names = {str(r.get("model")) for r in rows if r.get("weights") == "random"}
    for m in manifests:
        model = m.get("model") or (m.get("config") or {}).get("model") if isinstance(m.get("config"), dict) \
            else m.get("model")
        if m.get("weights") == "random" and model:
            names.add(str(model))
    return sorted(names)


# ----------------------------------------------------------------------------- HTML pieces

def _manifest_html(manifests: Sequence[Mapping[str, Any]]) -> str:
    first = ("_dir", "model", "weights", "device", "gpu_name", "driver", "cuda", "torch", "dtype", "git_commit",
             "command_line", "start_time", "hostname")
    parts = []
    for m in manifests:
        keys = [k for k in first if k in m] + sorted(k for k in m if k not in first)
        cells = "".join(f"<tr><th>{html.escape('directory' if k == '_dir' else k)}</th>"
                        f"<td>{html.escape(_fmt(m[k], full=True))}</td></tr>" for k in keys)
        cls = " class=\"random\"" if m.get("weights") == "random" else ""
        parts.append(f"<table class=\"manifest\"{cls}>{cells}</table>")
    return "\n".join(parts)


def _fmt(v: Any, full: bool = False) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        if not full and len(v) > 6:
            return "[" + ", ".join(_fmt(x) for x in v[:4]) + f", … ({len(v)} values)]"
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _sort_key(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v)) if math.isfinite(float(v)) else ""
    return ""


def _table_html(kind: str, rows: Sequence[Mapping[str, Any]], table_id: str) -> str:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols and not k.startswith("_") and k != "kind":
                cols.append(k)
    head = "".join(f"<th data-col=\"{i}\" title=\"click to sort\">{html.escape(c)}<br>"
                   f"<span class=\"unit\">{html.escape(unit_of(c))}</span></th>" for i, c in enumerate(cols))
    body = []
    for r in rows:
        tds = "".join(f"<td data-v=\"{_sort_key(r.get(c))}\">{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
        body.append(f"<tr>{tds}</tr>")
    return (f"<h3>{html.escape(kind)} rows ({len(rows)})</h3><div class=\"scroll\">"
            f"<table class=\"rows sortable\" id=\"{table_id}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('data-dir') !== 'asc';
      t.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[i], y = b.cells[i], xv = x.getAttribute('data-v'), yv = y.getAttribute('data-v');
        var r = (xv !== '' && yv !== '') ? parseFloat(xv) - parseFloat(yv)
                                         : x.textContent.localeCompare(y.textContent);
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:.2em} .banner{background:#b00020;color:#fff;padding:.8em 1em;font-weight:600;margin:1em 0}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.2em} th,td{border:1px solid #ccc;padding:3px 6px;
text-align:left;vertical-align:top} table.rows th{background:#f2f2f2;cursor:pointer;white-space:nowrap}
th[data-dir=asc]::after{content:" ▲"} th[data-dir=desc]::after{content:" ▼"} .unit{font-weight:400;color:#666}
table.manifest.random{border:2px solid #b00020} .scroll{overflow-x:auto;max-height:600px;overflow-y:auto}
.note{color:#666;font-style:italic} .figure{margin:1em 0 2em}
.summary{background:#f5f8ff;border:1px solid #c8d4f0;padding:.2em 1em;margin:1em 0}
details>summary{cursor:pointer} details>summary h2{display:inline}
"""


def _summary_html(manifests: Sequence[Mapping[str, Any]], sweep: Sequence[Mapping[str, Any]],
                  sens: Sequence[Mapping[str, Any]]) -> str:
    """The decision first: the question, what was measured where, and the recommended configurations (the
    Pareto picks of ``varbench.workflows.demo.pareto_summary``, with their savings, quality cost and intervals)."""
    models = sorted({str(r.get("model")) for r in [*sweep, *sens] if r.get("model")})
    devices = sorted({str(m.get("gpu_name") or "") for m in manifests if m.get("gpu_name")}
                     | {str(r.get("device")) for r in sweep if r.get("device")})
    ok = [r for r in sweep if r.get("status") == "ok"]
    items = [f"<li>Question: if the late scales run on a shallower subnet, what is saved in memory and time, and "
             f"what does it cost in quality?</li>",
             f"<li>Measured: {html.escape(', '.join(models) or 'no model')} on "
             f"{html.escape(', '.join(devices) or 'an unrecorded device')}; {len(ok)} sweep points, "
             f"{len(sens)} sensitivity cells.</li>"]
    picks: list[str] = []
    if ok and sens:
        try:
            from varbench.workflows.demo import pareto_summary

            picks = pareto_summary(ok, sens)
        except Exception as e:  # noqa: BLE001 - rows without the KL metric: no picks, said below
            log.info("no Pareto picks: %s", e)
    if picks:
        items += [f"<li><b>{html.escape(line.split(':', 1)[0])}</b>:{html.escape(line.split(':', 1)[1])}</li>"
                  if ":" in line else f"<li>{html.escape(line)}</li>" for line in picks]
    elif ok:
        fastest = max(ok, key=lambda r: finite_number(r.get("images_per_s")) or 0.0)
        items.append(f"<li>Fastest point: depth {html.escape(str(fastest.get('depth')))} batch "
                     f"{html.escape(str(fastest.get('batch')))}, {_fmt(finite_number(fastest.get('images_per_s')))} "
                     f"img/s (no quality joined: run sensitivity with mode 'from' for recommendations).</li>")
    if any(str(r.get("device", "")).startswith("cpu") for r in ok):
        items.append("<li>CPU rows: memory is shown as the KV cache's own bytes (measured, equal to the analytic "
                     "model); the process RSS is the same for every point and is only in the rows table.</li>")
    return f"<section class=\"summary\"><h2>Summary</h2><ul>{''.join(items)}</ul></section>"


def build_report(result_dirs: Sequence[str | os.PathLike], out_html: str | os.PathLike,
                 png_dir: str | os.PathLike | None = None, reported: Sequence[Any] = ()) -> Path:
    """Write the report; returns its path. ``png_dir`` exports static PNGs too, only when kaleido is installed.
    ``reported``: published points (``varbench.reporting.reported.load_reported``), drawn hollow on the Pareto
    axes and listed, labelled "reported, not measured here"."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    from varbench.reporting import figures as rf

    manifests, rows = load_results(result_dirs)
    if not rows:
        raise UsageError(f"no result rows in {', '.join(str(d) for d in result_dirs)} (a results folder holds "
                         f"*.jsonl rows from sweep, trace, sensitivity, models or run)")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(str(r.get("kind")), []).append(r)
    sweep, sens = by_kind.get("sweep", []), by_kind.get("sensitivity", [])
    sections: list[str] = []
    figures: list[tuple[str, Any]] = []

    def add_figs(heading: str, items: Sequence[tuple[str, Any]], empty: str) -> None:
        parts = [f"<h2>{html.escape(heading)}</h2>"]
        if not items:
            parts.append(f"<p class=\"note\">{html.escape(empty)}</p>")
        for title, fig in items:
            if isinstance(fig, str):
                parts.append(f"<h3>{html.escape(title)}</h3><p class=\"note\">{html.escape(fig)}</p>")
                continue
            figures.append((title, fig))
            div = pio.to_html(fig, include_plotlyjs=False, full_html=False, default_width="100%",
                              default_height="480px", config={"displaylogo": False, "responsive": True})
            parts.append(f"<div class=\"figure\" data-title=\"{html.escape(title)}\">{div}</div>")
        sections.append("\n".join(parts))

    from varbench.reporting.reported import plot_points, predicted_vs_measured_html, reported_html
    run_models = sorted({r.get("model") for r in sweep if r.get("model")})
    add_figs("Pareto frontiers", rf.pareto_figures(sweep, sens, plot_points(reported, run_models)) if sweep else [],
             "no sweep rows in these results")
    for extra in (reported_html(reported, sweep, sens), predicted_vs_measured_html(sens)):
        if extra:
            sections.append(extra)
    add_figs("Sensitivity (scale × depth)", rf.heatmap_figures(sens), "no sensitivity rows in these results")
    add_figs("Memory timeline (trace)", rf.trace_figures(by_kind.get("trace_scale", []),
                                                        by_kind.get("trace_sample", [])),
             "no trace rows in these results")
    from varbench.reporting.profiles import profiles_html     # --profile: links and per-scale breakdown per point
    drill = profiles_html(manifests, [*sweep, *by_kind.get("trace", [])], Path(out_html).parent)
    if drill:
        sections.append(drill)
    from varbench.reporting.history import history_figures
    history = history_figures(manifests, rows)      # several runs of one suite at different commits
    if history:
        add_figs("History over commits", history, "")
    tables = [_table_html(k, by_kind[k], f"rows-{i}") for i, k in enumerate(sorted(by_kind))
              if k not in TIMELINE_KINDS]
    n_samples = sum(len(by_kind.get(k, [])) for k in TIMELINE_KINDS)
    if n_samples:
        tables.append(f"<p class=\"note\">{n_samples} timeline samples/marks are plotted, not tabulated.</p>")
    sections.append("<details class=\"rows\"><summary><h2>All rows</h2></summary><p class=\"note\">Click a column "
                    "header to sort.</p>" + "\n".join(tables) + "</details>")

    summary_html = _summary_html(manifests, sweep, sens)
    rnd = random_weights(manifests, rows)
    banner = ""
    if rnd:
        banner = ("<div class=\"banner\">RANDOM WEIGHTS: " + html.escape(", ".join(rnd)) +
                  " measured without trained weights. Latency and memory are real; quality numbers are not "
                  "meaningful.</div>")
    counts = Counter(str(r.get("kind")) for r in rows)
    summary = ", ".join(f"{n} {html.escape(k)}" for k, n in sorted(counts.items()))
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>varbench report</title>"
        f"<style>{CSS}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<h1>varbench report</h1>{banner}"
        f"{summary_html}"
        + "\n".join(sections) +
        f"<details class=\"runs\"><summary><h2>Runs: how and where these results were measured</h2></summary>"
        f"<p>Generated {html.escape(now)} from {len(manifests)} results director"
        f"{'y' if len(manifests) == 1 else 'ies'}: {summary or 'no rows'}.</p>{_manifest_html(manifests)}</details>"
        +
        "<script type=\"application/json\" id=\"varbench-rows\">"
        + json_for_script([{k: v for k, v in r.items() if k != "latency_ms_samples"} for r in rows
                           if r.get("kind") not in TIMELINE_KINDS]) +
        f"</script><script type=\"text/javascript\">{SORT_JS}</script></body></html>\n")
    out = Path(out_html)
    if out.is_dir():
        raise UsageError(f"{out} is a directory; name the HTML file to write")
    atomic_write_text(out, page)                  # temp file next to the target, removed on any failure
    if png_dir is not None:
        export_pngs(figures, png_dir)
    log.info("report with %d figures written to %s", len(figures), out)
    return out


def export_pngs(figures: Sequence[tuple[str, Any]], png_dir: str | os.PathLike) -> list[Path]:
    """Static PNGs through kaleido (optional extra); without it, a warning and nothing else."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        log.warning("PNG export skipped: kaleido is not installed (pip install kaleido)")
        return []
    d = Path(png_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (title, fig) in enumerate(figures):
        safe = "".join(c if c.isalnum() else "_" for c in title)[:60]
        p = d / f"{i:02d}_{safe}.png"
        fig.write_image(str(p))
        paths.append(p)
    return paths
