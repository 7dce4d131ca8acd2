"""Pareto fronts over benchmark points: which configurations are worth deploying at all.

A point is dominated when another point is at least as good on every objective and strictly better on one;
the report draws the non-dominated set as a step line so the trade-off curve reads at a glance.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from varbench.results import finite_number


def _value(point: Mapping[str, Any], key: str) -> float | None:
    return finite_number(point.get(key))


def _objectives(point: Mapping[str, Any], minimize: Sequence[str], maximize: Sequence[str]) -> tuple[float, ...] | None:
    """All objectives as 'smaller is better' numbers; None when any is missing."""
    out: list[float] = []
    for k in minimize:
        v = _value(point, k)
        if v is None:
            return None
        out.append(v)
    for k in maximize:
        v = _value(point, k)
        if v is None:
            return None
        out.append(-v)
    return tuple(out)


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_indices(points: Sequence[Mapping[str, Any]], minimize: Sequence[str] = (),
                   maximize: Sequence[str] = ()) -> list[int]:
    """Indices of the non-dominated points, in input order. Points missing an objective are left out.

    Exact duplicates do not dominate each other, so ties all stay on the front.
    """
    if not minimize and not maximize:
        raise ValueError("pareto_front needs at least one objective")
    objs = [_objectives(p, minimize, maximize) for p in points]
    keep: list[int] = []
    for i, oi in enumerate(objs):
        if oi is None:
            continue
        if not any(oj is not None and j != i and _dominates(oj, oi) for j, oj in enumerate(objs)):
            keep.append(i)
    return keep


def pareto_front(points: Sequence[Mapping[str, Any]], minimize: Sequence[str] = (),
                 maximize: Sequence[str] = ()) -> list[Mapping[str, Any]]:
    """The non-dominated points themselves (same objects), in input order (stable)."""
    return [points[i] for i in pareto_indices(points, minimize, maximize)]


def step_line(front: Sequence[Mapping[str, Any]], x: str, y: str, *,
              x_minimize: bool = True, y_minimize: bool = False) -> tuple[list[float], list[float]]:
    """Coordinates of the staircase through a 2-D front, ordered from the best-x end.

    Between two front points the line holds the previous point's y until the next x ("hv" step), which is
    exactly the boundary of the region the front dominates.
    """
    pts = [(_value(p, x), _value(p, y)) for p in front]
    pts = [(a, b) for a, b in pts if a is not None and b is not None]
    # best x first; among equal x the best y first
    pts.sort(key=lambda t: (t[0] if x_minimize else -t[0], t[1] if y_minimize else -t[1]))
    xs: list[float] = []
    ys: list[float] = []
    for i, (a, b) in enumerate(pts):
        if i:
            xs.append(a)
            ys.append(ys[-1])
        xs.append(a)
        ys.append(b)
    return xs, ys


def not_separable(points: Sequence[Mapping[str, Any]], x: str, y: str, y_low: str, y_high: str, *,
                  x_minimize: bool = True, y_minimize: bool = False) -> list[int]:
    """Indices (input order) of the points whose place relative to the 2-D front their y intervals do not settle.

    ``x`` is taken as exact (a cost: latency, memory), ``y`` as uncertain within [``y_low``, ``y_high``] (a
    quality with its 95% interval; a point without one counts as exact). A point's place is settled when
    either some other point at least as good on x has an interval entirely better than its own (it is dominated
    whatever the true values are), or its own interval is entirely better than that of every other point at
    least as good on x (nothing cheaper can be as good: it is on the front whatever the true values are).
    Every other point is "not separable": a front point whose interval overlaps a cheaper point's (it may
    really be dominated), or a dominated point whose interval overlaps a point that dominates it (it may really
    be on the front). Points missing x or y are left out.
    """
    vals = []
    for p in points:
        xv, yv = _value(p, x), _value(p, y)
        if xv is None or yv is None:
            vals.append(None)
            continue
        lo, hi = _value(p, y_low), _value(p, y_high)
        lo, hi = (yv if lo is None else min(lo, yv)), (yv if hi is None else max(hi, yv))
        # as "smaller is better" numbers: the interval's good end and bad end
        vals.append((xv if x_minimize else -xv, (lo, hi) if y_minimize else (-hi, -lo)))

    out = []
    for i, vi in enumerate(vals):
        if vi is None:
            continue
        # at least as cheap; an exact duplicate of this point says nothing about its place
        cheaper = [vj for j, vj in enumerate(vals) if j != i and vj is not None and vj[0] <= vi[0] and vj != vi]
        # dominated for sure: a cheaper point's worst quality beats (or, strictly cheaper, equals) our best;
        # exact values (no interval) thus follow the ordinary dominance rule
        dominated = any(vj[1][1] <= vi[1][0] and (vj[0] < vi[0] or vj[1][1] < vi[1][0]) for vj in cheaper)
        # on the front for sure: our worst quality beats the best of every point at least as cheap
        front = all(vi[1][1] < vj[1][0] for vj in cheaper)
        if not dominated and not front:
            out.append(i)
    return out
