"""One results schema: JSON-lines rows appended and fsynced as each measurement finishes, plus an atomic
manifest describing the environment they were measured in (DESIGN "Measurement rules": results).

Rows are plain dicts with units in field names; every row carries ``model``, ``weights`` and ``kind``; each kind's
fields, units, key fields and rows file are declared in ``varbench.schema``.
A crash can leave at most a truncated last line, which ``read_rows`` skips, so a rerun resumes cleanly. A folder
has one writer at a time (``lock_dir``), so two runs never resume the same points twice.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from varbench.errors import UsageError
from varbench.schema import SWEEP

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".varbench.lock"


def _git_commit() -> str | None:
    """HEAD of the repo holding this package (None outside a repo or before the first commit).
    ``VARBENCH_GIT_COMMIT`` overrides it: a copied working tree (a remote GPU machine) can carry a stale .git."""
    if os.environ.get("VARBENCH_GIT_COMMIT"):
        return os.environ["VARBENCH_GIT_COMMIT"]
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    out = res.stdout.strip()
    return out if res.returncode == 0 and out else None


def _git_dirty() -> bool | None:
    """Whether tracked files differ from HEAD (the measured code is then HEAD plus uncommitted changes); None
    outside a repo."""
    try:
        res = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(res.stdout.strip()) if res.returncode == 0 else None


def _nvml_driver() -> tuple[str | None, list[str]]:
    """Driver version and GPU names through NVML; (None, []) without it."""
    try:
        import pynvml  # nvidia-ml-py
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no module, no driver, no library: all mean "unknown"
        return None, []
    try:
        drv = pynvml.nvmlSystemGetDriverVersion()
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            n = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(n.decode() if isinstance(n, bytes) else str(n))
        return (drv.decode() if isinstance(drv, bytes) else str(drv)), names
    except Exception:  # noqa: BLE001
        return None, []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def environment() -> dict[str, Any]:
    """What a result depends on besides the code: host, versions, GPU, driver, commit, command, time."""
    env: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "command_line": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else None,
        "start_time": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "torch": None, "cuda": None, "cudnn": None, "gpu_name": None, "gpu_count": 0,
    }
    try:
        import torch
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if torch.cuda.is_available():
            env["gpu_count"] = torch.cuda.device_count()
            env["gpu_name"] = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001 - environment capture must never fail a run
        log.debug("torch environment capture failed: %s", e)
    driver, names = _nvml_driver()
    env["driver"] = driver
    if env["gpu_name"] is None and names:
        env["gpu_name"] = names[0]
    return env


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_manifest(out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None,
                   name: str = MANIFEST_FILE) -> Path:
    """Write ``out_dir/manifest.json`` = environment() updated with ``extra`` (atomically). Returns the path."""
    data = environment()
    data.update(dict(extra or {}))
    path = Path(out_dir) / name
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def read_manifest(out_dir: str | os.PathLike, name: str = MANIFEST_FILE) -> dict[str, Any] | None:
    """The manifest in ``out_dir``, or None if absent/unreadable."""
    try:
        return json.loads((Path(out_dir) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _json_default(o: Any) -> Any:
    """Make numpy scalars, paths and torch dtypes serialisable without importing them here."""
    if hasattr(o, "item") and callable(o.item):
        try:
            return o.item()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def append_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dict(row), default=_json_default, allow_nan=True)
    with open(p, "a+b") as f:
        # if a previous writer died mid-line, start on a fresh line so this row stays parseable
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path_or_dir: str | os.PathLike, name: str = SWEEP.rows_file) -> list[dict[str, Any]]:
    """All rows of a JSONL file (or ``dir/<name>``, sweep rows by default); unparseable lines (a truncated tail)
    are skipped."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / name
    if not p.exists():
        return []
    rows: list[dict[str, Any]] = []
    with open(p, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                log.warning("%s:%d: skipping unparseable line (truncated write?)", p, lineno)
                continue
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def strict_json_value(o: Any) -> Any:
    """The same structure with NaN/inf replaced by None (strict JSON) and keys as strings."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): strict_json_value(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict_json_value(v) for v in o]
    return o


def finite_number(v: Any) -> float | None:
    """A row field as a float, or None when it is missing, a bool, not numeric, NaN or infinite."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def row_key(row: Mapping[str, Any], fields: Iterable[str]) -> tuple:
    """Hashable identity of a row over ``fields`` (lists and dicts become tuples), used to skip finished points."""
    def norm(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(norm(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, norm(x)) for k, x in v.items()))
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v
    return tuple(norm(row.get(f)) for f in fields)


# ---- one writer per results folder ------------------------------------------------------------------------------
_HELD: set[str] = set()          # folders this process holds (a nested writer in the same process is the same one)


@contextlib.contextmanager
def lock_dir(out_dir: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``out_dir`` for one writer: an fcntl lock on ``out_dir/.varbench.lock`` holding our pid and command.

    Two writers into one folder would both resume the same points and append duplicate rows, so a second one
    gets a UsageError (exit 2) naming the holder. The kernel drops the lock when the holder exits, even by
    SIGKILL, so a stale lock file never blocks a later run.
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    key = str(d.resolve())
    if key in _HELD:
        yield d
        return
    path = d / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise UsageError(f"{d} is being written by {holder}; wait for it to finish or choose another "
                             f"--out") from None
        what = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what})".encode("utf-8"), 0)
        _HELD.add(key)
        try:
            yield d
        finally:
            _HELD.discard(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
