"""Experiment 2 at toy scale: full-network and subnet quality of each training strategy at equal steps.

For each run in RUN_DIR (progressive, fixed-p0.1, fixed-p1.0, sandwich) and each schedule (full, VARiant d6/d4/d2
at the training switch): toy classifier accuracy and toy Fréchet distance of N generated samples (same labels and
seed for every model). Writes one JSON line per (strategy, depth) to OUT and prints a table.
Usage: PYTHONPATH=. python3 scripts/eval_toy_ablation.py RUN_DIR OUT.jsonl [--samples 1000] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model.pipeline import VARPipeline
from model.schedule import DepthSchedule
from varbench.quality import toy_metric


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--switch", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    rows = []
    for strat in ("progressive", "fixed-p0.1", "fixed-p1.0", "sandwich"):
        ck = args.run / strat / "checkpoint" / "model.safetensors"
        if not ck.exists():
            continue
        pipe = VARPipeline.from_pretrained("var-toy", ck, args.run / "vqvae" / "vae.safetensors", device=args.device)
        spec = pipe.spec
        labels = torch.arange(args.samples) % spec.num_classes
        for depth in (spec.depth, 6, 4, 2):
            sched = DepthSchedule.variant(spec, depth, args.switch)
            imgs = torch.cat([pipe.generate(labels[i:i + 250], seed=i, schedule=sched).images.cpu()
                              for i in range(0, args.samples, 250)])
            q = toy_metric.toy_quality(imgs, labels)
            row = dict(kind="toy_ablation", strategy=strat, depth=depth, switch=args.switch, samples=args.samples,
                       weights=str(ck), **q)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{'strategy':12} {'depth':>5} {'acc':>6} {'fd':>8}")
    for r in rows:
        print(f"{r['strategy']:12} {r['depth']:5d} {r.get('toy_accuracy', float('nan')):6.3f} {r.get('toy_fd', float('nan')):8.3f}")


if __name__ == "__main__":
    main()
