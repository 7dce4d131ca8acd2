"""Shared CLI helpers: the option types every command spells alike, output to the right stream.

Human output goes to ``err_console`` (stderr); machine output (``--json``) goes to stdout via ``print_json``. The
checks of models, depths, switches, dtypes and devices belong to the library (``varbench.target``): they raise
``UsageError`` / ``EnvironmentUnavailable`` and the app turns those into exit codes 2 / 3.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console

from varbench.errors import UsageError

err_console = Console(stderr=True)

# Reusable option types, so every command spells the common flags the same way.
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name from the registry (varbench models).")]
DepthsOpt = Annotated[Optional[str], typer.Option("--depths", help="Subnet depths, e.g. 2,4,8,16,30 (the model's "
                                                                     "own depth = full network).")]
SwitchOpt = Annotated[Optional[int], typer.Option("--switch", help="First scale that runs the subnet (VARiant N); "
                                                 "default: the model's (6 for the official models).")]
SelectOpt = Annotated[str, typer.Option("--select", help="Subnet layer selection: isometric | nested.")]
BatchOpt = Annotated[str, typer.Option("--batch", help="Batch sizes, e.g. 1,16,64.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Compute dtype: bf16 | fp16 | fp32.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output directory (every file written goes inside it).")]
CkptOpt = Annotated[Optional[Path], typer.Option("--ckpt", help="VAR transformer weights (.pth or .safetensors).")]
VaeOpt = Annotated[Optional[Path], typer.Option("--vae", help="VQ-VAE weights (.pth or .safetensors).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable results on stdout.")]
InceptionWeightsOpt = Annotated[Optional[Path], typer.Option(
    "--inception-weights", envvar="VARBENCH_INCEPTION_WEIGHTS",
    help="torch-fidelity's FID Inception weights file (pt_inception-2015-12-05-6726825d.pth).")]
NoMemoryCheckOpt = Annotated[bool, typer.Option(
    "--no-memory-check", envvar="VARBENCH_NO_MEMORY_CHECK",
    help="Run even when the analytic memory estimate says the job cannot fit (the estimate errs high).")]


def check_weight_files(ckpt: Path | None, vae: Path | None, spec: Any = None) -> None:
    """--ckpt/--vae must name existing files (and, given the spec, hold that model's tensors): a typo or a bad
    file is exit 2 before any work, not a failed row in every worker."""
    for p, what in ((ckpt, "--ckpt"), (vae, "--vae")):
        if p is not None and not Path(p).is_file():
            raise UsageError(f"{what}: {p} is not a file")
    if spec is not None:
        from varbench.target import check_weight_files as check_loadable

        check_loadable(spec, ckpt, vae)


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


def check_out_file(path: str | Path, option: str) -> Path:
    """An output file the command will write: not a directory, in a folder that exists (or can be made) and is
    writable. Checked before any work, so a bad ``-o`` is exit 2 in a second, not after a long run."""
    p = Path(path).expanduser()
    if p.is_dir() or str(path).endswith(os.sep):
        raise UsageError(f"{option}: {p} is a directory; name the file to write (e.g. {p / 'report.html'})")
    parent = p.parent
    existing = next((q for q in (parent, *parent.parents) if q.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{option}: {existing} is not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: cannot write to {existing} (permission denied)")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{option}: {p} is not writable (permission denied)")
    return p


@contextlib.contextmanager
def out_dir_lock(path: str | Path) -> Iterator[Path]:
    """``ensure_out_dir`` and hold the folder for this command (``varbench.results.lock_dir``): one writer."""
    from varbench.results import lock_dir

    p = ensure_out_dir(path)
    with lock_dir(p) as d:
        yield d
