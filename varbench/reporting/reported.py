"""Reported points: published numbers of methods we cannot reproduce here (other papers' GPUs, models, protocols),
read from a small TOML file and drawn hollow on the Pareto axes, labelled "reported, not measured here".

File format (suites/reported_points.toml is the example)::

    [[point]]
    method = "code"                  # required: the method's name (colours/legend)
    paper = "CoDe (CVPR'25)"         # required: where the numbers come from
    model = "var-d30 + var-d16"      # required
    device = "NVIDIA L20"            # optional from here on; leave out what the paper does not give
    batch = 64
    latency_ms = 1270.0
    peak_mib = 19943.0
    kv_mib = 8156.0
    fid = 2.27
    notes = "..."

Numbers are copied as the paper states them (a paper's "MB" stays that number); nothing is derived here.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from varbench.errors import UsageError

LABEL = "reported, not measured here"
REQUIRED = ("method", "paper", "model")
NUMBERS = {"batch": int, "latency_ms": float, "peak_mib": float, "kv_mib": float, "kv_fraction": float,
           "fid": float}
TEXTS = ("device", "notes")


@dataclass(frozen=True)
class ReportedPoint:
    """One published point; None where the paper gives no number."""

    method: str
    paper: str
    model: str
    device: str | None = None
    batch: int | None = None
    latency_ms: float | None = None
    peak_mib: float | None = None
    kv_mib: float | None = None
    kv_fraction: float | None = None
    fid: float | None = None
    notes: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (*REQUIRED, *TEXTS, *NUMBERS)}


def parse_points(doc: Any, source: str = "reported points") -> list[ReportedPoint]:
    """Validate a parsed TOML document: a ``point`` array of tables with the required strings, known keys only,
    positive finite numbers (kv_fraction in (0, 1]). UsageError naming the point and the key otherwise."""
    if not isinstance(doc, dict) or set(doc) - {"point"}:
        extra = sorted(set(doc) - {"point"}) if isinstance(doc, dict) else []
        raise UsageError(f"{source}: expected only [[point]] tables, found {', '.join(extra) or type(doc).__name__}")
    items = doc.get("point", [])
    if not isinstance(items, list) or not items or not all(isinstance(p, dict) for p in items):
        raise UsageError(f"{source}: no [[point]] tables")
    out = []
    for i, p in enumerate(items, 1):
        where = f"{source}: point {i}"
        unknown = sorted(set(p) - {*REQUIRED, *TEXTS, *NUMBERS})
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                             f"{', '.join((*REQUIRED, *TEXTS, *NUMBERS))})")
        vals: dict[str, Any] = {}
        for k in REQUIRED:
            if not isinstance(p.get(k), str) or not p[k].strip():
                raise UsageError(f"{where}: '{k}' must be a non-empty string")
            vals[k] = p[k].strip()
        for k in TEXTS:
            if k in p:
                if not isinstance(p[k], str):
                    raise UsageError(f"{where} ({vals['method']}): '{k}' must be a string")
                vals[k] = p[k]
        for k, kind in NUMBERS.items():
            if k not in p:
                continue
            v = p[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                raise UsageError(f"{where} ({vals['method']}): '{k}' must be {'an integer' if kind is int else 'a number'}"
                                 f", got {v!r}")
            if not math.isfinite(v) or v <= 0 or (k == "kv_fraction" and v > 1):
                raise UsageError(f"{where} ({vals['method']}): '{k}' = {v} is out of range "
                                 f"({'(0, 1]' if k == 'kv_fraction' else '> 0'})")
            vals[k] = kind(v)
        out.append(ReportedPoint(**vals))
    return out


def load_reported(path: str | os.PathLike) -> list[ReportedPoint]:
    """Read and validate a reported-points TOML file (one line of UsageError for any fault)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--reported: cannot read {p} ({e.strerror or e})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--reported: {p} is not valid TOML ({e})") from None
    return parse_points(doc, f"--reported {p}")


def same_model(point: ReportedPoint, models: Sequence[str]) -> bool:
    """The point reports one of these models (its ``model`` names it first, e.g. "var-d30 (VARiant-d16, 6+4)"):
    only then is it drawn on this run's axes; a var-d30 paper number on a var-toy plot would mislead."""
    head = point.model.split()[0] if point.model.split() else ""
    return head in models


def plot_points(points: Sequence[ReportedPoint], models: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Points in the keys the Pareto figures read (latency_ms, peak_mib, kv_mib, and quality = fid); with
    ``models``, only the points of those models."""
    return [{**pt.as_dict(), "quality_fid": pt.fid, "label": f"{pt.method} ({pt.paper}), {LABEL}"}
            for pt in points if models is None or same_model(pt, models)]


# ---- report sections (HTML; no plotly) ---------------------------------------------------------------------------
def reported_html(points: Sequence[ReportedPoint], sweep_rows: Sequence[dict], sens_rows: Sequence[dict]) -> str:
    """The reported points as a table, with where they are drawn; empty without points."""
    import html

    if not points:
        return ""
    cols = ("method", "paper", "model", "device", "batch", "latency_ms", "peak_mib", "kv_mib", "kv_fraction",
            "fid", "notes")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if getattr(p, c) is None else str(getattr(p, c)))}</td>"
                                    for c in cols) + "</tr>" for p in points)
    fid_here = any(r.get("metric") == "fid" for r in sens_rows)
    models = sorted({r.get("model") for r in sweep_rows if r.get("model")})
    other = [p.method for p in points if not same_model(p, models)]
    where = ("They are drawn hollow on the latency-vs-memory figure where the paper gives latency and memory, and "
             "on the quality figures " + ("(FID)" if fid_here else "only when this report's quality metric is FID "
                                          "(it is not here: their FID is not comparable with this run's metric)")
             + ". Their GPU, batch and FID protocol are the papers', not this run's."
             + (f" Listed only, not drawn ({len(other)}): their model is not this run's ({', '.join(models) or 'none'})."
                if other else ""))
    return (f"<section class=\"reported\"><h2>Reported points ({html.escape(LABEL)})</h2>"
            f"<p class=\"note\">{html.escape(where)}</p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></section>")


def predicted_vs_measured_html(sens_rows: Sequence[dict]) -> str:
    """Per-scale schedules from ``varbench plan`` measured by ``sensitivity --schedule``: the plan's predicted loss
    (sum of single-scale losses) against the measured loss of the same metric, with the measurement's interval."""
    import html

    from varbench.workflows.planning import loss_of

    rows = [r for r in sens_rows if r.get("mode") == "schedule" and r.get("predicted_loss") is not None
            and r.get("metric") == r.get("plan_metric")]
    if not rows:
        return ""
    full = {(r.get("model"), r.get("weights"), r.get("metric")): r.get("value") for r in sens_rows
            if r.get("mode") == "reference"}
    lines = []
    for r in rows:
        ref = full.get((r.get("model"), r.get("weights"), r["metric"]))
        try:
            measured = loss_of(r["metric"], r["value"], ref)
            lo, hi = ((loss_of(r["metric"], r["ci_low"], ref), loss_of(r["metric"], r["ci_high"], ref))
                      if r.get("ci_low") is not None and r.get("ci_high") is not None else (None, None))
        except Exception:  # noqa: BLE001 - a metric without a loss (psnr) or without its reference: shown blank
            measured, lo, hi = None, None, None
        ci = f"[{min(lo, hi):.4g}, {max(lo, hi):.4g}]" if lo is not None else ""
        cells = (r.get("model"), r.get("method"), r["metric"], f"{r['predicted_loss']:.4g}",
                 "" if measured is None else f"{measured:.4g}", ci, r.get("n"))
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in ("model", "schedule", "metric", "predicted loss", "measured loss",
                                            "95% interval", "n"))
    return ("<section class=\"plan\"><h2>Planned schedules: predicted vs measured</h2><p class=\"note\">Predicted: "
            "the sum of the single-scale losses (varbench plan assumes scales do not interact); measured: the "
            "schedule scored against the full network (sensitivity --schedule).</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></section>")
