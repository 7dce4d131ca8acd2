"""``varbench trace``: KV-cache and device memory at every scale of one generation, with a 1 kHz NVML timeline."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from varbench.cli.common import (CkptOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, NoMemoryCheckOpt, SelectOpt,
                                 SwitchOpt, VaeOpt,
                                 check_weight_files, err_console, out_dir_lock, print_json)
from varbench.cli.render import trace_scales_table, trace_summary_lines
from varbench.errors import UsageError
from varbench.schema import TRACE_FILE
from varbench.workflows.budget import check_fits, inference_estimate
from varbench.target import check_dtype, check_select, check_switch, resolve_device, resolve_spec


def trace(
    model: ModelOpt = "var-d30",
    ckpt: CkptOpt = None,
    vae: VaeOpt = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="Subnet depth (default: the full network).")] = None,
    switch: SwitchOpt = None,
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
    method: Annotated[Optional[str], typer.Option("--method", help="An efficiency-method configuration "
                                                  "(varbench methods), e.g. scale-window:anchors=2,recent=3; "
                                                  "replaces --depth/--switch.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the "
                                                    "element-wise kernels (default on CUDA).")] = None,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="Replay per-scale CUDA graphs (off by "
                                              "default: a replay allocates nothing, so the allocator and NVML "
                                              "timelines are flat at the graphs' pool).")] = False,
    eager: Annotated[bool, typer.Option("--eager", help="The plain eager path (no compile, no graphs).")] = False,
    profile: Annotated[bool, typer.Option("--profile", help="Also one profiled generation + decode: a "
                                          "torch.profiler Chrome trace (Perfetto) with a range per scale and "
                                          "phase, and on CUDA a memory snapshot (memory_viz), under "
                                          "OUT/profiles/<run id>/.")] = False,
    json_out: JsonOpt = False,
    no_memory_check: NoMemoryCheckOpt = False,
) -> None:
    """Memory at every scale boundary of one generation: analytic KV, real cache bytes, allocator, NVML."""
    from varbench.measuring.trace import TraceConfig, read_trace, run_trace

    s = resolve_spec(model)
    d = s.depth if depth is None else depth
    if not (2 <= d <= s.depth or d == s.depth):
        raise UsageError(f"--depth: {d} is outside 2..{s.depth} ({s.name} has {s.depth} blocks)")
    sw = check_switch(s, switch)
    sel = check_select(select)
    dt = check_dtype(dtype)
    if batch < 1:
        raise UsageError(f"--batch: must be a positive integer, got {batch}")
    if not interval_ms > 0:
        raise UsageError(f"--interval-ms: must be > 0, got {interval_ms}")
    if sampler not in ("auto", "process", "thread"):
        raise UsageError(f"--sampler: {sampler!r} is not one of auto, process, thread")
    if overhead_pairs < 0:
        raise UsageError(f"--overhead-pairs: must be >= 0, got {overhead_pairs}")
    check_weight_files(ckpt, vae, s)
    dev = resolve_device(device)
    out_path = out if out is not None else Path("out") / "trace" / s.name
    check_fits(inference_estimate(s, batch, dt, dev, ckpt is not None, f"{s.name} at batch {batch}"), "trace",
               skip=no_memory_check)
    if dev == "cpu" and s.depth >= 16:
        err_console.print(f"[yellow]warning: {s.name} on CPU is slow; var-toy is the small model[/]")
    if eager:
        if cuda_graphs or compile:
            raise UsageError("--eager contradicts --cuda-graphs / --compile")
        compile = False
    cfg = TraceConfig(model=s.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None, depth=d,
                      switch=sw, select=sel, batch=batch, dtype=dt, device=dev,
                      interval_ms=interval_ms, keep_skipped=keep_skipped, overhead_repeats=overhead_pairs,
                      sampler=sampler, method=method, compile=compile, cuda_graphs=cuda_graphs, profile=profile)
    if method:                               # a bad configuration is exit 2 before anything is built
        from model import methods as methods_mod
        try:
            methods_mod.parse(method, s)
        except methods_mod.MethodError as e:
            raise UsageError(f"--method: {e}") from None
    with out_dir_lock(out_path) as out_dir:
        with err_console.status(f"tracing {s.name} depth {d} batch {batch} on {dev}"):
            summary = run_trace(cfg, out_dir)
        rows = [r for r in read_trace(out_dir)[0] if r.get("run_id") == summary["run_id"]]
    err_console.print(trace_scales_table(rows, summary))
    for line in trace_summary_lines(summary):
        err_console.print(line, highlight=False)
    err_console.print(f"rows: {out_dir / TRACE_FILE}")
    if json_out:
        print_json({"summary": summary, "scales": rows})


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
