"""``varbench sweep``: latency / memory over depths × batches, one isolated worker per point, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from varbench.cli.common import (BatchOpt, CkptOpt, DepthsOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, NoMemoryCheckOpt,
                                 SelectOpt,
                                 VaeOpt, check_weight_files, err_console, out_dir_lock, print_json)
from varbench.cli.render import sweep_table
from varbench.errors import RegressionFailed, UsageError
from varbench.schema import SWEEP
from varbench.workflows.budget import check_fits, inference_estimate
from varbench.target import (check_dtype, check_select, check_switch, parse_int_list, resolve_depths, resolve_device,
                             resolve_spec)


def _parse_switches(text: str | None, spec: Any) -> list[int]:
    if text is None:
        return [check_switch(spec, None)]           # the model's registry default
    out = []
    for item in text.split(","):
        try:
            out.append(check_switch(spec, int(item.strip())))
        except ValueError:
            raise UsageError(f"--switch: {item.strip()!r} is not an integer (got {text!r})") from None
    return list(dict.fromkeys(out))


def _plan_labels(paths: list[Path] | None, spec: Any) -> list[str]:
    """--schedule plan.json -> its "schedule:depths=..." configuration (a one-line error for a bad file)."""
    from varbench.workflows.planning import read_plan
    return [read_plan(p, spec).label for p in paths or ()]


def sweep(
    model: ModelOpt = "var-d30",
    ckpt: CkptOpt = None,
    vae: VaeOpt = None,
    depths: DepthsOpt = None,
    batch: BatchOpt = "1",
    switch: Annotated[Optional[str], typer.Option("--switch", help="First scale that runs the subnet (VARiant N); "
                                                  "a comma list sweeps several (default: the model's, 6 for "
                                                  "the official models).")] = None,
    select: SelectOpt = "isometric",
    dtype: DtypeOpt = "bf16",
    device: DeviceOpt = "auto",
    repeats: Annotated[int, typer.Option("--repeats", help="Minimum timed generations per point.")] = 3,
    min_seconds: Annotated[float, typer.Option("--min-seconds", help="Minimum timed seconds per point "
                                               "(both this and --repeats must be met).")] = 1.0,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed generations before timing.")] = 1,
    keep_skipped: Annotated[bool, typer.Option("--keep-skipped", help="Keep skipped blocks' KV caches "
                                               "(the paper's accounting).")] = False,
    cuda_graphs: Annotated[Optional[bool], typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay "
                                                        "per-scale CUDA graphs (default on CUDA; they free "
                                                        "what the eager path frees).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the "
                                                    "element-wise kernels of the blocks and the VQ-VAE decoder "
                                                    "(default on CUDA; compiles during warm-up, cached on disk "
                                                    "for later workers).")] = None,
    eager: Annotated[bool, typer.Option("--eager", help="The plain eager path (no graphs, no compile): what "
                                        "the default fast path is measured against.")] = False,
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
    method: Annotated[Optional[list[str]], typer.Option("--method", help="An efficiency-method configuration, "
                                                        "NAME[:key=value,...] joined by '+' (varbench methods); "
                                                        "repeatable; replaces the --depths/--switch grid.")] = None,
    schedule: Annotated[Optional[list[Path]], typer.Option("--schedule", help="The per-scale schedule of a "
                                                           "plan.json (varbench plan) as one more configuration; "
                                                           "repeatable; replaces the grid like --method.")] = None,
    energy_seconds: Annotated[float, typer.Option("--energy-seconds", help="GPU: the energy window per point, "
                                                  "generate + decode repeated at least this long (NVML's energy "
                                                  "counter; 0 = no energy pass).")] = 2.0,
    profile: Annotated[bool, typer.Option("--profile", help="Per point, one profiled generation + decode: a "
                                          "torch.profiler Chrome trace (Perfetto) with a range per scale and "
                                          "phase, and on CUDA a memory snapshot (memory_viz), under "
                                          "OUT/profiles/<point>/.")] = False,
    json_out: JsonOpt = False,
    no_memory_check: NoMemoryCheckOpt = False,
) -> None:
    """Latency, throughput and memory of VARiant(depth, switch) over a grid, each point in a fresh process."""
    from varbench.measuring.sweep import SweepConfig, run_sweep

    s = resolve_spec(model)
    ds = resolve_depths(s, depths)
    bs = list(dict.fromkeys(parse_int_list(batch, "--batch")))
    sws = _parse_switches(switch, s)
    sel = check_select(select)
    dt = check_dtype(dtype)
    if repeats < 1:
        raise UsageError(f"--repeats: must be >= 1, got {repeats}")
    if min_seconds < 0 or warmup < 0:
        raise UsageError("--min-seconds and --warmup must be >= 0")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout: must be > 0, got {timeout}")
    if not energy_seconds >= 0:
        raise UsageError(f"--energy-seconds: must be >= 0, got {energy_seconds}")
    check_weight_files(ckpt, vae, s)
    dev = resolve_device(device)
    gpus = None
    if devices is not None:
        ids = parse_int_list(devices, "--devices", positive=False)
        if any(g < 0 for g in ids):
            raise UsageError(f"--devices: GPU ids must be >= 0, got {devices!r}")
        gpus = [str(g) for g in dict.fromkeys(ids)]
        if not dev.startswith("cuda"):
            raise UsageError("--devices needs --device cuda (it spreads points over GPUs)")
    out_path = out if out is not None else Path("out") / "sweep" / s.name
    # on a GPU a point too large becomes an "oom" row (the sweep finds the batch limit); on the CPU the kernel
    # would kill the worker, or the machine, so every point must fit
    b_check = max(bs) if dev == "cpu" else min(bs)
    check_fits(inference_estimate(s, b_check, dt, dev, ckpt is not None, f"{s.name} at batch {b_check}"), "sweep",
               skip=no_memory_check)
    if eager:
        if cuda_graphs or compile:
            raise UsageError("--eager contradicts --cuda-graphs / --compile")
        cuda_graphs = compile = False
    if dev == "cpu" and (cuda_graphs or compile):
        err_console.print("[yellow]warning: --cuda-graphs and --compile act on CUDA only; on the CPU every point "
                          "runs the plain eager path (the rows still carry the flags as asked)[/]")
    if dev == "cpu" and s.depth >= 16:
        err_console.print(f"[yellow]warning: {s.name} on CPU is slow (minutes per point); var-toy is the small "
                          "model (--model var-toy)[/]")
    cfg = SweepConfig(model=s.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None, depths=ds,
                      batches=bs, switches=sws, select=sel, dtype=dt, device=dev,
                      repeats=repeats, min_seconds=min_seconds, warmup=warmup, keep_skipped=keep_skipped,
                      timeout_s=timeout, cuda_graphs=cuda_graphs, compile=compile, threads=threads,
                      devices=gpus, methods=(list(method or []) + _plan_labels(schedule, s)) or None,
                      energy_seconds=energy_seconds, profile=profile)
    from varbench.measuring.sweep import method_grid
    n_conf = len(method_grid(cfg))                      # a bad --method fails here, before any worker
    with out_dir_lock(out_path) as out_dir, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=err_console, transient=False) as bar:
        task = bar.add_task(f"sweep {s.name}", total=n_conf * len(bs))

        def progress(event: str, i: int, total: int, obj: dict[str, Any]) -> None:
            where = f"depth {obj.get('depth')} batch {obj.get('batch')} switch {obj.get('switch')}"
            if event == "start":
                bar.update(task, description=f"sweep {s.name}: {where}")
            else:
                bar.advance(task)
                if event == "done" and obj.get("status") != "ok":
                    bar.console.print(f"[yellow]{where}: {obj.get('status')}: {obj.get('error')}[/]")

        rows = run_sweep(cfg, out_dir, progress=progress)
    err_console.print(sweep_table(rows))
    err_console.print(f"rows: {out_dir / SWEEP.rows_file}")
    if json_out:
        print_json(rows)
    failed = [r for r in rows if r.get("status") == "error"]
    if failed:
        raise RegressionFailed(f"{len(failed)} of {len(rows)} points failed (status error); rerun to retry them")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
