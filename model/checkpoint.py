"""Checkpoint I/O: official ``.pth`` files (never unpickled beyond tensors) and our own safetensors.

Security: ``.pth`` goes only through ``torch.load(weights_only=True)``; a pickle that names any other object is
refused before it can run. Strictness: every key and shape is checked, and the error names the first few
differences in one readable line (DESIGN "Reliability and security").
"""
from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .spec import HF_REPO, HF_VAE_FILE, VARSpec

log = logging.getLogger(__name__)

HF_URL = f"https://huggingface.co/{HF_REPO}"
SAFETENSORS_SUFFIXES = (".safetensors",)
_WRAPPER_KEYS = ("model", "state_dict", "module", "trainer", "var_wo_ddp", "ema")
_SHOW = 5


class CheckpointError(ValueError):
    """A file that is not a flat state dict, or whose keys/shapes do not match the model."""


class WeightsNotFound(CheckpointError):
    """Official weights are neither given, nor in the Hugging Face cache, nor downloadable."""


# ---------------------------------------------------------------------------------------------------- loading


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: Tensor}`` mapping from ``.safetensors`` or ``.pth`` (weights_only, on CPU)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist or is not a file")
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p} is not a readable safetensors file: {_first_line(e)}") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{p} was refused: it holds pickled objects other than tensors, and varbench only "
                              f"loads .pth files with weights_only=True ({_first_line(e)})") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError, IndexError) as e:
        # a text file or garbage reaches torch's legacy loader, which fails with whatever it tripped on
        raise CheckpointError(f"{p} is not a readable torch checkpoint: {type(e).__name__}: "
                              f"{_first_line(e)}") from None
    return _as_flat_state(obj, p)


def _as_flat_state(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
    if wrapped:
        raise CheckpointError(f"{p} looks like a training checkpoint (the weights sit under {wrapped[0]!r}); "
                              f"save the raw state dict, e.g. torch.save(ckpt[{wrapped[0]!r}], 'weights.pth')")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(obj[k]).__name__})" for k in bad[:_SHOW])
        raise CheckpointError(f"{p} is not a flat state dict: {len(bad)} entries are not name->tensor: {shown}")
    return dict(obj)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(int(x) for x in v)


def check_state_dict(expected: Mapping[str, Any], got: Mapping[str, Any], what: str) -> None:
    """Raise one ``CheckpointError`` naming up to 5 missing, 5 unexpected and 5 wrong-shape keys.

    ``expected``/``got`` map names to tensors or shapes.
    """
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [(k, _shape(expected[k]), _shape(got[k])) for k in expected
             if k in got and _shape(expected[k]) != _shape(got[k])]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    if wrong:
        shown = ", ".join(f"{k} expected {list(e)} got {list(g)}" for k, e, g in wrong[:_SHOW])
        parts.append(f"{len(wrong)} shape mismatches: {shown}{', ...' if len(wrong) > _SHOW else ''}")
    raise CheckpointError(f"{what} does not match the model: " + "; ".join(parts))


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOW]) + (", ..." if len(keys) > _SHOW else "")


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor] | str | os.PathLike, what: str) -> nn.Module:
    """Check keys/shapes, cast each tensor to the dtype of the module's tensor, then load with strict=True."""
    if not isinstance(sd, Mapping):
        sd = load_state_file(sd)
    own = module.state_dict()
    check_state_dict(own, sd, what)
    cast = {k: v.to(dtype=own[k].dtype) for k, v in sd.items()}
    module.load_state_dict(cast, strict=True)
    return module


# ---------------------------------------------------------------------------------------------------- official


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_without_hub(filename: str) -> Path | None:
    """Find ``filename`` in the HF cache layout (models--org--name/snapshots/<rev>/) without huggingface_hub."""
    repo_dir = _hub_cache_dir() / f"models--{HF_REPO.replace('/', '--')}"
    ref = repo_dir / "refs" / "main"
    revs = [ref.read_text().strip()] if ref.is_file() else []
    snaps = repo_dir / "snapshots"
    revs += sorted(d.name for d in snaps.iterdir()) if snaps.is_dir() else []
    for rev in revs:
        cand = snaps / rev / filename
        if cand.is_file():
            return cand
    return None


def _fetch(filename: str) -> tuple[Path | None, str]:
    """(path or None, why not) for one file of the official repo: cache first, then download when online."""
    try:
        import huggingface_hub as hub
    except ImportError:
        found = _cached_without_hub(filename)
        return found, "" if found else "huggingface_hub is not installed (pip install 'varbench[hub]')"
    cached = hub.try_to_load_from_cache(repo_id=HF_REPO, filename=filename)
    if isinstance(cached, str) and os.path.isfile(cached):
        return Path(cached), ""
    if _offline():
        return None, "HF_HUB_OFFLINE is set"
    try:
        return Path(hub.hf_hub_download(repo_id=HF_REPO, filename=filename)), ""
    except Exception as e:  # noqa: BLE001 - network, auth, missing file: all mean "not available here"
        return None, f"download failed: {_first_line(e)}"


def resolve_official(spec: VARSpec) -> tuple[Path, Path]:
    """(var_path, vae_path) of an official model, from the HF cache or a hub download; else ``WeightsNotFound``."""
    if not spec.official or not spec.hf_file:
        raise WeightsNotFound(f"{spec.name} has no official weights; pass --ckpt PATH --vae PATH")
    found, missing, reasons = {}, [], []
    for name in (spec.hf_file, HF_VAE_FILE):
        path, why = _fetch(name)
        if path is None:
            missing.append(name)
            if why and why not in reasons:
                reasons.append(why)
        found[name] = path
    if missing:
        raise WeightsNotFound(f"official weights for {spec.name} not found ({', '.join(missing)} from {HF_URL}; "
                              f"{'; '.join(reasons) or 'not cached'}): pass --ckpt PATH --vae PATH")
    log.info("official weights for %s: %s, %s", spec.name, found[spec.hf_file], found[HF_VAE_FILE])
    return found[spec.hf_file], found[HF_VAE_FILE]


# ---------------------------------------------------------------------------------------------------- saving


def save_safetensors(tensors_or_module: Mapping[str, torch.Tensor] | nn.Module, path: str | os.PathLike,
                     metadata: Mapping[str, Any] | None = None) -> Path:
    """Write tensors (or a module's state dict) atomically: temp file in the same directory, then os.replace."""
    from safetensors.torch import save_file

    sd = tensors_or_module.state_dict() if isinstance(tensors_or_module, nn.Module) else tensors_or_module
    out, seen = {}, set()
    for k, v in sd.items():
        t = v.detach().to("cpu").contiguous()
        key = t.untyped_storage().data_ptr() if t.numel() else None
        if key in seen:                       # safetensors refuses shared storage (tied weights): copy
            t = t.clone()
        elif key is not None:
            seen.add(key)
        out[str(k)] = t
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(out, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        os.chmod(tmp, 0o644)                      # mkstemp makes 0600; weights are shared files
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header (provenance of our own files)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
