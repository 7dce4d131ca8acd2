"""``varbench fid``: FID and Inception score of real samples under a locked protocol, sharded and resumable."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from varbench.cli.common import (CkptOpt, DepthsOpt, DeviceOpt, InceptionWeightsOpt, JsonOpt, ModelOpt, SelectOpt,
                                 VaeOpt, check_weight_files, err_console, out_dir_lock, print_json)
from varbench.target import parse_int_list, resolve_spec


def fid(
    ref: Annotated[Optional[Path], typer.Option("--ref", help="Reference statistics: an ADM-style .npz with mu "
                                                "and sigma (VIRTUAL_imagenet256_labeled.npz), or an ImageFolder "
                                                "directory (statistics computed once, cached in --out).")] = None,
    inception_weights: InceptionWeightsOpt = None,
    model: ModelOpt = "var-d30",
    ckpt: CkptOpt = None,
    vae: VaeOpt = None,
    depths: DepthsOpt = None,
    switch: Annotated[Optional[str], typer.Option("--switch", help="First scale that runs the subnet; a comma "
                                                  "list scores several (default: the model's).")] = None,
    select: SelectOpt = "isometric",
    method: Annotated[Optional[list[str]], typer.Option("--method", help="An efficiency-method configuration "
                                                        "NAME[:key=value,...] joined by '+' (varbench methods); "
                                                        "repeatable; replaces --depths/--switch.")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Images per configuration (default: the "
                                                   "standard protocol, 50 per class x the model's classes; "
                                                   "fewer is a proxy and labelled so).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per generation.")] = 50,
    shard_images: Annotated[int, typer.Option("--shard-images", help="Images per sample shard (the unit of "
                                              "resume and of the split over torchrun ranks).")] = 1000,
    max_shards: Annotated[Optional[int], typer.Option("--max-shards", help="Generate at most this many new "
                                                      "shards per process, then stop (rerun to continue).")] = None,
    cfg: Annotated[float, typer.Option("--cfg", help="Classifier-free guidance (standard: 1.5).")] = 1.5,
    top_k: Annotated[int, typer.Option("--top-k", help="Sampling top-k (standard: 900).")] = 900,
    top_p: Annotated[float, typer.Option("--top-p", help="Sampling top-p (standard: 0.96).")] = 0.96,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples of the FID interval "
                                           "(features resampled, not images).")] = 100,
    is_splits: Annotated[int, typer.Option("--is-splits", help="Splits of the Inception score.")] = 10,
    out: Annotated[Path, typer.Option("--out", help="Output directory: samples/, fid.jsonl, the cached "
                                      "reference statistics; rerunning into it resumes.")] = Path("out/fid"),
    json_out: JsonOpt = False,
    allow_random: Annotated[bool, typer.Option("--allow-random", help="Fall back to random weights when none "
                                               "are found: plumbing only (the FID of noise is no number).")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """FID (with a 95% feature-bootstrap interval) and Inception score of a schedule's or method's samples against
    reference statistics. Under torchrun each rank generates its share of the shards; rank 0 scores them."""
    from varbench.quality import fid as fid_mod

    spec = resolve_spec(model)
    fcfg = fid_mod.FidConfig(
        model=spec.name, ckpt=str(ckpt) if ckpt else None, vae=str(vae) if vae else None,
        depths=parse_int_list(depths, "--depths") if depths is not None else None,
        switches=parse_int_list(switch, "--switch", positive=False) if switch is not None else None,
        select=select, methods=list(method) if method else None, samples=samples, batch=batch,
        shard_images=shard_images, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p,
        ref=str(ref) if ref else None, inception_weights=str(inception_weights) if inception_weights else None,
        resamples=resamples, is_splits=is_splits, max_shards=max_shards, allow_random=allow_random, device=device)
    fid_mod.check_config(fcfg, spec)              # bad input -> exit 2 before a process group or a model
    check_weight_files(ckpt, vae, spec)
    dist = fid_mod.distributed()
    # one writer per folder: rank 0 holds it (the other ranks only add their own shard files)
    lock = out_dir_lock(out) if dist.rank == 0 else contextlib.nullcontext(Path(out))
    try:
        with lock as out_dir:
            res = fid_mod.run_fid(fcfg, out_dir, dist=dist, progress=_progress)
    finally:
        fid_mod.shutdown(dist)
    if dist.rank != 0:
        return
    if res["rows"]:
        from varbench.cli.render import fid_table

        err_console.print(fid_table(res["rows"]))
        if any(r.get("weights") == "random" for r in res["rows"]):
            err_console.print("[bold yellow]RANDOM WEIGHTS (--allow-random): these numbers are plumbing only[/]")
    for inc in res["incomplete"]:
        err_console.print(f"{inc['method']}: {inc['shards'] - inc['missing']} of {inc['shards']} shards done; "
                          "rerun the same command to continue")
    err_console.print(f"rows: {Path(out_dir) / fid_mod.ROWS_FILE}")
    if json_out:
        print_json(res)


def _progress(event: str, done: int, total: int, info: dict) -> None:
    if event == "shard":
        err_console.print(f"rank {info['rank']}: shard {info['shard'] + 1} of {info['of']} written "
                          f"({done}/{total} this run)")
    elif event == "features":
        err_console.print(f"{info['method']}: extracting features and scoring")


def register(app: typer.Typer) -> None:
    app.command("fid")(fid)
