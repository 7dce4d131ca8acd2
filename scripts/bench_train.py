"""Training-step benchmark: images/s and peak memory of one supernet step, random weights and tokens.

Speed and memory do not depend on the values, so the VQ-VAE is skipped: the teacher-forcing inputs are random
latents and the targets random indices. The step is the trainer's: bf16 autocast (or fp16 + GradScaler), one
masked block-causal SDPA while gradients flow, cross-entropy over all tokens, grad clip 2.0, fused AdamW on CUDA.
Prints one JSON row (status "ok" or "oom"); --out appends it to a JSON-lines file.
Usage: PYTHONPATH=. python3 scripts/bench_train.py --model var-d16 --batch 64 [--depth D --switch 6]
       [--precision bf16|fp16|fp32] [--grad-checkpoint] [--compile] [--profile N]
       [--steps 10] [--device cuda] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import spec as specs  # noqa: E402
from model.schedule import DepthSchedule  # noqa: E402
from model.train.optim import build_adamw  # noqa: E402
from model.var import VAR, compile_blocks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="var-d16")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--depth", type=int, default=0, help="subnet depth for a VARiant step (0 = full)")
    ap.add_argument("--switch", type=int, default=6)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--grad-checkpoint", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="append the JSON row to this JSON-lines file")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block (static shapes)")
    ap.add_argument("--profile", type=int, default=0, help="print the top N CUDA ops of one profiled step")
    a = ap.parse_args()
    dev = torch.device(a.device)
    spec = specs.get(a.model)
    torch.manual_seed(0)
    with dev:
        var = VAR(spec).train()
    if a.compile:
        compile_blocks(var)
    opt = build_adamw(var, lr=1e-4, weight_decay=0.05)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[a.precision]
    scaler = torch.amp.GradScaler(dev.type, enabled=a.precision == "fp16")
    sched = DepthSchedule.variant(spec, a.depth, a.switch) if a.depth else None
    B, L, V = a.batch, spec.L, spec.vae.vocab_size
    x_BLCv = torch.randn(B, L - 1, spec.vae.z_channels, device=dev)
    gt_BL = torch.randint(0, V, (B, L), device=dev)
    labels = torch.randint(0, spec.num_classes, (B,), device=dev)

    def step() -> float:
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = var(labels, x_BLCv, sched, checkpoint_blocks=a.grad_checkpoint)
            loss = F.cross_entropy(logits.view(-1, V), gt_BL.view(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        scaler.step(opt)
        scaler.update()
        return loss.item()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    row = dict(model=a.model, weights="random", batch=B, depth=a.depth or spec.depth, switch=a.switch,
               precision=a.precision, grad_checkpoint=a.grad_checkpoint, compile=a.compile, attn="auto",
               device=str(dev),
               gpu=torch.cuda.get_device_name() if dev.type == "cuda" else None)
    try:
        for _ in range(a.warmup):
            step()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(a.steps):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append((time.perf_counter() - t0) * 1000)
        ms = statistics.median(times)
        row.update(status="ok", step_ms_p50=ms, step_ms_samples=times, images_per_s=B * 1000 / ms,
                   peak_allocated_bytes=torch.cuda.max_memory_allocated() if dev.type == "cuda" else None)
        if a.profile:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                sync()
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.profile,
                                            max_name_column_width=60), file=sys.stderr)
    except torch.cuda.OutOfMemoryError as e:
        row.update(status="oom", error=str(e).splitlines()[0])
    print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
