"""Ship a trained toy run: its VQ-VAE and one supernet as fp16 safetensors, plus provenance.json.

RUN_DIR is what ``scripts/train_toy.sh RUN_DIR`` wrote: RUN_DIR/vqvae/ (vae.safetensors, vae.json,
metrics.jsonl) and RUN_DIR/STRATEGY/ (checkpoint/model.safetensors, checkpoint/state.json, metrics.jsonl).

    PYTHONPATH=. python3 scripts/export_toy.py RUN_DIR [--strategy progressive] [--device-name NAME] [--dest DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
from pathlib import Path

from safetensors.torch import load_file

from model.checkpoint import save_safetensors

SHIPPED = Path(__file__).resolve().parents[1] / "model" / "weights" / "var-toy"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def half(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the training run directory (scripts/train_toy.sh RUN_DIR)")
    ap.add_argument("--strategy", default="progressive", help="which supernet run of RUN_DIR to ship")
    ap.add_argument("--device-name", default="unknown", help="the GPU it was trained on, for the provenance")
    ap.add_argument("--dest", type=Path, default=SHIPPED, help=f"output directory (default {SHIPPED})")
    args = ap.parse_args()
    var_dir, vae_dir = args.run / args.strategy, args.run / "vqvae"
    var_sd = load_file(str(var_dir / "checkpoint" / "model.safetensors"))
    vae_sd = load_file(str(vae_dir / "vae.safetensors"))
    args.dest.mkdir(parents=True, exist_ok=True)
    meta = {"format": "varbench", "model": "var-toy", "dtype": "float16"}
    save_safetensors(half(var_sd), args.dest / "var.safetensors", meta)
    save_safetensors(half(vae_sd), args.dest / "vae.safetensors", meta)
    state = json.loads((var_dir / "checkpoint" / "state.json").read_text())
    var_rows, vae_rows = rows(var_dir / "metrics.jsonl"), rows(vae_dir / "metrics.jsonl")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    prov = {
        "what": "var-toy: VQ-VAE + VARiant supernet trained by varbench's own trainer on the procedural toy set",
        "commands": ["scripts/train_toy.sh RUN_DIR all", "python3 scripts/export_toy.py RUN_DIR"],
        "seed": 0, "device": args.device_name, "commit": commit,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "vqvae": {"config": json.loads((vae_dir / "vae.json").read_text()), "final": vae_rows[-1] if vae_rows else {}},
        "var": {"strategy": args.strategy, "step": state.get("step"), "epoch": state.get("epoch"),
                "config": state.get("config"), "final_train": var_rows[-1] if var_rows else {},
                "final_val": [r for r in var_rows if r.get("kind") == "val"][-8:]},
        "files": {p.name: p.stat().st_size for p in (args.dest / "var.safetensors", args.dest / "vae.safetensors")},
    }
    (args.dest / "provenance.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    print(json.dumps(prov["files"]))


if __name__ == "__main__":
    main()
