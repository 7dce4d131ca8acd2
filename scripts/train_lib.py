"""Run model.train.loop.train from a JSON config (TrainConfig fields), for machines where the typer CLI cannot be
imported; works under torchrun like ``varbench train``. Usage: torchrun --nproc-per-node 2 scripts/train_lib.py
'{"model": "var-d16", "batch": 64, "max_steps": 50}'
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.train.loop import config_from_dict, train  # noqa: E402

if __name__ == "__main__":
    result = train(config_from_dict(json.loads(sys.argv[1])))
    print(json.dumps({k: result[k] for k in ("step", "loss", "images_per_s")}), flush=True)
