"""Toy-scale strategy ablation: full-network and subnet quality of each training strategy at equal steps.

For each supernet run in RUN_DIR (as ``scripts/train_toy.sh RUN_DIR`` writes them) and each schedule (the full
network, then VARiant-dN at the training switch for every --depths N): toy classifier accuracy and toy Fréchet
distance of --samples generated images, with the same labels and seeds for every model. Writes one JSON line per
(strategy, depth) to OUT.jsonl and prints a table (results/toy/ablation.jsonl: --samples 500).

    PYTHONPATH=. python3 scripts/eval_toy_ablation.py RUN_DIR OUT.jsonl [--samples 1000] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model.schedule import DepthSchedule
from varbench.quality import toy_metric
from varbench.target import ModelTarget, load_pipeline, resolve_device, resolve_weights

STRATEGIES = "progressive,fixed-p0.1,fixed-p1.0,sandwich"
CHUNK = 250         # images per generate call; chunk i uses seed i, so rows are reproducible only at this size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="directory with RUN/vqvae/ and one RUN/STRATEGY/ per supernet run")
    ap.add_argument("out", type=Path, help="JSON-lines output")
    ap.add_argument("--samples", type=int, default=1000, help="generated images per (strategy, depth)")
    ap.add_argument("--switch", type=int, default=4, help="first scale that runs the subnet")
    ap.add_argument("--depths", default="6,4,2", help="subnet depths, after the full network")
    ap.add_argument("--strategies", default=STRATEGIES, help="run subdirectories to evaluate (missing ones skipped)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    rows = []
    for strat in filter(None, (s.strip() for s in args.strategies.split(","))):
        ck = args.run / strat / "checkpoint" / "model.safetensors"
        if not ck.exists():
            continue
        target = ModelTarget("var-toy", str(ck), str(args.run / "vqvae" / "vae.safetensors"),
                             device=resolve_device(args.device))
        weights = resolve_weights(target)
        pipe = load_pipeline(target, weights)
        spec = pipe.spec
        labels = torch.arange(args.samples) % spec.num_classes
        for depth in (spec.depth, *depths):
            sched = DepthSchedule.variant(spec, depth, args.switch)
            imgs = torch.cat([pipe.generate(labels[i:i + CHUNK], seed=i, schedule=sched).images.cpu()
                              for i in range(0, args.samples, CHUNK)])
            q = toy_metric.toy_quality(imgs, labels)
            row = dict(kind="toy_ablation", strategy=strat, depth=depth, switch=args.switch, samples=args.samples,
                       weights=weights.label, **q)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{'strategy':12} {'depth':>5} {'acc':>6} {'fd':>8}")
    for r in rows:
        print(f"{r['strategy']:12} {r['depth']:5d} {r.get('toy_accuracy', float('nan')):6.3f} "
              f"{r.get('toy_fd', float('nan')):8.3f}")


if __name__ == "__main__":
    main()
