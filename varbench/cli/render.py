"""Human output shared by several commands: rich tables of results and progress lines, all on stderr.

A command that shows another's results (``demo`` shows every part, ``run`` and ``demo`` print sweep progress)
imports them from here, never from the other command's module, so each command file stays its own option
parsing plus one call into the library.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from varbench.cli.common import err_console
from varbench.schema import direction, unit

MIB = 1 << 20


# ---- numbers ------------------------------------------------------------------------------------------------
def fmt_bytes(n: float) -> str:
    """Bytes in B/KiB/MiB/GiB (model tables)."""
    for u in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or u == "GiB":
            return f"{n:,.0f} {u}" if u == "B" else f"{n:,.1f} {u}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_count(n: float) -> str:
    """Parameters and FLOPs with k/M/G/T suffixes."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


def fmt_mib(v: Any) -> str:
    """Bytes as MiB (sweep table); '-' when not measured."""
    return "-" if v is None else f"{v / MIB:,.1f}" if v < 100 * MIB else f"{v / MIB:,.0f}"


def fmt_ms(v: Any) -> str:
    return "-" if v is None else f"{v:,.1f}"


def fmt_size(v: Any) -> str:
    """Bytes in the largest unit that keeps the figure readable (tiny models on CPU hold KiB, d30 GiB)."""
    if v is None:
        return "-"
    for u, div in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(v) >= div:
            return f"{v / div:,.1f} {u}"
    return f"{v} B"


def fmt_metric(v: float, metric: str) -> str:
    """A quality metric's value: fractions as percent, KL in 3 significant digits."""
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf"
    if unit(metric) == "fraction":
        return f"{100 * v:.1f}%"
    if metric == "kl":
        return f"{v:.3g}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


# ---- models ---------------------------------------------------------------------------------------------------
def _simple_table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    return t


def registry_table(rows: list[dict[str, Any]]) -> Table:
    t = _simple_table("model registry (* official weights on HF; per image: bf16 KV, CFG)",
                      ("model", "depth", "C", "H", "S", "L", "px", "params", "KV", "FLOP"))
    for r in rows:
        t.add_row(r["name"] + ("*" if r["official"] else ""), str(r["depth"]), str(r["width"]), str(r["heads"]),
                  str(r["scales"]), str(r["tokens"]), str(r["image_size"]), fmt_count(r["params"]),
                  fmt_bytes(r["kv_bytes_per_image"]), fmt_count(r["flops_per_image"]))
    return t


def subnet_table(rows: list[dict[str, Any]]) -> Table:
    """One model's VARiant subnets (analytic.summary_rows)."""
    r0 = rows[0]
    t = _simple_table(f"{r0['model']} VARiant(d, switch {r0['switch']}, {r0['select']}); analytic, per image, "
                      "bf16 KV, CFG", ("depth", "params", "KV freed", "cut", "KV kept", "cut", "FLOP", "speedup"))
    for r in rows:
        t.add_row(str(r["depth"]), fmt_count(r["params"]), fmt_bytes(r["kv_bytes"]), f"{100 * r['kv_reduction']:.1f}%",
                  fmt_bytes(r["kv_bytes_kept"]), f"{100 * r['kv_reduction_kept']:.1f}%", fmt_count(r["flops"]),
                  f"{r['flops_speedup']:.2f}x")
    return t


# ---- sweep ----------------------------------------------------------------------------------------------------
def sweep_table(rows: list[dict[str, Any]], width: int | None = None) -> Table:
    """Sweep rows (MiB, ms) chosen to fit ``width`` columns (the terminal's): columns empty in every row go,
    then the least needed ones, so numbers are never cut (``21…``); the full rows are in --json and the file.
    The weights label is in the title so random weights are never hidden."""
    width = width or err_console.width
    weights = sorted({str(r.get("weights")) for r in rows}) or ["-"]
    ms, ips = unit("latency_ms_p50", "sweep"), unit("images_per_s", "sweep")     # bytes are shown in MiB
    # (header, cell, priority: lower is dropped first)
    spec: list[tuple[str, Any, int]] = [
        ("depth", lambda r: str(r.get("depth")), 9), ("switch", lambda r: str(r.get("switch")), 8),
        ("batch", lambda r: str(r.get("batch")), 9), ("status", lambda r: str(r.get("status")), 9),
        ("n", lambda r: str(r.get("n") or "-"), 1), (f"p50 {ms}", lambda r: fmt_ms(r.get("latency_ms_p50")), 9),
        (f"p90 {ms}", lambda r: fmt_ms(r.get("latency_ms_p90")), 2),
        (f"decode {ms}", lambda r: fmt_ms(r.get("decode_ms_p50")), 3), (ips, lambda r: fmt_ms(r.get("images_per_s")), 7),
        ("KV MiB", lambda r: fmt_mib(r.get("kv_bytes")), 6), ("KV analytic", lambda r: fmt_mib(r.get("kv_bytes_analytic")), 4),
        ("peak alloc MiB", lambda r: fmt_mib(r.get("peak_allocated_bytes")), 5),
        ("NVML peak MiB", lambda r: fmt_mib(r.get("nvml_peak_used_bytes")), 4)]
    cols = [(h, [f(r) for r in rows], pr) for h, f, pr in spec]
    cols = [c for c in cols if c[2] >= 9 or any(v not in ("-", "None", "") for v in c[1])]
    need = lambda cs: sum(max([len(h), *map(len, vals)]) + 3 for h, vals, _ in cs) + 2   # noqa: E731
    dropped = []
    while need(cols) > width and any(pr < 9 for _, _, pr in cols):
        low = min((c for c in cols if c[2] < 9), key=lambda c: c[2])
        cols.remove(low)
        dropped.append(low[0])
    title = f"sweep {rows[0]['model'] if rows else ''} · weights: {', '.join(weights)}"
    caption = f"not shown at this width: {', '.join(dropped)} (--json or sweep.jsonl have all)" if dropped else None
    t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    for h, _, _ in cols:
        t.add_column(h, justify="left" if h == "status" else "right", no_wrap=True)
    for i, r in enumerate(rows):
        cells = [vals[i] for _, vals, _ in cols]
        style = {"ok": "", "oom": "yellow"}.get(str(r.get("status")), "red")
        if style and "status" in [h for h, _, _ in cols]:
            k = [h for h, _, _ in cols].index("status")
            cells[k] = f"[{style}]{cells[k]}[/]"
        t.add_row(*cells)
    return t


def sweep_point_printer(event: str, i: int, total: int, row: dict[str, Any]) -> None:
    """A sweep progress callback: one stderr line per finished (or skipped) point."""
    if event == "start":
        return
    what = " ".join(f"{k}={row.get(k)}" for k in ("depth", "switch", "batch") if row.get(k) is not None)
    lat = row.get("latency_ms_p50")
    tail = f"{lat:.2f} ms p50" if isinstance(lat, (int, float)) else str(row.get("status", ""))
    err_console.print(f"[{i + 1}/{total}] {'resumed' if event == 'skip' else 'done'} {what}: {tail}",
                      markup=False, highlight=False)


# ---- trace ----------------------------------------------------------------------------------------------------
def trace_scales_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Table:
    """Per-scale memory of one trace run: analytic vs real KV, allocator (or RSS on CPU), NVML."""
    cuda = summary["device"].startswith("cuda")
    t = Table(title=f"trace {summary['model']} depth {summary['depth']} switch {summary['switch']} "
                    f"batch {summary['batch']} {summary['dtype']} · weights: {summary['weights']}",
              caption=summary["nvml"], box=box.SIMPLE_HEAD, pad_edge=False)
    mem_cols = ("alloc Δ", "peak", "reserved") if cuda else ("RSS Δ", "RSS peak", "")
    for c in ("scale", "pn", "blocks", "ms", "KV analytic", "KV cache", *mem_cols, "NVML dev", "NVML proc Δ"):
        if c:
            t.add_column(c, justify="right")
    for r in rows:
        if cuda:
            mem = (fmt_size(r["allocated_delta_bytes"]), fmt_size(r["peak_allocated_bytes"]),
                   fmt_size(r["reserved_bytes"]))
        else:
            mem = (fmt_size(r["rss_delta_bytes"]), fmt_size(r["rss_peak_bytes"]))
        t.add_row(str(r["scale"]), str(r["pn"]), str(r["blocks"]), f"{r['elapsed_ms']:.1f}",
                  fmt_size(r["kv_bytes_analytic"]), fmt_size(r["kv_bytes_cache"]), *mem,
                  fmt_size(r["nvml_device_used_bytes"]), fmt_size(r["nvml_process_delta_bytes"]))
    return t


def trace_summary_lines(s: dict[str, Any]) -> list[str]:
    """A trace summary row as a few sentences: latency, sampler rate and overhead, analytic vs measured."""
    lines = [f"generate {s['latency_ms']:.1f} ms + decode {s['decode_ms']:.1f} ms; "
             f"analytic KV == cache bytes at every scale: {s['analytic_equals_cache']}"]
    if s["sampler_samples"]:
        lines.append(f"NVML sampler: {s['sampler_samples']} samples at {s['sampler_hz']:.0f} Hz "
                     f"(asked {1000 / s['sampler_interval_ms']:.0f} Hz); peak device "
                     f"{fmt_size(s['nvml_peak_used_bytes'])}, process {fmt_size(s['nvml_peak_process_used_bytes'])}")
    if s["sampler_overhead_pct"] is not None:
        lines.append(f"sampler latency overhead: {s['sampler_overhead_pct']:+.2f}% "
                     f"({s['latency_ms_p50_no_sampler']:.1f} -> {s['latency_ms_p50_with_sampler']:.1f} ms p50, "
                     f"{s['overhead_pairs']} pairs; from minima {s['sampler_overhead_pct_min']:+.2f}%)")
    for key, what in (("analytic_over_allocated_delta", "allocator Δ"),
                      ("analytic_over_nvml_process_delta", "NVML process Δ")):
        if s[key] is not None:
            lines.append(f"last scale: analytic KV / {what} = {s[key]:.4f}")
    return lines


# ---- sensitivity ----------------------------------------------------------------------------------------------
METRIC_TITLES = {"kl": "KL(full || schedule), mean over scales", "token_agreement": "token agreement (coupled "
                 "sampling)", "psnr": "PSNR vs full samples (dB)", "ssim": "SSIM vs full samples",
                 "toy_acc": "toy classifier accuracy", "toy_fd": "toy feature Fréchet distance", "fid": "FID"}


def _damage(values: Sequence[float], higher_is_better: bool) -> list[float]:
    """0 = least damage in this matrix, 1 = most (inf PSNR counts as no damage)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [0.0] * len(values)
    lo, hi = min(finite), max(finite)
    out = []
    for v in values:
        if math.isnan(v):
            out.append(0.0)
        elif not math.isfinite(v):
            out.append(0.0 if (v > 0) == higher_is_better else 1.0)
        elif hi == lo:
            out.append(0.0)
        else:
            out.append((hi - v) / (hi - lo) if higher_is_better else (v - lo) / (hi - lo))
    return out


def matrix_table(rows: list[dict[str, Any]], mode: str, metric: str, full_depth: int = 0) -> Table | None:
    """One sensitivity matrix, each cell its value and [95% interval], coloured green -> yellow -> red by damage
    within the matrix."""
    from varbench.quality.matrices import matrix, matrix_intervals

    labels, depths, vals = matrix(rows, mode, metric)
    if not labels:
        return None
    cis = matrix_intervals(rows, mode, metric)
    flat = _damage([v for r in vals for v in r], direction(metric) == "higher")
    ns = sorted({n for _, _, n in cis.values() if n})
    kinds = sorted({str(r["kl_kind"]) for r in rows if r.get("metric") == metric and r.get("kl_kind")})
    title = f"{METRIC_TITLES.get(metric, metric)}{' (' + ', '.join(kinds) + ')' if kinds else ''} · mode {mode}"
    if ns:
        title += f" · [95% interval], n = {', '.join(map(str, ns))}"
    t = Table(title=title, title_justify="left")
    t.add_column("group" if mode == "groups" else ("scale" if mode == "single" else "from scale"))
    for d in depths:
        t.add_column(f"d{d} (full)" if d == full_depth else f"d{d}", justify="right")
    for i, (lab, row) in enumerate(zip(labels, vals)):
        cells = []
        for j, v in enumerate(row):
            dmg = flat[i * len(depths) + j]
            lo, hi, _ = cis.get((lab, depths[j]), (None, None, None))
            ci = f" [{fmt_metric(lo, metric)}, {fmt_metric(hi, metric)}]" if lo is not None and hi is not None else ""
            cells.append(Text(fmt_metric(v, metric) + ci,
                              style="green" if dmg < 1 / 3 else "yellow" if dmg < 2 / 3 else "red"))
        t.add_row(lab, *cells)
    return t


class SensitivityProgress:
    """A sensitivity progress callback: the plan as an estimate line, then a rich progress bar on stderr."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, event: str, done: int, total: int, info: dict) -> None:
        if event == "plan":
            if info["weights"] == "random":
                err_console.print(Text("RANDOM WEIGHTS (--allow-random): these quality numbers are meaningless; "
                                       "use them for plumbing and timing only", style="bold yellow"))
            err_console.print(f"sensitivity {info['model']} · mode {info['mode']}: {info['cells']} cells × "
                              f"{info['samples']} samples; {info['todo']} to run (about {info['generations']} "
                              "sampled images + as many teacher-forced passes)")
            return
        if self.bar is None:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=err_console, transient=True)
            self.bar.start()
        desc = "full-network reference" if event == "reference" else "cells"
        if self.task is None or self.bar.tasks[self.task].description != desc:
            self.task = self.bar.add_task(desc, total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def fid_table(rows: Sequence[dict[str, Any]]) -> Table:
    """``varbench fid`` rows: FID with its [95% interval], IS ± split std, and the protocol they were scored under."""
    protos = sorted({f"{r['protocol']} (n = {r['n']}, {r['classes']} classes, cfg {r['cfg']:g}, top-k {r['top_k']}, "
                     f"top-p {r['top_p']:g}, ref {r['ref']})" for r in rows})
    extractors = sorted({f"{r['extractor']} ({r['extractor_weights']})" for r in rows})
    t = Table(title="FID · " + "; ".join(protos) + " · features: " + ", ".join(extractors), title_justify="left")
    t.add_column("configuration", overflow="fold")
    for c in ("FID [95%]", "IS ± split std", "GFLOP/img"):
        t.add_column(c, justify="right")
    for r in rows:
        ci = (f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r.get("ci_low") is not None
              and r.get("ci_high") is not None else "")
        is_ = f"{r['is_mean']:.2f} ± {r['is_std']:.2f}" if r.get("is_mean") is not None else "-"
        flops = f"{r['flops'] / 1e9:.2f}" if r.get("flops") is not None else "-"
        t.add_row(str(r["method"]), f"{r['fid']:.2f}{ci}", is_, flops)
    return t
