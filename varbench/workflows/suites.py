"""TOML benchmark suites: one file names a model, a sweep grid, optional sensitivity/trace parts and CI tolerances.

Validation is strict because a typo in a CI suite would otherwise silently test less: an unknown key, a wrong
type or a depth outside 2..D is a ``UsageError`` naming the file, the key and the problem. The tables are mapped
onto the config dataclasses of ``varbench.measuring.sweep/sensitivity/trace`` by field name, checked against
``dataclasses.fields`` at run time so a rename there fails loudly here.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from varbench.errors import UsageError
from varbench.gating.regress import Tolerances

# key -> (python type(s) accepted, element type for lists or None, human description)
_INT_LIST = (list, int, "a list of integers")
_STR_LIST = (list, str, "a list of strings")
SCHEMA: dict[str, dict[str, tuple]] = {
    "": {"name": (str, None, "a string"), "description": (str, None, "a string")},
    "model": {"name": (str, None, "a string"), "ckpt": (str, None, "a path string"),
              "vae": (str, None, "a path string"), "allow_random": (bool, None, "true or false")},
    "sweep": {"depths": _INT_LIST, "batches": _INT_LIST, "switches": _INT_LIST, "select": (str, None, "a string"),
              "dtype": (str, None, "a string"), "device": (str, None, "a string"),
              "repeats": (int, None, "an integer"), "min_seconds": ((int, float), None, "a number"),
              "warmup": (int, None, "an integer"), "threads": (int, None, "an integer"),
              "cuda_graphs": (bool, None, "true or false"), "compile": (bool, None, "true or false"),
              "keep_skipped": (bool, None, "true or false")},
    "sensitivity": {"modes": _STR_LIST, "mode": (str, None, "a string"), "depths": _INT_LIST, "scales": _INT_LIST,
                    "groups": (list, list, "a list of [first, last] scale pairs such as [[0, 2], [3, 5]]"),
                    "select": (str, None, "a string"), "samples": (int, None, "an integer"),
                    "batch": (int, None, "an integer"), "metric": (str, None, "a string"),
                    "seed": (int, None, "an integer"), "device": (str, None, "a string"),
                    "dtype": (str, None, "a string")},
    "trace": {"depth": (int, None, "an integer"), "switch": (int, None, "an integer"),
              "select": (str, None, "a string"),
              "batch": (int, None, "an integer"), "dtype": (str, None, "a string"),
              "device": (str, None, "a string"), "interval_ms": ((int, float), None, "a number")},
    "check": {"tolerance": (dict, (int, float), "a table of metric = relative tolerance"),
              "memory_tolerance": ((int, float), None, "a number"),
              "analytic_tolerance": ((int, float), None, "a number"),
              "speed_factor": ((int, float), None, "a number"), "alpha": ((int, float), None, "a number"),
              "min_samples": (int, None, "an integer"), "check_speed": (bool, None, "true or false"),
              "ratio_tolerance": ((int, float), None, "a number"),
              "ratios": (list, list, "a list of [slow, fast] pairs such as [[\"full\", \"d2\"]]"),
              "quality_tolerance": ((int, float), None, "a number"),
              "quality_abs": ((int, float), None, "a number")},
}
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

# suite key -> candidate field names in the library config dataclasses (first match wins)
ALIASES: dict[str, tuple[str, ...]] = {
    "model": ("model", "model_name", "name"), "ckpt": ("ckpt", "var_ckpt", "ckpt_path"),
    "vae": ("vae", "vae_ckpt", "vae_path"), "allow_random": ("allow_random",),
    "batches": ("batches", "batch_sizes", "batch"), "switches": ("switches", "switch"),
    "metric": ("metric", "metrics"), "samples": ("samples", "num_samples", "n_samples"),
    "interval_ms": ("interval_ms", "sample_interval_ms"), "min_seconds": ("min_seconds", "min_time_s", "min_s"),
}


@dataclass
class Suite:
    """A validated suite; raw tables are kept so configs can be built once the libraries are importable."""

    path: Path
    name: str
    model: dict[str, Any]
    sweep: dict[str, Any] | None = None
    sensitivity: dict[str, Any] | None = None
    trace: dict[str, Any] | None = None
    check: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def tolerances(self) -> Tolerances:
        c = self.check
        t = Tolerances()
        t.per_metric = {k: float(v) for k, v in c.get("tolerance", {}).items()}
        for key, attr in (("memory_tolerance", "memory"), ("analytic_tolerance", "analytic"),
                          ("speed_factor", "speed_factor"), ("alpha", "alpha"), ("ratio_tolerance", "ratio"),
                          ("quality_tolerance", "quality"), ("quality_abs", "quality_abs")):
            if key in c:
                setattr(t, attr, float(c[key]))
        if "min_samples" in c:
            t.min_samples = int(c["min_samples"])
        if "check_speed" in c:
            t.check_speed = bool(c["check_speed"])
        if "ratios" in c:
            t.ratios = [(str(a), str(b)) for a, b in c["ratios"]]
        return t

    def _model_fields(self) -> dict[str, Any]:
        out = {"model": self.model["name"], "ckpt": self.model.get("ckpt"), "vae": self.model.get("vae")}
        if "allow_random" in self.model:      # else each library keeps its own default (sweep/trace: allowed)
            out["allow_random"] = self.model["allow_random"]
        return out

    def sweep_config(self) -> Any:
        from varbench.measuring.sweep import SweepConfig
        return build_config(SweepConfig, {**self._model_fields(), **(self.sweep or {})}, self.path, "sweep")

    def sensitivity_configs(self) -> list[Any]:
        """One SensitivityConfig per mode (the library runs one mode at a time)."""
        from varbench.quality.sensitivity import SensitivityConfig
        table = dict(self.sensitivity or {})
        modes = table.pop("modes", None) or [table.pop("mode", "single")]
        table.pop("mode", None)
        if "groups" in table:
            table["groups"] = [tuple(g) for g in table["groups"]]
        return [build_config(SensitivityConfig, {**self._model_fields(), **table, "mode": m}, self.path,
                             "sensitivity") for m in modes]

    def trace_config(self) -> Any:
        from varbench.measuring.trace import TraceConfig
        return build_config(TraceConfig, {**self._model_fields(), **(self.trace or {})}, self.path, "trace")


def _err(path: Path, key: str, problem: str) -> UsageError:
    return UsageError(f"{path}: {key}: {problem}")


def _check_type(path: Path, key: str, value: Any, spec: tuple) -> None:
    typ, elem, desc = spec
    typs = typ if isinstance(typ, tuple) else (typ,)
    ok = isinstance(value, typs) and not (isinstance(value, bool) and bool not in typs)
    if ok and typ is list:
        ok = all(isinstance(v, elem) and not isinstance(v, bool) for v in value) and (len(value) > 0 or
                                                                                      key.endswith("ratios"))
    if ok and typ is dict:
        ok = all(isinstance(v, elem) and not isinstance(v, bool) for v in value.values())
    if not ok:
        raise _err(path, key, f"must be {desc}, got {value!r}")


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is a one-line UsageError naming file and key."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{p}: suite file does not exist") from None
    except OSError as e:
        raise UsageError(f"{p}: cannot read suite ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: not valid TOML ({e})") from None
    for key, value in raw.items():
        if key in SCHEMA and key:
            if not isinstance(value, dict):
                raise _err(p, key, f"must be a table ([{key}])")
            for sub, v in value.items():
                if sub not in SCHEMA[key]:
                    raise _err(p, f"{key}.{sub}", f"unknown key (known: {', '.join(SCHEMA[key])})")
                _check_type(p, f"{key}.{sub}", v, SCHEMA[key][sub])
        elif key in SCHEMA[""]:
            _check_type(p, key, value, SCHEMA[""][key])
        else:
            known = [k for k in SCHEMA if k] + list(SCHEMA[""])
            raise _err(p, key, f"unknown key (known: {', '.join(known)})")
    if "model" not in raw or "name" not in raw["model"]:
        raise _err(p, "model.name", "missing (every suite names a model)")
    suite = Suite(path=p, name=raw.get("name", p.stem), model=dict(raw["model"]),
                  sweep=raw.get("sweep"), sensitivity=raw.get("sensitivity"), trace=raw.get("trace"),
                  check=dict(raw.get("check", {})), description=raw.get("description", ""))
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
    for table in ("sweep", "sensitivity", "trace"):
        t = getattr(s, table) or {}
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
        for sc in t.get("scales", []):
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
        for key in ("batches", "batch", "samples", "repeats", "threads"):
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


def build_config(cls: type, values: Mapping[str, Any], path: Path, table: str,
                 convert: Callable[[str, Any, Any], Any] | None = None) -> Any:
    """Instantiate a library config dataclass from suite keys, matching field names (with a few aliases).

    A suite key with no counterpart field is an error naming the key, so renames in the libraries surface.
    Scalars given where the field holds a sequence (and vice versa) are adapted by looking at the default.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        target = next((c for c in (key,) + ALIASES.get(key, ()) if c in fields), None)
        if target is None:
            if value is None or key in ("ckpt", "vae", "allow_random", "model"):
                if value not in (None, False) and key != "model":
                    raise _err(path, f"model.{key}", f"{cls.__name__} has no field for it "
                                                     f"(fields: {', '.join(fields)})")
                continue
            raise _err(path, f"{table}.{key}", f"{cls.__name__} has no matching field "
                                               f"(fields: {', '.join(fields)})")
        kwargs[target] = _adapt(fields[target], value)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _err(path, f"[{table}]", f"{cls.__name__} needs {', '.join(missing)}, which the suite does not give")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _err(path, f"[{table}]", f"invalid for {cls.__name__}: {e}") from None


def _adapt(f: dataclasses.Field, value: Any) -> Any:
    """list <-> scalar and list -> tuple, guided by the field's default or annotation."""
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    ann = str(f.type)
    seq_field = isinstance(default, (list, tuple)) or any(s in ann for s in ("list", "tuple", "Sequence"))
    if isinstance(value, list) and not seq_field and len(value) == 1:
        return value[0]
    if not isinstance(value, list) and seq_field and isinstance(value, (int, str)):
        value = [value]
    if isinstance(value, list) and (isinstance(default, tuple) or "tuple" in ann.lower()):
        return tuple(value)
    if isinstance(value, str) and ("Path" in ann) and value:
        return Path(value)
    return value


def _resolved(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A part's table with ``device`` resolved (auto -> cuda/cpu; cuda without a GPU -> exit 3)."""
    from varbench.cli.common import resolve_device
    out = dict(values or {})
    if "device" in out:
        out["device"] = resolve_device(out["device"])
    return out


def suite_configs(suite: Suite) -> dict[str, Any]:
    """Every part's library config, built before anything runs so a bad suite fails in seconds, not hours."""
    cfgs: dict[str, Any] = {}
    for part in ("sweep", "sensitivity", "trace"):
        table = getattr(suite, part)
        if table is None:
            continue
        resolved = Suite(**{**suite.__dict__, part: _resolved(table)})
        if part == "sensitivity":
            cfgs[part] = resolved.sensitivity_configs()
        else:
            cfgs[part] = getattr(resolved, f"{part}_config")()
    return cfgs


def run_suite(suite: Suite, out_dir: str | Path, progress: Callable[..., None] | bool = False) -> dict[str, Path]:
    """Run every part of the suite, each in its own subdirectory of ``out_dir`` (its own manifest and rows).

    Returns part -> directory. The report and the gate read the subdirectories together.
    """
    import logging
    log = logging.getLogger(__name__)
    cfgs = suite_configs(suite)
    if not cfgs:
        raise _err(suite.path, "[sweep]", "the suite has no sweep, sensitivity or trace part")
    out = Path(out_dir)
    dirs: dict[str, Path] = {}
    jobs = [(part, c) for part, cfg in cfgs.items() for c in (cfg if isinstance(cfg, list) else [cfg])]
    for part, cfg in jobs:
        name = f"{part}-{cfg.mode}" if part == "sensitivity" else part
        d = out / name
        log.info("suite %s: running %s into %s", suite.name, name, d)
        try:
            if part == "sweep":
                from varbench.measuring.sweep import run_sweep
                run_sweep(cfg, d, progress=progress)
            elif part == "sensitivity":
                from varbench.quality.sensitivity import run_sensitivity
                run_sensitivity(cfg, d)
            else:
                from varbench.measuring.trace import run_trace
                run_trace(cfg, d)
        except ValueError as e:  # library settings checks: the suite asked for something impossible
            raise _err(suite.path, f"[{part}]", str(e)) from None
        dirs[name] = d
    return dirs
