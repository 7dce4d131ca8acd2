"""``varbench maxbatch --model M [--method ...] [--memory-limit GB]``: the largest batch that fits, predicted from the
analytic memory model and found by probing, each probe an isolated sweep worker (an OOM stays in the worker).

Exit 0; 1 a probe failed for another reason than memory; 2 bad input; 3 the free memory cannot be read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from varbench.cli.common import (CkptOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, SelectOpt, VaeOpt,
                                 check_weight_files, err_console, out_dir_lock, print_json)
from varbench.cli.render import fmt_size
from varbench.errors import UsageError


def probes_table(result: dict[str, Any]) -> Table:
    t = Table(title=f"maxbatch {result['model']} · {result['method']} · {result['dtype']} {result['device']} · "
                    f"limit {fmt_size(result['memory_limit_bytes'])} ({result['limit_source']})",
              box=box.SIMPLE_HEAD, pad_edge=False,
              caption="peak: allocator peak (CUDA) or peak RSS growth (CPU); estimate: the analytic model")
    for h in ("#", "batch", "fits", "peak", "estimate", "s"):
        t.add_column(h, justify="right" if h != "fits" else "left", no_wrap=True)
    for i, p in enumerate(result["probes"], 1):
        fits = Text("yes", style="green") if p["fits"] else Text("no" + ("" if p["status"] == "oom" else
                                                                          f" ({p['status']})"), style="yellow")
        t.add_row(str(i), str(p["batch"]), fits, fmt_size(p["peak_bytes"]), fmt_size(p["predicted_bytes"]),
                  "-" if p["seconds"] is None else f"{p['seconds']:.1f}")
    return t


def summary_line(r: dict[str, Any]) -> str:
    cap = " (the --max-batch cap; larger may fit)" if r["capped"] else ""
    ratio = f", predicted/measured {r['predicted_over_measured']:.3f}" if r["predicted_over_measured"] else ""
    mem = (f"; at batch {r['measured_batch']}: measured peak {fmt_size(r['measured_peak_bytes'])}, estimate "
           f"{fmt_size(r['predicted_bytes_at_measured'])}" if r["measured_batch"] else "")
    return (f"largest batch: predicted {r['predicted_batch']}, measured {r['measured_batch']}{cap}{ratio} "
            f"({r['n_probes']} probes){mem}")


def maxbatch(
    model: ModelOpt = "var-d30",
    ckpt: CkptOpt = None,
    vae: VaeOpt = None,
    method: Annotated[Optional[str], typer.Option("--method", help="An efficiency-method configuration, "
                                                  "NAME[:key=value,...] joined by '+' (varbench methods); "
                                                  "replaces --depth/--switch.")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="VARiant subnet depth (default: the full "
                                                 "network).")] = None,
    switch: Annotated[Optional[int], typer.Option("--switch", help="First scale that runs the subnet "
                                                  "(default: the model's).")] = None,
    select: SelectOpt = "isometric",
    dtype: DtypeOpt = "bf16",
    device: DeviceOpt = "auto",
    memory_limit: Annotated[Optional[float], typer.Option("--memory-limit", help="Memory the point may use, in "
                                                          "GiB: the CUDA allocator is capped to it; on the CPU a "
                                                          "probe whose peak RSS grows past it does not fit "
                                                          "(default: the device's free memory).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the search may probe.")] = 4096,
    granularity: Annotated[int, typer.Option("--granularity", help="Stop when the answer is known within this "
                                             "many images.")] = 1,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="Probe with per-scale CUDA graph replay "
                                              "(they free what the eager path frees).")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Probe with torch.compile (CUDA).")] = False,
    keep_skipped: Annotated[bool, typer.Option("--keep-skipped", help="Skipped blocks keep their KV caches.")] = False,
    allow_random: Annotated[bool, typer.Option("--allow-random", help="Random weights when none are found "
                                               "(memory does not depend on the values).")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads per probe worker.")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Seconds per probe before its worker is "
                                                     "killed.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also append the result to OUT/maxbatch.jsonl "
                                                "(with a manifest).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The largest batch that fits: the analytic prediction, then probes in isolated workers; both reported."""
    from varbench.target import check_dtype, check_select, resolve_device, resolve_spec
    from varbench.workflows.maxbatch import MaxBatchConfig, run_maxbatch

    s = resolve_spec(model)
    if method and (depth is not None or switch is not None):
        raise UsageError("--method replaces --depth/--switch; give one or the other")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be >= 1, got {threads}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout: must be > 0, got {timeout}")
    check_weight_files(ckpt, vae, s)
    cfg = MaxBatchConfig(model=s.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None,
                         method=method, depth=depth, switch=switch, select=check_select(select),
                         dtype=check_dtype(dtype), device=resolve_device(device), memory_limit_gb=memory_limit,
                         max_batch=max_batch, granularity=granularity, cuda_graphs=cuda_graphs, compile=compile,
                         keep_skipped=keep_skipped, allow_random=allow_random, threads=threads, timeout_s=timeout)

    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "predicted":
            p = info["prediction"]
            err_console.print(f"predicted largest batch {p.batch} within {fmt_size(p.limit_bytes)} "
                              f"({info['limit_source']}): {fmt_size(p.fixed_bytes)} fixed + "
                              f"{fmt_size(p.bytes_per_image)} per image (analytic)", markup=False)
        else:
            err_console.print(f"probe batch {info['batch']}: {'fits' if info['fits'] else 'does not fit'} "
                              f"(peak {fmt_size(info['peak_bytes'])})", markup=False, highlight=False)

    if out is not None:
        with out_dir_lock(out) as d:
            result = run_maxbatch(cfg, progress)
            from varbench import results
            from varbench.schema import MAXBATCH

            results.append_row(d / MAXBATCH.rows_file, {"kind": MAXBATCH.name, **result})
            results.write_manifest(d, {"kind": "maxbatch", "model": s.name, "weights": result["weights"]})
    else:
        result = run_maxbatch(cfg, progress)
    err_console.print(probes_table(result))
    err_console.print(summary_line(result), markup=False)
    if result["weights_notice"]:
        err_console.print(Text(result["weights_notice"], style="yellow"))
    if json_out:
        print_json(result)


def register(app: typer.Typer) -> None:
    app.command("maxbatch")(maxbatch)
