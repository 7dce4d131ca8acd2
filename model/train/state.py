"""Training checkpoints: weights as safetensors, progress as JSON, optimizer/scaler state in a weights_only torch file.

Layout of ``<out>/checkpoint/``:
- ``model.safetensors``: the VAR state dict (official key names, so any varbench command can load it);
- ``state.json``: config, step, data position (epoch, batch), strategy RNG state;
- ``optim.pt``: optimizer and GradScaler state, only tensors and primitive containers, read back with
  ``torch.load(weights_only=True)``.
A checkpoint is written to ``checkpoint.tmp`` and swapped in, so a crash mid-save leaves the previous one intact.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from .. import checkpoint as ckpt_io

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoint"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"
OPTIM_FILE = "optim.pt"


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``run_dir/checkpoint`` if it holds a complete checkpoint, else ValueError (for ``--resume``)."""
    run = Path(run_dir).expanduser()
    d = run / CKPT_DIR if (run / CKPT_DIR).is_dir() else run
    missing = [f for f in (MODEL_FILE, STATE_FILE, OPTIM_FILE) if not (d / f).exists()]
    if missing:
        raise ValueError(f"no complete training checkpoint in {run} (missing {', '.join(missing)})")
    return d


def save_checkpoint(run_dir: str | Path, model_sd: Mapping[str, torch.Tensor], optim_sd: dict, scaler_sd: dict,
                    meta: dict[str, Any]) -> Path:
    """Write the three files into a temp folder and swap it in place of the previous checkpoint."""
    run = Path(run_dir)
    final, tmp, old = run / CKPT_DIR, run / (CKPT_DIR + ".tmp"), run / (CKPT_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model_sd.items()}
    ckpt_io.save_safetensors(sd, tmp / MODEL_FILE, {"step": str(meta.get("step", 0)),
                                                    "model": str(meta.get("config", {}).get("model", ""))})
    torch.save({"optimizer": optim_sd, "scaler": scaler_sd}, tmp / OPTIM_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint at step %s -> %s", meta.get("step"), final)
    return final


def load_meta(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((checkpoint_dir(run_dir) / STATE_FILE).read_text())


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict, dict, dict[str, Any]]:
    """(model state dict, optimizer state, scaler state, meta); the torch file is read with weights_only=True."""
    d = checkpoint_dir(run_dir)
    model_sd = ckpt_io.load_state_file(d / MODEL_FILE)
    blob = torch.load(d / OPTIM_FILE, map_location=map_location, weights_only=True)
    return model_sd, blob["optimizer"], blob["scaler"], json.loads((d / STATE_FILE).read_text())


def load_init(var: nn.Module, path: str | Path, what: str) -> None:
    """``--init``: an official .pth or our safetensors, loaded strictly (readable diff on mismatch)."""
    ckpt_io.load_strict(var, ckpt_io.load_state_file(path), what)


def model_state(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """Full (unsharded) state dict; with FSDP every rank must call this, rank 0 gets the tensors."""
    if fsdp:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, cfg):
            return model.state_dict()
    return getattr(model, "module", model).state_dict()


def optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.optim_state_dict(model, optimizer)
    return optimizer.state_dict()


def load_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        osd = FSDP.optim_state_dict_to_load(model, optimizer, osd)
    optimizer.load_state_dict(osd)
