"""``varbench trace``: KV-cache and device memory at every scale of one generation, with a 1 kHz NVML timeline."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table

from varbench.cli.common import (CkptOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, SelectOpt, SwitchOpt, VaeOpt,
                                 check_select, check_switch, check_weight_files, err_console, ensure_out_dir,
                                 parse_dtype, print_json, resolve_device, resolve_spec)
from varbench.errors import UsageError

MIB = 1 << 20


def _mib(v: Any) -> str:
    """Bytes in the largest unit that keeps the figure readable (tiny models on CPU hold KiB, d30 GiB)."""
    if v is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(v) >= div:
            return f"{v / div:,.1f} {unit}"
    return f"{v} B"


def scales_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Table:
    """Per-scale memory: analytic vs real KV, allocator (or RSS on CPU), NVML."""
    cuda = summary["device"].startswith("cuda")
    t = Table(title=f"trace {summary['model']} depth {summary['depth']} switch {summary['switch']} "
                    f"batch {summary['batch']} {summary['dtype']} · weights: {summary['weights']}",
              caption=summary["nvml"], box=box.SIMPLE_HEAD, pad_edge=False)
    mem_cols = ("alloc Δ", "peak", "reserved") if cuda else ("RSS Δ", "RSS peak", "")
    for c in ("scale", "pn", "blocks", "ms", "KV analytic", "KV cache", *mem_cols, "NVML dev", "NVML proc Δ"):
        if c:
            t.add_column(c, justify="right")
    for r in rows:
        mem = ((_mib(r["allocated_delta_bytes"]), _mib(r["peak_allocated_bytes"]), _mib(r["reserved_bytes"]))
               if cuda else (_mib(r["rss_delta_bytes"]), _mib(r["rss_peak_bytes"])))
        t.add_row(str(r["scale"]), str(r["pn"]), str(r["blocks"]), f"{r['elapsed_ms']:.1f}",
                  _mib(r["kv_bytes_analytic"]), _mib(r["kv_bytes_cache"]), *mem,
                  _mib(r["nvml_device_used_bytes"]), _mib(r["nvml_process_delta_bytes"]))
    return t


def _summary_lines(s: dict[str, Any]) -> list[str]:
    lines = [f"generate {s['latency_ms']:.1f} ms + decode {s['decode_ms']:.1f} ms; "
             f"analytic KV == cache bytes at every scale: {s['analytic_equals_cache']}"]
    if s["sampler_samples"]:
        lines.append(f"NVML sampler: {s['sampler_samples']} samples at {s['sampler_hz']:.0f} Hz "
                     f"(asked {1000 / s['sampler_interval_ms']:.0f} Hz); peak device {_mib(s['nvml_peak_used_bytes'])}"
                     f", process {_mib(s['nvml_peak_process_used_bytes'])}")
    if s["sampler_overhead_pct"] is not None:
        lines.append(f"sampler latency overhead: {s['sampler_overhead_pct']:+.2f}% "
                     f"({s['latency_ms_p50_no_sampler']:.1f} -> {s['latency_ms_p50_with_sampler']:.1f} ms p50, "
                     f"{s['overhead_pairs']} pairs; from minima {s['sampler_overhead_pct_min']:+.2f}%)")
    for key, what in (("analytic_over_allocated_delta", "allocator Δ"),
                      ("analytic_over_nvml_process_delta", "NVML process Δ")):
        if s[key] is not None:
            lines.append(f"last scale: analytic KV / {what} = {s[key]:.4f}")
    return lines


def trace(
    model: ModelOpt = "var-d30",
    ckpt: CkptOpt = None,
    vae: VaeOpt = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="Subnet depth (default: the full network).")] = None,
    switch: SwitchOpt = 6,
    select: SelectOpt = "isometric",
    batch: Annotated[int, typer.Option("--batch", help="Batch size.")] = 1,
    dtype: DtypeOpt = "bf16",
    device: DeviceOpt = "auto",
    interval_ms: Annotated[float, typer.Option("--interval-ms", help="NVML sampling interval (1 = 1 kHz).")] = 1.0,
    keep_skipped: Annotated[bool, typer.Option("--keep-skipped", help="Keep skipped blocks' KV caches.")] = False,
    overhead_pairs: Annotated[int, typer.Option("--overhead-pairs", help="Plain/sampled generation pairs "
                                                "for the sampler-overhead check (0 = skip).")] = 10,
    sampler: Annotated[str, typer.Option("--sampler", help="NVML sampler: auto (a child process when NVML is "
                                         "real, so it never takes the GIL), process or thread.")] = "auto",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default out/trace/MODEL).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Memory at every scale boundary of one generation: analytic KV, real cache bytes, allocator, NVML."""
    from varbench.measuring.trace import TraceConfig, read_trace, run_trace

    s = resolve_spec(model)
    d = s.depth if depth is None else depth
    if not (2 <= d <= s.depth or d == s.depth):
        raise UsageError(f"--depth: {d} is outside 2..{s.depth} ({s.name} has {s.depth} blocks)")
    sw = check_switch(s, switch)
    sel = check_select(select)
    parse_dtype(dtype)
    if batch < 1:
        raise UsageError(f"--batch: must be a positive integer, got {batch}")
    if not interval_ms > 0:
        raise UsageError(f"--interval-ms: must be > 0, got {interval_ms}")
    if sampler not in ("auto", "process", "thread"):
        raise UsageError(f"--sampler: {sampler!r} is not one of auto, process, thread")
    if overhead_pairs < 0:
        raise UsageError(f"--overhead-pairs: must be >= 0, got {overhead_pairs}")
    check_weight_files(ckpt, vae)
    dev = resolve_device(device)
    out_dir = ensure_out_dir(out if out is not None else Path("out") / "trace" / s.name)
    if dev == "cpu" and s.depth >= 16:
        err_console.print(f"[yellow]warning: {s.name} on CPU is slow; var-toy is the small model[/]")
    cfg = TraceConfig(model=s.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None, depth=d,
                      switch=sw, select=sel, batch=batch, dtype=dtype.strip().lower(), device=dev,
                      interval_ms=interval_ms, keep_skipped=keep_skipped, overhead_repeats=overhead_pairs,
                      sampler=sampler)
    with err_console.status(f"tracing {s.name} depth {d} batch {batch} on {dev}"):
        summary = run_trace(cfg, out_dir)
    rows = [r for r in read_trace(out_dir)[0] if r.get("run_id") == summary["run_id"]]
    err_console.print(scales_table(rows, summary))
    for line in _summary_lines(summary):
        err_console.print(line, highlight=False)
    err_console.print(f"rows: {out_dir / 'trace.jsonl'}")
    if json_out:
        print_json({"summary": summary, "scales": rows})


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
