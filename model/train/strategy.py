"""Supernet training strategies: which depth schedule(s) each optimizer step trains (VARIANT_PAPER "Training recipe").

- ``progressive``: a step is a subnet step with probability p(epoch): p0 for E1 epochs, a linear ramp to 1 over E2
  epochs, then 1 (E3 epochs). A subnet step draws d from the depth set and trains VARiant(d, switch): the bridge zone
  (scales < switch) always runs full depth.
- ``fixed``: constant p (the paper's fixed-ratio ablation).
- ``sandwich``: every step trains the full net, the smallest subnet and one random other subnet (BigNAS).
- ``full``: plain VAR.

All draws come from one explicit ``random.Random`` whose state is saved in checkpoints, so every rank draws the same
depth and a resumed run draws what the uninterrupted run would have drawn.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from ..schedule import SELECTS, DepthSchedule
from ..spec import VARSpec

STRATEGIES = ("progressive", "fixed", "sandwich", "full")
DEFAULT_DEPTHS = (2, 4, 8, 16)


@dataclass(frozen=True)
class Pass:
    """One forward/backward pass of a step: the depth trained (D = full network) and its schedule."""

    depth: int
    schedule: DepthSchedule | None      # None = the full network (the model's fast full path)


@dataclass(frozen=True)
class StepPlan:
    passes: tuple[Pass, ...]
    subnet_p: float

    @property
    def depth(self) -> int:
        """Depth reported for the step: the (last drawn) subnet depth, or D for a full step."""
        subnets = [p.depth for p in self.passes if p.schedule is not None]
        return subnets[-1] if subnets else self.passes[0].depth


@dataclass
class StrategyConfig:
    name: str = "progressive"
    p: float = 0.2                       # fixed: constant subnet-step probability
    p0: float = 0.2                      # progressive: phase-1 probability
    e1: float = 5.0                      # progressive phase lengths in epochs
    e2: float = 15.0
    e3: float = 10.0
    depths: tuple[int, ...] | None = None        # None -> DEFAULT_DEPTHS ∩ valid depths of the spec
    depth_weights: tuple[float, ...] | None = None
    switch: int = 6
    select: str = "isometric"


def valid_subnet_depths(spec: VARSpec, depths: Sequence[int] | None) -> tuple[int, ...]:
    """Subnet depths in 2..D−1 (D itself is the full network); the default set is intersected with that range."""
    D = spec.depth
    if depths is None:
        return tuple(d for d in DEFAULT_DEPTHS if 2 <= d < D)
    out = tuple(dict.fromkeys(int(d) for d in depths if int(d) != D))
    bad = [d for d in out if not 2 <= d < D]
    if bad:
        raise ValueError(f"subnet depth {bad[0]} is outside 2..{D - 1} ({spec.name} has {D} blocks)")
    return out


class Strategy:
    """Plans each step; ``state_dict``/``load_state_dict`` carry the RNG so runs resume draw for draw."""

    def __init__(self, spec: VARSpec, cfg: StrategyConfig, seed: int):
        if cfg.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {cfg.name!r}; use one of {', '.join(STRATEGIES)}")
        for key in ("p", "p0"):
            v = getattr(cfg, key)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"strategy {key}={v} is outside [0, 1]")
        if min(cfg.e1, cfg.e2, cfg.e3) < 0:
            raise ValueError(f"progressive phase lengths must be >= 0, got E1={cfg.e1} E2={cfg.e2} E3={cfg.e3}")
        if cfg.select not in SELECTS:
            raise ValueError(f"unknown layer selection {cfg.select!r}; use one of {', '.join(SELECTS)}")
        if not 0 <= cfg.switch <= spec.num_scales:
            raise ValueError(f"switch {cfg.switch} is outside 0..{spec.num_scales}")
        self.spec, self.cfg = spec, cfg
        self.depths = valid_subnet_depths(spec, cfg.depths) if cfg.name != "full" else ()
        if cfg.name != "full" and not self.depths:
            raise ValueError(f"strategy {cfg.name!r} needs at least one subnet depth in 2..{spec.depth - 1}")
        if cfg.depth_weights is not None:
            if len(cfg.depth_weights) != len(self.depths) or min(cfg.depth_weights) < 0 or sum(cfg.depth_weights) <= 0:
                raise ValueError(f"depth weights {list(cfg.depth_weights)} do not match depths {list(self.depths)}")
        self.weights = tuple(cfg.depth_weights) if cfg.depth_weights else (1.0,) * len(self.depths)
        self.schedules = {d: DepthSchedule.variant(spec, d, cfg.switch, cfg.select) for d in self.depths}
        self.rng = random.Random(seed)

    # ---- probabilities -------------------------------------------------------------------------------------
    def subnet_p(self, epoch: float) -> float:
        """p(epoch) for a (fractional) epoch; 1.0 for sandwich (every step has subnet passes), 0 for full."""
        c = self.cfg
        if c.name == "full":
            return 0.0
        if c.name == "sandwich":
            return 1.0
        if c.name == "fixed":
            return c.p
        if epoch < c.e1:
            return c.p0
        if c.e2 > 0 and epoch < c.e1 + c.e2:
            return c.p0 + (1.0 - c.p0) * (epoch - c.e1) / c.e2
        return 1.0

    @property
    def default_epochs(self) -> float:
        """E1 + E2 + E3 for progressive: the paper's whole run."""
        return self.cfg.e1 + self.cfg.e2 + self.cfg.e3

    # ---- planning ------------------------------------------------------------------------------------------
    def full_pass(self) -> Pass:
        return Pass(self.spec.depth, None)

    def subnet_pass(self, depth: int) -> Pass:
        return Pass(depth, self.schedules[depth])

    def draw_depth(self, choices: Sequence[int] | None = None, weights: Sequence[float] | None = None) -> int:
        choices = list(choices if choices is not None else self.depths)
        weights = list(weights if weights is not None else self.weights)
        return self.rng.choices(choices, weights=weights, k=1)[0]

    def plan(self, epoch: float) -> StepPlan:
        """Passes of the next step; the full pass comes last so DDP's synced backward sees every block."""
        p = self.subnet_p(epoch)
        name = self.cfg.name
        if name == "full":
            return StepPlan((self.full_pass(),), p)
        if name == "sandwich":
            smallest = min(self.depths)
            others = [d for d in self.depths if d != smallest]
            passes = [self.subnet_pass(smallest)]
            if others:
                w = [self.weights[self.depths.index(d)] for d in others]
                passes.append(self.subnet_pass(self.draw_depth(others, w)))
            return StepPlan(tuple(passes) + (self.full_pass(),), p)
        if self.rng.random() < p:
            return StepPlan((self.subnet_pass(self.draw_depth()),), p)
        return StepPlan((self.full_pass(),), p)

    # ---- checkpoint state (JSON-friendly) ------------------------------------------------------------------
    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"name": self.cfg.name, "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.cfg.name:
            raise ValueError(f"checkpoint strategy {state.get('name')!r} differs from {self.cfg.name!r}")
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
