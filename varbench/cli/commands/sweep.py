"""``varbench sweep``: latency / memory over depths × batches, one isolated worker per point, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from varbench.cli.common import (BatchOpt, CkptOpt, DepthsOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, SelectOpt,
                                 VaeOpt, check_select, check_switch, check_weight_files, err_console, ensure_out_dir,
                                 parse_dtype, parse_int_list, print_json, resolve_depths, resolve_device,
                                 resolve_spec)
from varbench.errors import RegressionFailed, UsageError

MIB = 1 << 20


def _mib(v: Any) -> str:
    return "-" if v is None else f"{v / MIB:,.1f}" if v < 100 * MIB else f"{v / MIB:,.0f}"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:,.1f}"


def rows_table(rows: list[dict[str, Any]]) -> Table:
    """Human table of sweep rows (MiB, ms); the weights label is in the title so random weights are never hidden."""
    weights = sorted({str(r.get("weights")) for r in rows}) or ["-"]
    title = f"sweep {rows[0]['model'] if rows else ''} · weights: {', '.join(weights)}"
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ("depth", "switch", "batch", "status", "n", "p50 ms", "p90 ms", "decode ms", "img/s",
            "KV MiB", "KV analytic", "peak alloc MiB", "NVML peak MiB")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i == 3 else "right")
    for r in rows:
        st = r.get("status")
        style = {"ok": "", "oom": "yellow"}.get(st, "red")
        t.add_row(str(r.get("depth")), str(r.get("switch")), str(r.get("batch")), f"[{style}]{st}[/]" if style else st,
                  str(r.get("n") or "-"), _ms(r.get("latency_ms_p50")), _ms(r.get("latency_ms_p90")),
                  _ms(r.get("decode_ms_p50")), _ms(r.get("images_per_s")), _mib(r.get("kv_bytes")),
                  _mib(r.get("kv_bytes_analytic")), _mib(r.get("peak_allocated_bytes")),
                  _mib(r.get("nvml_peak_used_bytes")))
    return t


def _parse_switches(text: str, spec: Any) -> list[int]:
    out = []
    for item in text.split(","):
        try:
            out.append(check_switch(spec, int(item.strip())))
        except ValueError:
            raise UsageError(f"--switch: {item.strip()!r} is not an integer (got {text!r})") from None
    return list(dict.fromkeys(out))


def sweep(
    model: ModelOpt = "var-d30",
    ckpt: CkptOpt = None,
    vae: VaeOpt = None,
    depths: DepthsOpt = None,
    batch: BatchOpt = "1",
    switch: Annotated[str, typer.Option("--switch", help="First scale that runs the subnet (VARiant N); "
                                        "a comma list sweeps several.")] = "6",
    select: SelectOpt = "isometric",
    dtype: DtypeOpt = "bf16",
    device: DeviceOpt = "auto",
    repeats: Annotated[int, typer.Option("--repeats", help="Minimum timed generations per point.")] = 3,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="Minimum timed seconds per point "
                                               "(both this and --repeats must be met).")] = 1.0,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed generations before timing.")] = 1,
    keep_skipped: Annotated[bool, typer.Option("--keep-skipped", help="Keep skipped blocks' KV caches "
                                               "(the paper's accounting).")] = False,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="Replay per-scale CUDA graphs (GPU; "
                                              "keeps every block's KV buffers).")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the fast path (GPU): fused "
                                          "element-wise kernels in the blocks (inside the graphs with "
                                          "--cuda-graphs) and the VQ-VAE decoder; compiles during warm-up.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads per worker "
                                                   "(torch.set_num_threads; default: torch's own).")] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="GPU ids to spread points over, one "
                                                   "worker per GPU at a time (e.g. 0,1), each pinned to its own "
                                                   "share of the CPUs. Launch-bound points (batch 1, eager) can "
                                                   "still run slower than alone: take latency baselines on one "
                                                   "GPU.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Seconds per point before its worker "
                                                     "is killed (default: none).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default out/sweep/MODEL); "
                                                "rerunning into it resumes.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Latency, throughput and memory of VARiant(depth, switch) over a grid, each point in a fresh process."""
    from varbench.measuring.sweep import SweepConfig, run_sweep

    s = resolve_spec(model)
    ds = resolve_depths(s, depths)
    bs = list(dict.fromkeys(parse_int_list(batch, "--batch")))
    sws = _parse_switches(switch, s)
    sel = check_select(select)
    parse_dtype(dtype)
    if repeats < 1:
        raise UsageError(f"--repeats: must be >= 1, got {repeats}")
    if min_seconds < 0 or warmup < 0:
        raise UsageError("--min-seconds and --warmup must be >= 0")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout: must be > 0, got {timeout}")
    check_weight_files(ckpt, vae)
    dev = resolve_device(device)
    gpus = None
    if devices is not None:
        ids = parse_int_list(devices, "--devices", positive=False)
        if any(g < 0 for g in ids):
            raise UsageError(f"--devices: GPU ids must be >= 0, got {devices!r}")
        gpus = [str(g) for g in dict.fromkeys(ids)]
        if not dev.startswith("cuda"):
            raise UsageError("--devices needs --device cuda (it spreads points over GPUs)")
    out_dir = ensure_out_dir(out if out is not None else Path("out") / "sweep" / s.name)
    if dev == "cpu" and (cuda_graphs or compile):
        err_console.print("[yellow]warning: --cuda-graphs and --compile act on CUDA only; on the CPU every point "
                          "runs the plain eager path (the rows still carry the flags as asked)[/]")
    if dev == "cpu" and s.depth >= 16:
        err_console.print(f"[yellow]warning: {s.name} on CPU is slow (minutes per point); var-toy is the small "
                          "model (--model var-toy)[/]")
    cfg = SweepConfig(model=s.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None, depths=ds,
                      batches=bs, switches=sws, select=sel, dtype=dtype.strip().lower(), device=dev,
                      repeats=repeats, min_seconds=min_seconds, warmup=warmup, keep_skipped=keep_skipped,
                      timeout_s=timeout, cuda_graphs=cuda_graphs, compile=compile, threads=threads,
                      devices=gpus)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as bar:
        task = bar.add_task(f"sweep {s.name}", total=len(ds) * len(bs) * len(sws))

        def progress(event: str, i: int, total: int, obj: dict[str, Any]) -> None:
            where = f"depth {obj.get('depth')} batch {obj.get('batch')} switch {obj.get('switch')}"
            if event == "start":
                bar.update(task, description=f"sweep {s.name}: {where}")
            else:
                bar.advance(task)
                if event == "done" and obj.get("status") != "ok":
                    bar.console.print(f"[yellow]{where}: {obj.get('status')}: {obj.get('error')}[/]")

        rows = run_sweep(cfg, out_dir, progress=progress)
    err_console.print(rows_table(rows))
    err_console.print(f"rows: {out_dir / 'sweep.jsonl'}")
    if json_out:
        print_json(rows)
    failed = [r for r in rows if r.get("status") == "error"]
    if failed:
        raise RegressionFailed(f"{len(failed)} of {len(rows)} points failed (status error); rerun to retry them")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
