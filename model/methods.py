"""Efficiency methods as named, parameterised configurations that resolve into a depth schedule and plan fields.

A configuration is one or more methods joined by "+", each ``NAME[:key=value,...]``, e.g.
``variant:depth=2,switch=6+kv-fp8``. At most one method sets the depth schedule (variant, early-exit, schedule:
any depth per scale, as ``varbench plan`` writes); the others
change the inference plan (guidance-skip, scale-window, kv-fp8) and compose with any; code adds a refiner model
(composes with the plan methods, not with a schedule). ``canonical()`` is the string rows record
(every parameter spelled out, methods in registry order), ``params()`` the dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .schedule import SELECTS, DepthSchedule
from .spec import VARSpec


class MethodError(ValueError):
    """A configuration that names an unknown method or parameter, a value out of range, or a composition that
    makes no sense (two schedule methods, a method twice)."""


@dataclass(frozen=True)
class Param:
    """One parameter: its type, default (may depend on the model) and range (inclusive; bounds may too)."""

    name: str
    kind: type
    default: Callable[[VARSpec], Any]
    doc: str
    lo: Callable[[VARSpec], int] | None = None
    hi: Callable[[VARSpec], int] | None = None
    choices: tuple[str, ...] = ()

    def parse(self, text: str, spec: VARSpec, method: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise MethodError(f"{method}: {self.name}={text!r} is not {self.kind.__name__}") from None
        self.check(value, spec, method)
        return value

    def check(self, value: Any, spec: VARSpec, method: str) -> None:
        if self.choices and value not in self.choices:
            raise MethodError(f"{method}: {self.name}={value!r} is not one of {', '.join(self.choices)}")
        lo, hi = (self.lo(spec) if self.lo else None), (self.hi(spec) if self.hi else None)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise MethodError(f"{method}: {self.name}={value} is outside {lo}..{hi} for {spec.name}")

    def describe(self, spec: VARSpec | None = None) -> dict[str, Any]:
        kind = "depths" if self.kind is Depths else self.kind.__name__
        out: dict[str, Any] = {"name": self.name, "type": kind, "doc": self.doc}
        if spec is not None:
            default = self.default(spec)
            out["default"] = str(default) if isinstance(default, Depths) else default
            out["range"] = [self.lo(spec) if self.lo else None, self.hi(spec) if self.hi else None]
        if self.choices:
            out["choices"] = list(self.choices)
        return out


@dataclass(frozen=True)
class Method:
    """A registered method: ``sets`` says whether it decides the schedule or changes plan fields."""

    name: str
    doc: str
    paper: str
    sets: str                                   # "schedule" | "plan" | "model" (a second model: code)
    params: tuple[Param, ...] = ()
    schedule: Callable[[VARSpec, Mapping[str, Any]], DepthSchedule] | None = None
    plan: Callable[[VARSpec, Mapping[str, Any]], dict[str, Any]] | None = None
    check: Callable[[VARSpec, Mapping[str, Any]], None] | None = None    # checks across parameters

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise MethodError(f"{self.name}: unknown parameter {name!r} (parameters: {known})")


def _default_switch(spec: VARSpec) -> int:
    return min(6, spec.num_scales - 1)


def compatible(a: VARSpec, b: VARSpec) -> bool:
    """Two specs can share one generation (a drafter and a refiner): the same VQ-VAE, scales and classes."""
    return (a.vae, a.patch_nums, a.num_classes) == (b.vae, b.patch_nums, b.num_classes)


def _default_refiner(spec: VARSpec) -> str:
    """The smallest other registry model that is compatible; the model itself when there is none."""
    from .spec import SPECS
    others = sorted((s for s in SPECS.values() if s.name != spec.name and compatible(s, spec)),
                    key=lambda s: s.depth)
    return others[0].name if others else spec.name


class Depths(tuple):
    """A per-scale depth list written ``12/12/4/2`` (the schedule method's parameter; prints the same way)."""

    def __new__(cls, text: "str | Depths | tuple[int, ...]") -> "Depths":
        if isinstance(text, str):
            text = tuple(int(d) for d in text.split("/"))     # ValueError: Param.parse names the parameter
        return super().__new__(cls, (int(d) for d in text))

    def __str__(self) -> str:
        return "/".join(str(d) for d in self)


def _check_depths(spec: VARSpec, p: Mapping[str, Any]) -> None:
    d = p["depths"]
    if len(d) != spec.num_scales:
        raise MethodError(f"schedule: depths needs {spec.num_scales} values (one per scale), got {len(d)}")
    if any(not 1 <= x <= spec.depth for x in d):
        raise MethodError(f"schedule: every depth must be in 1..{spec.depth} for {spec.name}, got {d}")


def _per_scale(spec: VARSpec, p: Mapping[str, Any]) -> DepthSchedule:
    return DepthSchedule.per_scale(spec, p["depths"], p["select"])


def _early_exit(spec: VARSpec, p: Mapping[str, Any]) -> DepthSchedule:
    first = tuple(range(p["blocks"]))
    return DepthSchedule([first if si >= p["from_scale"] else tuple(range(spec.depth))
                          for si in range(spec.num_scales)])


_D = lambda s: s.depth            # noqa: E731 - bounds read off the spec
_S = lambda s: s.num_scales       # noqa: E731

REGISTRY: tuple[Method, ...] = (
    Method("variant", "the subnet of `depth` blocks from scale `switch` on (VARiant's depth schedules)",
           "VARiant (this project's paper): depth-elastic supernets", "schedule",
           (Param("depth", int, _D, "blocks of the subnet (the model's depth = full network)", lambda s: 2, _D),
            Param("switch", int, _default_switch, "first scale that runs the subnet", lambda s: 0, _S),
            Param("select", str, lambda s: "isometric", "which blocks form the subnet", choices=SELECTS)),
           schedule=lambda spec, p: DepthSchedule.variant(spec, p["depth"], p["switch"], p["select"])),
    Method("early-exit", "run only the first `blocks` blocks from scale `from_scale` on (training-free)",
           "early exit, the nested family's limit case (a training-free baseline)", "schedule",
           (Param("blocks", int, lambda s: max(1, s.depth // 2), "blocks that run", lambda s: 1, _D),
            Param("from_scale", int, lambda s: 0, "first scale that exits early", lambda s: 0,
                  lambda s: s.num_scales - 1)),
           schedule=_early_exit),
    Method("guidance-skip", "no classifier-free guidance from scale `from_scale` on (one row per image)",
           "SkipVAR / StageVAR-style fixed rule: late scales without CFG", "plan",
           (Param("from_scale", int, lambda s: max(1, s.num_scales - 2), "first scale without guidance",
                  lambda s: 1, lambda s: s.num_scales - 1),),
           plan=lambda spec, p: {"cfg_until": p["from_scale"]}),
    Method("scale-window", "each block keeps (and attends to) the KV of the first `anchors` scales and of the "
           "`recent` most recent ones only", "AMS-KV-style scale-wise KV policy (anchor + local scales)", "plan",
           (Param("anchors", int, lambda s: min(2, s.num_scales - 1), "first scales always kept", lambda s: 0,
                  lambda s: s.num_scales - 1),
            Param("recent", int, lambda s: min(3, s.num_scales), "most recent scales kept (the current included)",
                  lambda s: 1, _S)),
           plan=lambda spec, p: {"kv_window": (p["anchors"], p["recent"])}),
    Method("code", "a drafter (this model) runs scales < `from_scale`, the `refiner` model the rest; the refiner's "
           "cache is prefilled on the drafted scales", "CoDe: collaborative decoding (drafter + refiner)", "model",
           (Param("refiner", str, lambda s: _default_refiner(s), "the refiner's registry name (same VQ-VAE, "
                  "scales and classes)"),
            Param("from_scale", int, _default_switch, "first scale the refiner runs", lambda s: 1,
                  lambda s: s.num_scales - 1)),
           plan=lambda spec, p: {"refine_from": p["from_scale"]}),
    Method("schedule", "any depth per scale (a plan from `varbench plan`): the subnet of depths[s] blocks at "
           "scale s", "VARiant's per-scale schedules, chosen from a sensitivity matrix", "schedule",
           (Param("depths", Depths, lambda s: Depths((s.depth,) * s.num_scales),
                  "blocks per scale, '/'-separated (one per scale)"),
            Param("select", str, lambda s: "isometric", "which blocks form each scale's subnet", choices=SELECTS)),
           schedule=_per_scale, check=_check_depths),
    Method("kv-fp8", "the KV cache in float8 e4m3 with a per-block, per-head scale", "fp8 KV-cache quantisation",
           "plan", (), plan=lambda spec, p: {"kv_fp8": True}),
)
METHODS: dict[str, Method] = {m.name: m for m in REGISTRY}


@dataclass(frozen=True)
class Configuration:
    """Methods with every parameter resolved for one model; immutable, hashable, printable as ``canonical()``."""

    spec: VARSpec
    settings: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

    def canonical(self) -> str:
        return "+".join(name + (":" + ",".join(f"{k}={v}" for k, v in kv) if kv else "")
                        for name, kv in self.settings)

    def params(self) -> dict[str, dict[str, Any]]:
        return {name: dict(kv) for name, kv in self.settings}

    def schedule(self) -> DepthSchedule:
        for name, kv in self.settings:
            if METHODS[name].sets == "schedule":
                return METHODS[name].schedule(self.spec, dict(kv)).validate(self.spec)
        return DepthSchedule.full(self.spec)

    def plan_changes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, kv in self.settings:
            if METHODS[name].plan is not None:
                out.update(METHODS[name].plan(self.spec, dict(kv)))
        return out

    def descriptor(self) -> tuple[int, int, str | None]:
        """(depth, switch, select) that rows and point names carry: variant's own, else the blocks of the last
        scale and the first scale that runs fewer than all (select: the schedule method's, else None)."""
        v = self.variant_params()
        if v is not None:
            return v["depth"], v["switch"], v["select"]
        sched, S = self.schedule(), self.spec.num_scales
        switch = next((si for si in range(S) if sched.depth_at(si) < self.spec.depth), S)
        return sched.depth_at(S - 1), switch, self.params().get("schedule", {}).get("select")

    def layers(self) -> tuple[int, ...]:
        """The subnet's blocks (variant: its selection even where it never runs; else the last scale's)."""
        from .schedule import subnet_layers
        v = self.variant_params()
        return subnet_layers(self.spec.depth, v["depth"], v["select"]) if v else self.schedule().layers[-1]

    def refiner(self) -> str | None:
        """The code method's refiner model, or None."""
        return self.params().get("code", {}).get("refiner")

    def variant_params(self) -> dict[str, Any] | None:
        """variant's (depth, switch, select), or None when the schedule is another method's."""
        return self.params().get("variant")


def parse(text: str, spec: VARSpec) -> Configuration:
    """``"variant:depth=2,switch=6+kv-fp8"`` -> a Configuration for ``spec``; MethodError on bad input."""
    text = text.strip()
    if not text:
        raise MethodError("empty method configuration")
    chosen: dict[str, dict[str, Any]] = {}
    for part in text.split("+"):
        name, _, args = part.strip().partition(":")
        name = name.strip()
        if name not in METHODS:
            raise MethodError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
        if name in chosen:
            raise MethodError(f"method {name!r} given twice in {text!r}")
        m = METHODS[name]
        values = {p.name: p.default(spec) for p in m.params}
        for item in filter(None, (a.strip() for a in args.split(","))):
            key, eq, val = item.partition("=")
            if not eq:
                raise MethodError(f"{name}: {item!r} is not key=value")
            values[key.strip()] = m.param(key.strip()).parse(val.strip(), spec, name)
        for p in m.params:                       # defaults can fall outside a small model's range
            p.check(values[p.name], spec, name)
        if m.check is not None:
            m.check(spec, values)
        if name == "code":
            from .spec import SPECS
            ref = SPECS.get(values["refiner"])
            if ref is None:
                raise MethodError(f"code: refiner {values['refiner']!r} is not in the registry "
                                  f"(known: {', '.join(SPECS)})")
            if not compatible(ref, spec):
                raise MethodError(f"code: refiner {ref.name} does not share {spec.name}'s VQ-VAE, scales and classes")
        chosen[name] = values
    schedulers = [n for n in chosen if METHODS[n].sets == "schedule"]
    if len(schedulers) > 1:
        raise MethodError(f"{' and '.join(schedulers)} both set the depth schedule: choose one")
    if "code" in chosen and schedulers:
        raise MethodError(f"code runs the drafter and the refiner at full depth: it does not compose with "
                          f"{schedulers[0]}")
    order = {m.name: i for i, m in enumerate(REGISTRY)}
    settings = tuple((n, tuple((p.name, chosen[n][p.name]) for p in METHODS[n].params))
                     for n in sorted(chosen, key=order.__getitem__))
    return Configuration(spec, settings)


def variant(spec: VARSpec, depth: int, switch: int, select: str = "isometric") -> Configuration:
    """The configuration of today's ``--depths/--switch`` grid point."""
    return parse(f"variant:depth={depth},switch={switch},select={select}", spec)


def describe(spec: VARSpec | None = None) -> list[dict[str, Any]]:
    """The registry as JSON-ready rows (``varbench methods --json``); with a spec, defaults and ranges for it."""
    return [{"name": m.name, "sets": m.sets, "doc": m.doc, "paper": m.paper,
             "params": [p.describe(spec) for p in m.params]} for m in REGISTRY]
