"""One model target and one loader for every run kind (sweep worker, trace, sensitivity, demo, train, scripts).

A ``ModelTarget`` says what to build: model, weight files, whether random weights may stand in, dtype, device and
seed. ``resolve_weights`` finds the files once (explicit files > shipped > official HF cache/hub > random) and names
them by source, file name and content hash, so rows from two machines holding the same file agree and no row
carries a local path. ``load_pipeline`` builds the pipeline from both. The checks every command needs on a device,
dtype, depth list or switch live here too; they raise the domain errors of ``varbench.errors`` and the CLI maps
those to exit codes. torch is imported lazily, so the CLI's ``--help`` stays fast.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from varbench.errors import EnvironmentUnavailable, UsageError

if TYPE_CHECKING:
    import torch

    from model.pipeline import VARPipeline
    from model.spec import VARSpec

log = logging.getLogger(__name__)

DTYPE_NAMES = ("bf16", "fp16", "fp32")
DEVICE_NAMES = ("auto", "cpu", "cuda")          # and cuda:N
HASH_CHARS = 12                                 # of the sha256 in a weights label: 48 bits, collisions unlikely
_RESOLVED_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


# ---- options every command shares ---------------------------------------------------------------------------
def parse_int_list(text: str | Sequence[int], name: str, positive: bool = True) -> list[int]:
    """'2,4,8' -> [2, 4, 8]; empty items, non-integers and (if ``positive``) values <= 0 are a UsageError
    naming ``name``."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(v) for v in text]
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


def resolve_spec(model: "str | VARSpec") -> "VARSpec":
    """Registry lookup (a spec passes through); an unknown name is a UsageError listing the known ones."""
    from model import spec as spec_mod

    if isinstance(model, spec_mod.VARSpec):
        return model
    try:
        return spec_mod.get(model)
    except ValueError as e:
        raise UsageError(str(e)) from None


def resolve_depths(spec: "VARSpec", depths: str | Sequence[int] | None, default: Sequence[int] = (2, 4, 8, 16),
                   with_full: bool = True) -> list[int]:
    """Subnet depths in 2..D (D = the full network), duplicates dropped. None -> ``default`` kept below D, plus D
    when ``with_full`` (without it, D alone when no default fits)."""
    D = spec.depth
    if depths is None:
        vals = [d for d in default if 2 <= d < D]
        vals = vals + [D] if with_full else vals or [D]
    else:
        vals = parse_int_list(depths, "--depths", positive=False)   # range checked below, with the range
    bad = [d for d in vals if not 2 <= d <= D]
    if bad:
        raise UsageError(f"--depths: {bad[0]} is outside 2..{D} ({spec.name} has {D} blocks; {D} = full network)")
    return list(dict.fromkeys(vals))


def check_switch(spec: "VARSpec", switch: int | None) -> int:
    """VARiant switch scale N in 0..S-1 (0 = subnet at every scale); None -> the model's registry default.

    N = S is refused: no scale would run the subnet, so a "depth 2" row would measure the full network.
    """
    S = spec.num_scales
    if switch is None:
        return spec.default_switch
    if switch == S:
        raise UsageError(f"--switch: {switch} leaves no scale to the subnet ({spec.name} has {S} scales, "
                         f"0..{S - 1}); the full network is --depths {spec.depth}")
    if not 0 <= switch < S:
        raise UsageError(f"--switch: {switch} is outside 0..{S - 1} ({spec.name} has {S} scales)")
    return switch


def check_select(select: str) -> str:
    from model.schedule import SELECTS

    if select not in SELECTS:
        raise UsageError(f"--select: {select!r} is not one of {', '.join(SELECTS)}")
    return select


def check_dtype(name: str) -> str:
    """'BF16 ' -> 'bf16'; the names rows and configs carry (JSON, no torch needed)."""
    key = str(name).strip().lower()
    if key not in DTYPE_NAMES:
        raise UsageError(f"--dtype: {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return key


def resolve_dtype(name: str | None, device: str) -> str:
    """A dtype name, or None -> bf16 on CUDA and fp32 on the CPU (where bf16 matmuls are slow)."""
    if name is None:
        return "bf16" if device.startswith("cuda") else "fp32"
    return check_dtype(name)


def torch_dtype(name: str) -> "torch.dtype":
    """bf16 | fp16 | fp32 -> the torch dtype."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[check_dtype(name)]


def dtype_name(dtype: "torch.dtype") -> str:
    """Inverse of ``torch_dtype`` for result rows."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def resolve_device(name: str, local_rank: int | None = None) -> str:
    """auto | cpu | cuda | cuda:N -> cpu | cuda | cuda:N. auto = cuda if a GPU is visible; with ``local_rank``
    (one process per GPU under torchrun) a bare cuda becomes cuda:LOCAL_RANK. CUDA asked for but absent, or an
    index past the visible GPUs, is EnvironmentUnavailable (exit 3)."""
    key = str(name).strip().lower()
    if key != "auto" and not _RESOLVED_DEVICE.fullmatch(key):
        raise UsageError(f"--device: {name!r} is not one of {', '.join(DEVICE_NAMES)} (or cuda:N)")
    if key == "cpu":
        return key
    import torch

    has_cuda = torch.cuda.is_available()
    if key == "auto":
        if not has_cuda:
            return "cpu"
        key = "cuda"
    if not has_cuda:
        raise EnvironmentUnavailable(f"--device {key} was asked but no CUDA GPU is available (try --device cpu)")
    if key == "cuda" and local_rank is not None:
        key = f"cuda:{local_rank}"
    if ":" in key and int(key.split(":")[1]) >= torch.cuda.device_count():
        raise EnvironmentUnavailable(f"--device {key}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return key


# ---- the target and its weights -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelTarget:
    """What a run builds. ``model``: a registry name, or a spec (tests, custom variants). ``device`` is resolved
    (``resolve_device``) so rows name the device the run really used; ``seed`` seeds random weights."""

    model: "str | VARSpec"
    ckpt: str | None = None
    vae: str | None = None
    allow_random: bool = False
    dtype: str = "fp32"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise UsageError(f"--dtype: {self.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
        if not _RESOLVED_DEVICE.fullmatch(self.device):
            raise UsageError(f"device {self.device!r} is not resolved (cpu, cuda or cuda:N): resolve_device first")

    @property
    def spec(self) -> "VARSpec":
        return resolve_spec(self.model)

    @property
    def name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name


@dataclass(frozen=True)
class Weights:
    """What a run loads. ``label`` names the weights in rows and manifests: ``random`` or ``source:name@hash``
    (shipped:var-toy@…, hf:var_d30.pth@…, file:my.pth@…); the local paths are for loading only (the sweep hands
    them to its workers on stdin) and are never written into results."""

    label: str
    var_path: str | None = None
    vae_path: str | None = None
    notice: str | None = None

    @property
    def random(self) -> bool:
        return self.var_path is None


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Streaming sha256 of a file, cached per (path, size, mtime): a 2 GB checkpoint is hashed once per process."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise UsageError(f"weights file {path}: {e.strerror or e}") from None
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 23), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_label(source: str, name: str, var_path: str | os.PathLike) -> str:
    """``source:name@<first 12 hex of the VAR file's sha256>``: the content decides, not where the file lies."""
    return f"{source}:{name}@{file_sha256(var_path)[:HASH_CHARS]}"


def _shipped_dir(spec: "VARSpec") -> Path:
    from model import pipeline

    return Path(pipeline.WEIGHTS_DIR) / spec.name      # read at call time: tests point it elsewhere


def find_weight_files(spec: "VARSpec", ckpt: str | None = None,
                      vae: str | None = None) -> tuple[str, str, Path, Path | None]:
    """(source, name, var file, vae file) by precedence: explicit files > shipped (model/weights/<name>/) >
    official files (HF cache, else hub download). ``vae`` overrides the found VQ-VAE; with an explicit ``ckpt``
    and no ``vae`` the vae is None (the pipeline then finds the shipped or official one). Raises
    ``model.checkpoint.WeightsNotFound`` saying why when there are none."""
    from model import pipeline

    shipped = _shipped_dir(spec)
    ship_var = shipped / "var.safetensors"
    if ckpt:
        var_p = Path(ckpt).expanduser()
        if not var_p.is_file():
            raise UsageError(f"--ckpt: {ckpt} is not a file")
        if ship_var.is_file() and var_p.resolve() == ship_var.resolve():
            return "shipped", spec.name, var_p, Path(vae) if vae else None
        return "file", var_p.name, var_p, Path(vae) if vae else None
    source, var_p, vae_p = pipeline.locate_weights(spec)
    return source, (spec.name if source == "shipped" else var_p.name), var_p, Path(vae) if vae else vae_p


def resolve_weights(target: ModelTarget) -> Weights:
    """The target's weights; none found -> random weights with a loud notice, or a UsageError when random
    weights are not allowed (quality on random weights is meaningless)."""
    spec = target.spec
    try:
        source, name, var_p, vae_p = find_weight_files(spec, target.ckpt, target.vae)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - WeightsNotFound, offline hub, missing module: all -> random or exit 2
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        return Weights(weights_label(source, name, var_p), str(var_p), str(vae_p) if vae_p else None)
    if not target.allow_random:
        raise UsageError(f"no weights for {spec.name} ({reason}): pass --ckpt PATH --vae PATH, or --allow-random "
                         "for plumbing and timing only (quality on random weights is meaningless)")
    notice = f"RANDOM WEIGHTS for {spec.name}: {reason} (speed and memory are valid, images are not)"
    log.warning(notice)
    return Weights("random", notice=notice)


def load_pipeline(target: ModelTarget, weights: Weights | None = None) -> "VARPipeline":
    """Build the target's pipeline on its device and dtype; ``weights`` from ``resolve_weights`` unless given.

    The pipeline's ``weights`` attribute is set to the portable label, so whatever reads it writes no path.
    A file that is not a loadable checkpoint is a UsageError (exit 2) naming the model.
    """
    import torch

    from model.checkpoint import CheckpointError
    from model.pipeline import VARPipeline

    spec = target.spec
    w = weights if weights is not None else resolve_weights(target)
    dtype = torch_dtype(target.dtype)
    if w.random:
        pipe = VARPipeline.from_spec(spec, device=target.device, seed=target.seed, dtype=dtype)
    else:
        try:
            pipe = VARPipeline.from_pretrained(spec, var_ckpt=w.var_path, vae_ckpt=w.vae_path,
                                               device=target.device, dtype=dtype)
        except CheckpointError as e:
            raise UsageError(f"cannot load {spec.name} weights ({w.label}): {e}") from None
    pipe.weights = w.label
    return pipe


def _state_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors without reading their data where the format allows it
    (safetensors header; zip-format .pth memory-mapped); anything else goes through the strict loader, whose
    CheckpointError says what is wrong (not a checkpoint, pickled objects refused, ...)."""
    import torch

    from model.checkpoint import SAFETENSORS_SUFFIXES, CheckpointError, load_state_file

    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): tuple(v.shape) for k, v in obj.items()}
    except Exception:  # noqa: BLE001 - the strict loader below names the problem
        pass
    try:
        return {k: tuple(v.shape) for k, v in load_state_file(path).items()}
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a garbage file trips in the loader, it is not a checkpoint
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None


def check_weight_files(spec: "VARSpec", ckpt: str | os.PathLike | None, vae: str | os.PathLike | None,
                       names: tuple[str, str] = ("--ckpt", "--vae")) -> None:
    """``--ckpt`` / ``--vae`` are files holding this model's tensors (keys and shapes): checked once in the
    parent, so a text file, a refused pickle or another model's weights is exit 2 before any worker starts."""
    import torch

    from model.checkpoint import CheckpointError, check_state_dict
    from model.var import VAR
    from model.vqvae import VQVAE

    for p, what in zip((ckpt, vae), names):
        if p is not None and not Path(p).expanduser().is_file():
            raise UsageError(f"{what}: {p} is not a file")
    if ckpt is None and vae is None:
        return
    with torch.device("meta"):
        modules = dict(zip(names, (VAR(spec), VQVAE(spec.vae, spec.patch_nums))))
    for p, what in zip((ckpt, vae), names):
        if p is None:
            continue
        try:
            got = _state_shapes(Path(p).expanduser())
            check_state_dict({k: tuple(v.shape) for k, v in modules[what].state_dict().items()}, got,
                             f"{p} ({spec.name})")
        except CheckpointError as e:
            raise UsageError(f"{what}: {e}") from None


def portable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config for a manifest: weight files by name only (the label in ``weights`` carries their hash)."""
    out = dict(config)
    for key in ("ckpt", "vae"):
        if out.get(key):
            out[key] = Path(str(out[key])).name
    return out
