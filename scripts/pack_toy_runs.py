"""Pack toy runs for the trip back from the GPU machine: fp16 weights + metrics (≤ 8 files, each < 16 MB).

Usage: PYTHONPATH=. python3 scripts/pack_toy_runs.py RUN_DIR OUT_DIR
"""
import sys
import tarfile
from pathlib import Path

from safetensors.torch import load_file, save_file

run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with tarfile.open(out / "toymeta.tgz", "w:gz") as tar:
    for d in sorted(p for p in run.iterdir() if (p / "checkpoint" / "model.safetensors").exists()):
        sd = load_file(str(d / "checkpoint" / "model.safetensors"))
        save_file({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()},
                  str(out / f"{d.name}.fp16.safetensors"))
        for f in ("metrics.jsonl", "config.json", "checkpoint/state.json"):
            if (d / f).exists():
                tar.add(d / f, arcname=f"{d.name}/{f}")
print(sorted(p.name for p in out.iterdir()))
