"""Where does generation time go? torch.profiler over one generation (random weights), top kernels by CUDA time.

Usage: PYTHONPATH=. python3 scripts/profile_generate.py [--model var-d30] [--batch 64] [--depth D] [--decode]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import spec as specs  # noqa: E402
from model.pipeline import VARPipeline  # noqa: E402
from model.schedule import DepthSchedule  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="var-d30")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--decode", action="store_true")
    args = ap.parse_args()
    spec = specs.get(args.model)
    pipe = VARPipeline.from_spec(spec, device="cuda", dtype=torch.bfloat16)
    if args.decode:
        torch.backends.cudnn.benchmark = True
        pipe.set_decode_dtype(torch.bfloat16)
    sched = DepthSchedule.variant(spec, args.depth, 6) if args.depth else DepthSchedule.full(spec)
    labels = torch.arange(args.batch) % spec.num_classes
    for _ in range(2):
        out = pipe.generate(labels, schedule=sched, decode=args.decode)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        pipe.generate(labels, schedule=sched, decode=args.decode)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    del out


if __name__ == "__main__":
    main()
