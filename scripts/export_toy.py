"""Ship a trained toy run: fp16 safetensors under model/weights/var-toy/ and provenance.json.

Usage: PYTHONPATH=. python3 scripts/export_toy.py RUN_DIR [--device-name NAME]
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
from pathlib import Path

from safetensors.torch import load_file

from model.checkpoint import save_safetensors

DEST = Path(__file__).resolve().parents[1] / "model" / "weights" / "var-toy"


def last_row(path: Path, kind: str | None = None) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if kind is None or r.get("kind") == kind]
    return rows[-1] if rows else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--strategy", default="progressive")
    ap.add_argument("--device-name", default="unknown")
    args = ap.parse_args()
    DEST.mkdir(parents=True, exist_ok=True)
    var_sd = load_file(str(args.run / args.strategy / "checkpoint" / "model.safetensors"))
    vae_sd = load_file(str(args.run / "vqvae" / "vae.safetensors"))
    half = lambda sd: {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}  # noqa: E731
    meta = {"format": "varbench", "model": "var-toy", "dtype": "float16"}
    save_safetensors(half(var_sd), DEST / "var.safetensors", meta)
    save_safetensors(half(vae_sd), DEST / "vae.safetensors", meta)
    state = json.loads((args.run / args.strategy / "checkpoint" / "state.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    prov = {
        "what": "var-toy: VQ-VAE + VARiant supernet trained by varbench's own trainer on the procedural toy set",
        "commands": ["scripts/train_toy.sh RUN_DIR all", "python3 scripts/export_toy.py RUN_DIR"],
        "seed": 0, "device": args.device_name, "commit": commit,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "vqvae": {"config": json.loads((args.run / "vqvae" / "vae.json").read_text()),
                  "final": last_row(args.run / "vqvae" / "metrics.jsonl")},
        "var": {"strategy": args.strategy, "step": state.get("step"), "epoch": state.get("epoch"),
                "config": state.get("config"), "final_train": last_row(args.run / args.strategy / "metrics.jsonl"),
                "final_val": [r for r in map(json.loads, (args.run / args.strategy / "metrics.jsonl").read_text()
                                             .splitlines()) if r.get("kind") == "val"][-8:]},
        "files": {p.name: p.stat().st_size for p in (DEST / "var.safetensors", DEST / "vae.safetensors")},
    }
    (DEST / "provenance.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    print(json.dumps(prov["files"]))


if __name__ == "__main__":
    main()
