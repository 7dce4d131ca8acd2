"""Shared CLI helpers: option parsing that turns bad input into ``UsageError`` (exit 2), output to the right stream.

Human output goes to ``err_console`` (stderr); machine output (``--json``) goes to stdout via ``print_json``.
torch is imported lazily so ``varbench --help`` stays fast.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer
from rich.console import Console

from varbench.errors import EnvironmentUnavailable, UsageError

if TYPE_CHECKING:
    import torch

    from model.spec import VARSpec

err_console = Console(stderr=True)

DTYPE_NAMES = ("bf16", "fp16", "fp32")
DEVICE_NAMES = ("auto", "cpu", "cuda")

# Reusable option types, so every command spells the common flags the same way.
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name from the registry (varbench models).")]
DepthsOpt = Annotated[Optional[str], typer.Option("--depths", help="Subnet depths, e.g. 2,4,8,16,30 (the model's "
                                                                     "own depth = full network).")]
SwitchOpt = Annotated[Optional[int], typer.Option("--switch", help="First scale that runs the subnet (VARiant N); "
                                                 "default 6, or S-1 for models with fewer scales.")]
SelectOpt = Annotated[str, typer.Option("--select", help="Subnet layer selection: isometric | nested.")]
BatchOpt = Annotated[str, typer.Option("--batch", help="Batch sizes, e.g. 1,16,64.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Compute dtype: bf16 | fp16 | fp32.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output directory (every file written goes inside it).")]
CkptOpt = Annotated[Optional[Path], typer.Option("--ckpt", help="VAR transformer weights (.pth or .safetensors).")]
VaeOpt = Annotated[Optional[Path], typer.Option("--vae", help="VQ-VAE weights (.pth or .safetensors).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable results on stdout.")]


def parse_int_list(text: str | Sequence[int], name: str, positive: bool = True) -> list[int]:
    """'2,4,8' -> [2, 4, 8]; empty items, non-integers and (if ``positive``) values <= 0 are a UsageError
    naming ``name``."""
    if not isinstance(text, str):
        items = [str(v) for v in text]
    else:
        items = [t.strip() for t in text.split(",")]
    if not items or any(t == "" for t in items):
        raise UsageError(f"{name} needs a comma-separated list of positive integers, got {text!r}")
    out = []
    for t in items:
        try:
            v = int(t)
        except ValueError:
            raise UsageError(f"{name}: {t!r} is not an integer (got {text!r})") from None
        if positive and v <= 0:
            raise UsageError(f"{name}: values must be positive, got {v}")
        out.append(v)
    return out


def resolve_spec(name: str) -> "VARSpec":
    """Registry lookup; an unknown name is a UsageError listing the known ones."""
    from model import spec as spec_mod

    try:
        return spec_mod.get(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def resolve_depths(spec: "VARSpec", depths: str | Sequence[int] | None,
                   default: Sequence[int] = (2, 4, 8, 16)) -> list[int]:
    """Subnet depths in 2..D (D = the full network); None -> ``default`` kept <= D, plus D. Duplicates dropped."""
    D = spec.depth
    if depths is None:
        vals = [d for d in default if 2 <= d < D] + [D]
    else:
        vals = parse_int_list(depths, "--depths", positive=False)   # range checked below, with the range
    bad = [d for d in vals if not 2 <= d <= D]
    if bad:
        raise UsageError(f"--depths: {bad[0]} is outside 2..{D} ({spec.name} has {D} blocks; {D} = full network)")
    return list(dict.fromkeys(vals))


DEFAULT_SWITCH = 6


def check_switch(spec: "VARSpec", switch: int | None) -> int:
    """VARiant switch scale N in 0..S (0 = subnet everywhere, S = full network everywhere).

    None -> the paper's 6, or S-1 when the model has fewer scales (so the last scale still runs the subnet).
    """
    S = spec.num_scales
    if switch is None:
        return min(DEFAULT_SWITCH, S - 1)
    if not 0 <= switch <= S:
        raise UsageError(f"--switch: {switch} is outside 0..{S} ({spec.name} has {S} scales)")
    return switch


def check_select(select: str) -> str:
    from model.schedule import SELECTS

    if select not in SELECTS:
        raise UsageError(f"--select: {select!r} is not one of {', '.join(SELECTS)}")
    return select


def check_weight_files(ckpt: Path | None, vae: Path | None) -> None:
    """--ckpt/--vae must name existing files: a typo is exit 2 before any work, not a crash in a worker."""
    for p, what in ((ckpt, "--ckpt"), (vae, "--vae")):
        if p is not None and not Path(p).is_file():
            raise UsageError(f"{what}: {p} is not a file")


def parse_dtype(text: str) -> "torch.dtype":
    """bf16 | fp16 | fp32 -> torch dtype."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    key = text.strip().lower()
    if key not in table:
        raise UsageError(f"--dtype: {text!r} is not one of {', '.join(DTYPE_NAMES)}")
    return table[key]


def dtype_name(dtype: "torch.dtype") -> str:
    """Inverse of ``parse_dtype`` for result rows."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def resolve_device(text: str) -> str:
    """auto -> cuda if available else cpu; cuda without a GPU -> EnvironmentUnavailable (exit 3)."""
    key = text.strip().lower()
    if key not in DEVICE_NAMES:
        raise UsageError(f"--device: {text!r} is not one of {', '.join(DEVICE_NAMES)}")
    import torch

    has_cuda = torch.cuda.is_available()
    if key == "auto":
        return "cuda" if has_cuda else "cpu"
    if key == "cuda" and not has_cuda:
        raise EnvironmentUnavailable("--device cuda was asked but no CUDA GPU is available (try --device cpu)")
    return key


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item") and callable(obj.item):      # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays, tensors
        return obj.tolist()
    return str(obj)                                       # torch.dtype, enums, ...


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text; NaN/inf become null so the output is strict JSON."""
    from varbench.results import strict_json_value

    return json.dumps(strict_json_value(json.loads(json.dumps(obj, default=_json_default))), indent=indent)


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout (never mixed with human output, which is on stderr)."""
    typer.echo(to_json(obj))


def ensure_out_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents); a file in the way or an unwritable directory is a UsageError."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out: {p} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out: cannot write to {p} ({e.strerror or e})") from None
    return p
