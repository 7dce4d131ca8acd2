"""Pareto front on hand-made examples: the non-dominated set, its order, and the staircase through it."""
from __future__ import annotations

import pytest

from varbench.reporting.pareto import pareto_front, pareto_indices, step_line

# (latency ms, quality higher-is-better): by hand, A, C, E are non-dominated
POINTS = [
    {"name": "A", "lat": 1.0, "q": 0.50},
    {"name": "B", "lat": 2.0, "q": 0.40},   # dominated by A (slower and worse)
    {"name": "C", "lat": 3.0, "q": 0.80},
    {"name": "D", "lat": 4.0, "q": 0.80},   # dominated by C (same quality, slower)
    {"name": "E", "lat": 5.0, "q": 0.95},
    {"name": "F", "lat": None, "q": 1.00},  # missing objective: never on the front
]


def test_hand_example_front_is_exact_and_stable():
    front = pareto_front(POINTS, minimize=["lat"], maximize=["q"])
    assert [p["name"] for p in front] == ["A", "C", "E"]
    assert pareto_indices(POINTS, minimize=["lat"], maximize=["q"]) == [0, 2, 4]


def test_direction_matters():
    # minimising both: only the fastest and the lowest-quality point survive
    names = [p["name"] for p in pareto_front(POINTS, minimize=["lat", "q"])]
    assert names == ["A", "B"]


def test_ties_stay_and_three_objectives():
    pts = [{"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1, "c": 1}, {"a": 0, "b": 2, "c": 1}, {"a": 2, "b": 2, "c": 2}]
    assert pareto_indices(pts, minimize=["a", "b", "c"]) == [0, 1, 2]


def test_step_line_is_a_staircase_through_the_front():
    front = pareto_front(POINTS, minimize=["lat"], maximize=["q"])
    xs, ys = step_line(front, "lat", "q", x_minimize=True, y_minimize=False)
    assert xs == [1.0, 3.0, 3.0, 5.0, 5.0]
    assert ys == [0.50, 0.50, 0.80, 0.80, 0.95]


def test_step_line_for_a_larger_is_better_x():
    pts = [{"tp": 10.0, "q": 0.9}, {"tp": 20.0, "q": 0.5}]
    xs, ys = step_line(pts, "tp", "q", x_minimize=False, y_minimize=False)
    assert xs == [20.0, 10.0, 10.0] and ys == [0.5, 0.5, 0.9]


def test_needs_an_objective():
    with pytest.raises(ValueError):
        pareto_front(POINTS)
