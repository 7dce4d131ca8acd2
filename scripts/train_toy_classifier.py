"""Train the toy classifier on CPU and ship it: model/weights/var-toy/classifier.safetensors + classifier.json.

Re-runnable and seeded: every training batch is freshly rendered from ``np.random.default_rng(seed)`` (infinite
data, no epoch overfitting); held-out accuracy is measured on ``ToyDataset``-style images of another seed
(``--eval-seed``), clean and with VQ-VAE-like blur. Refuses to write weights below ``--min-acc``.

    python scripts/train_toy_classifier.py            # defaults = the shipped weights
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.spec import SPECS  # noqa: E402
from model.toy_classifier import WEIGHTS_DIR, ToyClassifier  # noqa: E402
from model.train.toy_data import CLASS_NAMES, render_batch, render_indices  # noqa: E402

log = logging.getLogger("train_toy_classifier")


def _gaussian_blur(x_B3HW: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (5 taps), sigma given per image."""
    t = torch.arange(-2, 3, dtype=x_B3HW.dtype)
    k_BK = torch.exp(-0.5 * (t.view(1, 5) / sigma_B.view(-1, 1).clamp_min(1e-3)) ** 2)
    k_BK = k_BK / k_BK.sum(1, keepdim=True)
    B, C, H, W = x_B3HW.shape
    y = F.pad(x_B3HW, (2, 2, 2, 2), mode="replicate")
    y = sum(k_BK[:, i].view(B, 1, 1, 1) * y[:, :, :, i:i + W] for i in range(5))
    return sum(k_BK[:, i].view(B, 1, 1, 1) * y[:, :, i:i + H, :] for i in range(5))


def degrade(x_B3HW: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Mild corruptions a VQ-VAE reconstruction shows: blur, 2x down-up resampling, noise, colour shifts."""
    B = x_B3HW.shape[0]
    r = lambda: torch.rand(B, generator=gen)  # noqa: E731
    blur = r() < 0.5 * strength
    x = torch.where(blur.view(B, 1, 1, 1), _gaussian_blur(x_B3HW, 0.3 + 0.9 * r()), x_B3HW)
    down = r() < 0.3 * strength
    du = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    x = torch.where(down.view(B, 1, 1, 1), du, x)
    noise = torch.randn(x.shape, generator=gen) * (0.04 * strength * r()).view(B, 1, 1, 1)
    gain = 1 + 0.1 * strength * (torch.rand(B, 3, 1, 1, generator=gen) - 0.5)
    shift = 0.06 * strength * (torch.rand(B, 3, 1, 1, generator=gen) - 0.5)
    return ((x + noise) * gain + shift).clamp(0, 1)


@torch.no_grad()
def evaluate(model: ToyClassifier, x_B3HW: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(int((model(x_B3HW[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                  for i in range(0, len(labels), batch))
    return correct / len(labels)


def _git(*cmd: str) -> str | None:
    try:
        out = subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    size = SPECS["var-toy"].image_size
    model = ToyClassifier(num_classes=len(CLASS_NAMES))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    t0, c0, losses = time.perf_counter(), time.process_time(), []
    for step in range(args.steps):
        model.train()
        labels = torch.as_tensor(rng.permutation(np.arange(args.batch) % len(CLASS_NAMES)))
        x = (render_batch(labels, rng, size) + 1) / 2
        x = degrade(x, gen)
        loss = F.cross_entropy(model(x), labels, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            log.info("step %d/%d loss %.4f  %.1fs", step + 1, args.steps, np.mean(losses[-100:]),
                     time.perf_counter() - t0)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0

    x_ev, y_ev = render_indices(range(args.eval_n), args.eval_seed, size, len(CLASS_NAMES))
    x_ev = (x_ev + 1) / 2
    acc = evaluate(model, x_ev, y_ev)
    acc_deg = evaluate(model, degrade(x_ev, torch.Generator().manual_seed(args.eval_seed)), y_ev)
    log.info("held-out accuracy %.4f (degraded %.4f) on %d images of seed %d", acc, acc_deg, args.eval_n,
             args.eval_seed)
    return {"model": model, "accuracy": acc, "accuracy_degraded": acc_deg, "train_wall_seconds": round(train_s, 1),
            "train_cpu_seconds": round(cpu_s, 1),
            "final_loss": float(np.mean(losses[-100:]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0, help="training seed (model init and data)")
    p.add_argument("--eval-seed", type=int, default=90_001, help="held-out data seed, never used in training")
    p.add_argument("--eval-n", type=int, default=5000)
    p.add_argument("--min-acc", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.eval_seed == args.seed:
        p.error("--eval-seed must differ from --seed")

    res = train(args)
    if res["accuracy"] < args.min_acc:
        log.error("held-out accuracy %.4f < %.2f: weights not written", res["accuracy"], args.min_acc)
        return 1
    from safetensors.torch import save_file

    model: ToyClassifier = res.pop("model")
    args.out.mkdir(parents=True, exist_ok=True)
    wpath = args.out / "classifier.safetensors"
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(wpath), metadata={"config": json.dumps(model.config()), "input_range": "[0,1]"})
    prov = {
        "what": "toy classifier for the var-toy quality metric (class accuracy + Fréchet distance on features)",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "config": model.config(), "input_range": "[0,1]", "image_size": SPECS["var-toy"].image_size,
        "class_names": list(CLASS_NAMES),
        "train_seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "train_data": "fresh render_batch images from np.random.default_rng(train_seed), with blur/noise degrade()",
        "eval_seed": args.eval_seed, "eval_n": args.eval_n, **res,
        "params": sum(p.numel() for p in model.parameters()),
        "weights_sha256": hashlib.sha256(wpath.read_bytes()).hexdigest(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD") or None,
        "git_dirty": bool(_git("status", "--porcelain", "--", "model", "scripts")),
        "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "device": f"cpu ({platform.processor() or platform.machine()}, "
                                                       f"{args.threads} thread(s))",
    }
    (args.out / "classifier.json").write_text(json.dumps(prov, indent=2) + "\n")
    log.info("wrote %s (%d bytes) and classifier.json", wpath, wpath.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
