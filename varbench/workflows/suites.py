"""TOML benchmark suites: one file names a model, a sweep grid, optional sensitivity/trace parts and CI tolerances.

Each table maps straight onto a library config dataclass ([sweep] SweepConfig, [sensitivity] SensitivityConfig,
[trace] TraceConfig, [check] Tolerances): a table's keys are its dataclass's field names and their types the fields'
type hints, so what a suite accepts follows the libraries with no copied schema; [model] sets the fields every part
shares. Validation is strict because a typo in a CI suite would otherwise silently test less: an unknown key, a
wrong type or a depth outside 2..D is a ``UsageError`` naming the file, the key and the problem.
"""
from __future__ import annotations

import dataclasses
import importlib
import tomllib
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union, get_args, get_origin, get_type_hints

from varbench.errors import UsageError
from varbench.gating.regress import Tolerances

PARTS = ("sweep", "sensitivity", "trace")
# table -> the config dataclass it maps onto, imported only when a suite has that table
CONFIGS = {"sweep": "varbench.measuring.sweep:SweepConfig",
           "sensitivity": "varbench.quality.sensitivity:SensitivityConfig",
           "trace": "varbench.measuring.trace:TraceConfig", "check": "varbench.gating.regress:Tolerances"}
# fields that [model] gives every part's config (part tables do not repeat them)
MODEL_FIELDS = ("model", "ckpt", "vae", "allow_random")
# the one suite key that differs from its field: every shipped suite names its model as [model] name = "..."
RENAMES = {("model", "name"): "model"}
# suite keys that are no config field: top-level name/description; [sensitivity] modes runs the part once per
# mode (SensitivityConfig.mode holds one)
EXTRA_KEYS: dict[str, dict[str, Any]] = {"": {"name": str, "description": str}, "sensitivity": {"modes": list[str]}}
GRID_KEYS = ("depths", "batches", "switches", "scales", "groups", "modes")       # an empty list would test nothing
POSITIVE_KEYS = ("batches", "batch", "samples", "repeats", "threads")
CHOICES = {"select": ("isometric", "nested"), "dtype": ("bf16", "fp16", "fp32"), "device": ("auto", "cpu", "cuda"),
           "modes": ("single", "from", "groups"), "mode": ("single", "from", "groups"),
           "metric": ("fidelity", "fid", "toy")}


def _choices(key: str) -> tuple[str, ...]:
    """Enumerations, read from the owning library when importable so the two never drift apart."""
    try:
        if key == "metric":
            from varbench.quality.sensitivity import METRICS
            return tuple(METRICS)
        if key in ("mode", "modes"):
            from varbench.quality.sensitivity import MODES
            return tuple(MODES)
    except ImportError:
        pass
    return CHOICES[key]


def config_class(table: str) -> type:
    """The config dataclass of a table ([sweep] -> SweepConfig, ...)."""
    module, _, name = CONFIGS[table].partition(":")
    return getattr(importlib.import_module(module), name)


def table_keys(table: str) -> dict[str, Any]:
    """Suite key -> type hint for one table ("" = the top level): its config's init fields (less the [model]
    fields in a part table), the renamed keys and the extra keys."""
    if table == "":
        return dict(EXTRA_KEYS[""])
    if table == "model":
        hints = get_type_hints(config_class("sweep"))
        keys = {f: hints[f] for f in MODEL_FIELDS}
    else:
        cls = config_class(table)
        hints = get_type_hints(cls)
        keys = {f.name: hints[f.name] for f in dataclasses.fields(cls)
                if f.init and not (table in PARTS and f.name in MODEL_FIELDS)}
    keys.update(EXTRA_KEYS.get(table, {}))
    for (t, key), name in RENAMES.items():
        if t == table:
            keys[key] = keys.pop(name)
    return keys


@dataclass
class Suite:
    """A validated suite: each table's values converted to its fields' types, keyed as in the file."""

    path: Path
    name: str
    model: dict[str, Any]
    sweep: dict[str, Any] | None = None
    sensitivity: dict[str, Any] | None = None
    trace: dict[str, Any] | None = None
    check: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def tolerances(self) -> Tolerances:
        return build_config(config_class("check"), self.check, self.path, "check")

    def _model_fields(self) -> dict[str, Any]:
        """[model] keyed by field name; a field it does not give keeps each library's default (allow_random)."""
        return {RENAMES.get(("model", k), k): v for k, v in self.model.items()}

    def sweep_config(self) -> Any:
        return build_config(config_class("sweep"), {**self._model_fields(), **(self.sweep or {})}, self.path,
                            "sweep")

    def sensitivity_configs(self) -> list[Any]:
        """One SensitivityConfig per mode (the library runs one mode at a time)."""
        table = dict(self.sensitivity or {})
        modes = table.pop("modes", None) or [table.pop("mode", "single")]
        table.pop("mode", None)
        return [build_config(config_class("sensitivity"), {**self._model_fields(), **table, "mode": m}, self.path,
                             "sensitivity") for m in modes]

    def trace_config(self) -> Any:
        return build_config(config_class("trace"), {**self._model_fields(), **(self.trace or {})}, self.path,
                            "trace")


def _err(path: Path, key: str, problem: str) -> UsageError:
    return UsageError(f"{path}: {key}: {problem}")


# ---- values against type hints ---------------------------------------------------------------------------------
_SCALARS = {bool: ("true or false", "boolean", "booleans"), int: ("an integer", "integer", "integers"),
            float: ("a number", "number", "numbers"), str: ("a string", "string", "strings")}
_SEQUENCES = (list, tuple, Sequence)


class _Mismatch(Exception):
    pass


def _arms(hint: Any) -> list[Any]:
    """The alternatives of a union, less None (TOML has no null); a plain hint is its own one alternative."""
    if get_origin(hint) in (Union, types.UnionType):
        return [a for a in get_args(hint) if a is not type(None)]
    return [hint]


def _representable(hint: Any) -> bool:
    """Whether TOML can spell a value of this type (a VARSpec or a Path object it cannot)."""
    if hint in _SCALARS or hint is Any or hint in (list, tuple, dict):
        return True
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_representable(a) for a in _arms(hint))
    return origin in (*_SEQUENCES, dict) and all(_representable(a) for a in get_args(hint) if a is not Ellipsis)


def _describe(hint: Any, form: int = 0) -> str:
    """"a list of integers" and the like; ``form`` 0 = with an article, 1 = bare, 2 = plural."""
    arms = [a for a in _arms(hint) if _representable(a)]
    if len(arms) != 1:
        return " or ".join(_describe(a, form) for a in arms)
    h, origin, args = arms[0], get_origin(arms[0]) or arms[0], get_args(arms[0])
    if h in _SCALARS:
        return _SCALARS[h][form]
    if origin is tuple and args and args[-1] is not Ellipsis:
        pair = "[" + ", ".join(_describe(a, 1) for a in args) + "] " + ("pair" if len(args) == 2 else "tuple")
        return pair + "s" if form == 2 else pair if form == 1 else f"a {pair}"
    if origin in _SEQUENCES:
        return ("lists" if form == 2 else "list" if form == 1 else "a list") + (
            f" of {_describe(args[0], 2)}" if args and args[0] is not Any else "")
    if origin is dict:
        return ("tables" if form == 2 else "table" if form == 1 else "a table") + (
            f" of {_describe(args[1], 2)}" if len(args) == 2 and args[1] is not Any else "")
    return "values" if form == 2 else "value" if form == 1 else "a value"


def _convert(hint: Any, value: Any) -> Any:
    """``value`` as the hint's type (TOML lists -> list or tuple, integers -> float where a number is asked)."""
    for h in _arms(hint):
        origin, args = get_origin(h) or h, get_args(h)
        if h is Any:
            return value
        if h is bool and isinstance(value, bool):
            return value
        if h is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if h is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if h is str and isinstance(value, str):
            return value
        if origin in _SEQUENCES and isinstance(value, (list, tuple)):
            try:
                if origin is tuple and args and args[-1] is not Ellipsis:
                    if len(value) != len(args):
                        raise _Mismatch
                    return tuple(_convert(a, v) for a, v in zip(args, value))
                items = [_convert(args[0] if args else Any, v) for v in value]
                return tuple(items) if origin is tuple else items
            except _Mismatch:
                continue
        if origin is dict and isinstance(value, dict):
            try:
                return {str(k): _convert(args[1] if len(args) == 2 else Any, v) for k, v in value.items()}
            except _Mismatch:
                continue
    raise _Mismatch


def _convert_key(path: Path, key: str, value: Any, hint: Any) -> Any:
    try:
        return _convert(hint, value)
    except _Mismatch:
        raise _err(path, key, f"must be {_describe(hint)}, got {value!r}") from None


def _read(p: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{p}: suite file does not exist") from None
    except OSError as e:
        raise UsageError(f"{p}: cannot read suite ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: not valid TOML ({e})") from None


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is a one-line UsageError naming file and key."""
    p = Path(path)
    raw = _read(p)
    top, tables = table_keys(""), ("model", *PARTS, "check")
    values: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key in top:
            _convert_key(p, key, value, top[key])
        elif key in tables:
            if not isinstance(value, dict):
                raise _err(p, key, f"must be a table ([{key}])")
            known = table_keys(key)
            for sub in value:
                if sub not in known:
                    raise _err(p, f"{key}.{sub}", f"unknown key (known: {', '.join(known)})")
            values[key] = {sub: _convert_key(p, f"{key}.{sub}", v, known[sub]) for sub, v in value.items()}
        else:
            raise _err(p, key, f"unknown key (known: {', '.join([*tables, *top])})")
    if "name" not in values.get("model", {}):
        raise _err(p, "model.name", "missing (every suite names a model)")
    suite = Suite(path=p, name=raw.get("name", p.stem), model=values["model"], sweep=values.get("sweep"),
                  sensitivity=values.get("sensitivity"), trace=values.get("trace"), check=values.get("check", {}),
                  description=raw.get("description", ""))
    _check_values(suite)
    return suite


def _check_values(s: Suite) -> None:
    """Depths, scales and switches against the named model; enumerations against their choices."""
    from model import spec as spec_mod
    p = s.path
    try:
        sp = spec_mod.get(s.model["name"])
    except ValueError as e:
        raise _err(p, "model.name", str(e)) from None
    D, S = sp.depth, sp.num_scales
    for table in PARTS:
        t = getattr(s, table) or {}
        for key in GRID_KEYS:
            if key in t and len(t[key]) == 0:
                raise _err(p, f"{table}.{key}", "must not be empty")
        if "mode" in t and "modes" in t:
            raise _err(p, f"{table}.mode", "give mode or modes, not both")
        depths = t.get("depths", [t["depth"]] if "depth" in t else [])
        for d in depths:
            if not 2 <= d <= D:
                key = f"{table}.depths" if "depths" in t else f"{table}.depth"
                raise _err(p, key, f"depth {d} is outside 2..{D} ({sp.name} has {D} blocks)")
        switches = t.get("switches", [t["switch"]] if "switch" in t else [])
        for sw in switches:
            if not 0 <= sw <= S:
                key = f"{table}.switches" if "switches" in t else f"{table}.switch"
                raise _err(p, key, f"switch {sw} is outside 0..{S} ({sp.name} has {S} scales)")
        scales = t.get("scales", [])
        if isinstance(scales, str) and scales.strip().lower() != "all":
            raise _err(p, f"{table}.scales", f"{scales!r} is not \"all\" or a list of scale indices")
        for sc in [] if isinstance(scales, str) else scales:
            if not 0 <= sc < S:
                raise _err(p, f"{table}.scales", f"scale {sc} is outside 0..{S - 1} ({sp.name} has {S} scales)")
        for g in t.get("groups", []):
            if len(g) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in g) \
                    or not 0 <= g[0] <= g[1] < S:
                raise _err(p, f"{table}.groups", f"{g!r} is not a [first, last] pair of scales in 0..{S - 1}")
        for key in CHOICES:
            choices = _choices(key)
            vals = t.get(key)
            for v in ([vals] if isinstance(vals, str) else vals or []):
                if v not in choices:
                    raise _err(p, f"{table}.{key}", f"{v!r} is not one of {', '.join(choices)}")
        for key in POSITIVE_KEYS:
            vals = t.get(key)
            for v in ([vals] if isinstance(vals, int) else vals or []):
                if v <= 0:
                    raise _err(p, f"{table}.{key}", f"must be positive, got {v}")
    for pair in s.check.get("ratios", []):
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise _err(p, "check.ratios", f"each ratio is a [slow, fast] pair of strings, got {pair!r}")
        for term in pair:
            t = term.lower()
            if not (t == "full" or (t.startswith("d") and t[1:].isdigit() and 2 <= int(t[1:]) <= D)):
                raise _err(p, "check.ratios", f"{term!r} is not 'full' or dN with N in 2..{D}")
    alpha = s.check.get("alpha")
    if alpha is not None and not 0 < alpha < 1:
        raise _err(p, "check.alpha", f"must be in (0, 1), got {alpha}")
    if s.check.get("speed_factor", 2) < 1:
        raise _err(p, "check.speed_factor", "must be >= 1")


def build_config(cls: type, values: Mapping[str, Any], path: Path, table: str) -> Any:
    """Instantiate a config dataclass from values keyed by field name, each converted to its field's type hint.

    A key with no field of that name is an error naming the key, so a rename in the libraries surfaces here.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            where = f"model.{next((k for (t, k), n in RENAMES.items() if t == 'model' and n == key), key)}" \
                if table in PARTS and key in MODEL_FIELDS else f"{table}.{key}"
            raise _err(path, where, f"{cls.__name__} has no matching field (fields: {', '.join(fields)})")
        kwargs[key] = _convert_key(path, f"{table}.{key}", value, hints[key])
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _err(path, f"[{table}]", f"{cls.__name__} needs {', '.join(missing)}, which the suite does not give")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _err(path, f"[{table}]", f"invalid for {cls.__name__}: {e}") from None


def _resolved(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A part's table with ``device`` resolved (auto -> cuda/cpu; cuda without a GPU -> exit 3)."""
    from varbench.target import resolve_device
    out = dict(values or {})
    if "device" in out:
        out["device"] = resolve_device(out["device"])
    return out


def suite_configs(suite: Suite) -> dict[str, Any]:
    """Every part's library config, built before anything runs so a bad suite fails in seconds, not hours."""
    cfgs: dict[str, Any] = {}
    for part in PARTS:
        table = getattr(suite, part)
        if table is None:
            continue
        resolved = Suite(**{**suite.__dict__, part: _resolved(table)})
        if part == "sensitivity":
            cfgs[part] = resolved.sensitivity_configs()
        else:
            cfgs[part] = getattr(resolved, f"{part}_config")()
    return cfgs


def run_suite(suite: Suite, out_dir: str | Path, progress: Callable[..., None] | bool = False,
              on_part: Callable[[int, int, str, Path], None] | None = None,
              on_sensitivity: Callable[..., None] | None = None) -> dict[str, Path]:
    """Run every part of the suite, each in its own subdirectory of ``out_dir`` (its own manifest and rows).

    Returns part -> directory. The report and the gate read the subdirectories together. ``on_part(i, n, name,
    dir)`` is called as each part starts; ``progress`` is the sweep's and ``on_sensitivity`` the sensitivity's
    own progress callback.
    """
    import logging
    log = logging.getLogger(__name__)
    cfgs = suite_configs(suite)
    if not cfgs:
        raise _err(suite.path, "[sweep]", "the suite has no sweep, sensitivity or trace part")
    out = Path(out_dir)
    dirs: dict[str, Path] = {}
    jobs = [(part, c) for part, cfg in cfgs.items() for c in (cfg if isinstance(cfg, list) else [cfg])]
    from varbench.target import check_weight_files, resolve_spec

    for _, c in jobs:             # a bad checkpoint is exit 2 here, not a failed row in every sweep worker
        check_weight_files(resolve_spec(c.model), c.ckpt, c.vae)
    for i, (part, cfg) in enumerate(jobs):
        name = f"{part}-{cfg.mode}" if part == "sensitivity" else part
        d = out / name
        log.info("suite %s: running %s into %s", suite.name, name, d)
        if on_part is not None:
            on_part(i, len(jobs), name, d)
        try:
            if part == "sweep":
                from varbench.measuring.sweep import run_sweep
                run_sweep(cfg, d, progress=progress)
            elif part == "sensitivity":
                from varbench.quality.sensitivity import run_sensitivity
                run_sensitivity(cfg, d, **({"progress": on_sensitivity} if on_sensitivity else {}))
            else:
                from varbench.measuring.trace import run_trace
                from varbench.target import resolve_weights
                from varbench.workflows.demo import finished_trace

                if finished_trace(d, cfg, resolve_weights(cfg.target()).label) is None:   # resume: once
                    run_trace(cfg, d)
                else:
                    log.info("suite %s: %s already traced in %s, kept", suite.name, name, d)
        except ValueError as e:  # library settings checks: the suite asked for something impossible
            raise _err(suite.path, f"[{part}]", str(e)) from None
        dirs[name] = d
    return dirs


# ---- what a suite will do, said before it runs -------------------------------------------------------------
CPU_FLOPS_PER_THREAD = 2e10     # a rough sustained fp32 matmul rate of one CPU core (20 GFLOP/s)
GPU_FLOPS = 1e14                # a rough sustained bf16 rate of a current data-centre GPU (100 TFLOP/s)
WORKER_START_S = 5.0            # python + torch import + model build of one sweep worker


def suite_plan(suite: Suite) -> list[dict[str, Any]]:
    """One entry per part: what runs, on which device, how many points, and a rough time (analytic FLOPs at an
    assumed device rate) and memory (``varbench.workflows.budget``) estimate, so a GPU suite started on a CPU
    says what it is about to do instead of running silently for minutes."""
    import os

    from model.schedule import DepthSchedule
    from varbench.measuring import analytic
    from varbench.target import resolve_spec
    from varbench.workflows.budget import inference_estimate

    from model import methods as methods_mod

    out: list[dict[str, Any]] = []
    for part, cfg in suite_configs(suite).items():
        for c in cfg if isinstance(cfg, list) else [cfg]:
            spec = resolve_spec(c.model)
            dev = c.device
            rate = GPU_FLOPS if dev.startswith("cuda") else CPU_FLOPS_PER_THREAD * (
                getattr(c, "threads", None) or os.cpu_count() or 1)
            if part == "sweep":
                from varbench.measuring.sweep import method_grid

                gens = c.warmup + c.repeats + 3
                confs = [methods_mod.parse(m, spec) for m, *_ in method_grid(c)]
                flop = sum(analytic.flops(spec, conf.schedule(), b) * gens for conf in confs for b in c.batches)
                points = len(confs) * len(c.batches)
                seconds = flop / rate + WORKER_START_S * points
                batch, what = max(c.batches), f"{points} points ({len(confs)} configurations x {len(c.batches)} " \
                                                 "batches)"
            elif part == "trace":
                gens = 2 + 2 * c.overhead_repeats
                sched = (methods_mod.parse(c.method, spec).schedule() if getattr(c, "method", None)
                         else DepthSchedule.variant(spec, c.depth, c.switch, c.select))
                flop = analytic.flops(spec, sched, c.batch) * gens
                seconds, batch, what = flop / rate, c.batch, f"depth {c.depth} batch {c.batch}"
            else:
                cells = len(c.depths or [2]) * spec.num_scales + 1
                flop = analytic.flops(spec, None, c.batch) * cells * max(1, c.samples // c.batch)
                seconds, batch, what = flop / rate, c.batch, f"mode {c.mode}, {c.samples} samples per cell"
                part = f"sensitivity-{c.mode}"
            dtype = getattr(c, "dtype", None) or ("bf16" if dev.startswith("cuda") else "fp32")
            mem = inference_estimate(spec, batch, dtype, dev, bool(c.ckpt), f"{spec.name} at batch {batch}")
            out.append({"part": part, "model": spec.name, "device": dev, "what": what, "seconds": seconds,
                        "memory_bytes": mem.total, "estimate": mem})
    return out
