"""DepthSchedule: which transformer blocks run at each scale (the heart of the VARiant supernet).

A block skipped at scale s lets that scale's tokens pass unchanged (residual identity) and caches nothing for them;
at later scales it attends only to the tokens it processed. VARiant(d, N): scales < N run every block, scales >= N
the subnet I_d (VARIANT_PAPER "Subnet layer selection").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .spec import VARSpec

SELECTS = ("isometric", "nested")


def isometric_layers(total: int, depth: int) -> tuple[int, ...]:
    """I_d = {floor(i·(D−1)/(d−1)) : i = 0..d−1}; always keeps the first and the last block."""
    _check_depth(total, depth)
    if depth == total:
        return tuple(range(total))
    return tuple(sorted({(i * (total - 1)) // (depth - 1) for i in range(depth)}))


def _bisection_order(total: int) -> list[int]:
    """Blocks in the order a nested chain adds them: ends first, then the middle of the widest gap (leftmost)."""
    order = [0, total - 1] if total > 1 else [0]
    chosen = set(order)
    while len(order) < total:
        pts = sorted(chosen)
        gaps = [(pts[i + 1] - pts[i], -pts[i], pts[i], pts[i + 1]) for i in range(len(pts) - 1)]
        gaps = [g for g in gaps if g[0] > 1]
        _, _, a, b = max(gaps)
        mid = (a + b) // 2
        order.append(mid)
        chosen.add(mid)
    return order


def nested_layers(total: int, depth: int) -> tuple[int, ...]:
    """A chain I_2 ⊂ I_4 ⊂ I_8 ⊂ ... ⊂ full (the paper's nesting claim, which floor-isometric breaks)."""
    _check_depth(total, depth)
    return tuple(sorted(_bisection_order(total)[:depth]))


def subnet_layers(total: int, depth: int, select: str = "isometric") -> tuple[int, ...]:
    if select == "isometric":
        return isometric_layers(total, depth)
    if select == "nested":
        return nested_layers(total, depth)
    raise ValueError(f"unknown layer selection {select!r}; use one of {', '.join(SELECTS)}")


def _check_depth(total: int, depth: int) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ValueError(f"depth must be an integer, got {depth!r}")
    if not 2 <= depth <= total and not (depth == total == 1):
        raise ValueError(f"depth {depth} is outside 2..{total} (the model has {total} blocks)")


@dataclass(frozen=True)
class DepthSchedule:
    """Per scale, the increasing tuple of block ids that run. Immutable, hashable, cheap to swap between calls."""

    layers: tuple[tuple[int, ...], ...]

    def __init__(self, layers: Iterable[Sequence[int]]):
        norm = []
        for si, blocks in enumerate(layers):
            blocks = tuple(int(b) for b in blocks)
            if len(set(blocks)) != len(blocks):
                raise ValueError(f"scale {si}: duplicate block ids in {list(blocks)}")
            if any(b < 0 for b in blocks):
                raise ValueError(f"scale {si}: negative block id in {list(blocks)}")
            if list(blocks) != sorted(blocks):
                raise ValueError(f"scale {si}: block ids must be increasing, got {list(blocks)}")
            norm.append(blocks)
        if not norm:
            raise ValueError("a schedule needs at least one scale")
        object.__setattr__(self, "layers", tuple(norm))

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def full(cls, spec: VARSpec) -> "DepthSchedule":
        return cls([tuple(range(spec.depth))] * spec.num_scales)

    @classmethod
    def variant(cls, spec: VARSpec, depth: int, switch: int = 6, select: str = "isometric") -> "DepthSchedule":
        """VARiant(d, N): scales < N all blocks (bridge zone), scales >= N the subnet (flexible zone)."""
        if not isinstance(switch, int) or not 0 <= switch <= spec.num_scales:
            raise ValueError(f"switch {switch} is outside 0..{spec.num_scales} (the model has {spec.num_scales} scales)")
        sub = subnet_layers(spec.depth, depth, select)
        full = tuple(range(spec.depth))
        return cls([full if si < switch else sub for si in range(spec.num_scales)])

    @classmethod
    def per_scale(cls, spec: VARSpec, depths: Sequence[int], select: str = "isometric") -> "DepthSchedule":
        if len(depths) != spec.num_scales:
            raise ValueError(f"per_scale needs {spec.num_scales} depths (one per scale), got {len(depths)}")
        return cls([subnet_layers(spec.depth, int(d), select) for d in depths])

    # ---- queries ------------------------------------------------------------------------------------------
    @classmethod
    def prefix(cls, spec: VARSpec, until: int) -> "DepthSchedule":
        """Every block below scale ``until``, none after (the drafter of collaborative decoding)."""
        return cls([tuple(range(spec.depth)) if si < until else () for si in range(spec.num_scales)])

    def validate(self, spec: VARSpec) -> "DepthSchedule":
        if len(self.layers) != spec.num_scales:
            raise ValueError(f"schedule has {len(self.layers)} scales, the model has {spec.num_scales}")
        for si, blocks in enumerate(self.layers):
            bad = [b for b in blocks if b >= spec.depth]
            if bad:
                raise ValueError(f"scale {si}: block ids {bad} out of range 0..{spec.depth - 1}")
        return self

    @property
    def num_scales(self) -> int:
        return len(self.layers)

    def depth_at(self, si: int) -> int:
        return len(self.layers[si])

    def active_scales(self, block: int) -> tuple[int, ...]:
        """Scales at which ``block`` runs (and caches K/V)."""
        return tuple(si for si, blocks in enumerate(self.layers) if block in blocks)

    def last_active(self, block: int) -> int:
        """Index of the block's last active scale, or -1 if it never runs."""
        act = self.active_scales(block)
        return act[-1] if act else -1

    def used_blocks(self) -> tuple[int, ...]:
        return tuple(sorted({b for blocks in self.layers for b in blocks}))

    def is_full(self, spec: VARSpec) -> bool:
        return self == DepthSchedule.full(spec)

    def describe(self) -> str:
        """Compact human form, e.g. '30x6 + [0,29]x4'."""
        parts, prev, count = [], None, 0
        for blocks in self.layers + (None,):
            if blocks == prev:
                count += 1
                continue
            if prev is not None:
                parts.append(f"{len(prev)}x{count}" if prev == tuple(range(len(prev))) and len(prev) > 4
                             else f"{list(prev)}x{count}")
            prev, count = blocks, 1
        return " + ".join(parts)
