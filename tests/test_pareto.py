"""Pareto front on hand-made examples: the non-dominated set, its order, and the staircase through it."""
from __future__ import annotations

import pytest

from varbench.reporting.pareto import not_separable, pareto_front, pareto_indices, step_line

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


# ---- intervals: which places relative to the front the 95% intervals settle ------------------------------------
def test_exact_points_are_all_separable():
    """Without intervals the rule is ordinary dominance: nothing is flagged (D, tied with C but slower, is
    dominated for sure)."""
    assert not_separable(POINTS, "lat", "q", "lo", "hi") == []


def test_overlapping_intervals_are_not_separable():
    pts = [
        {"name": "A", "lat": 1.0, "q": 0.50, "lo": 0.45, "hi": 0.55},   # cheapest: on the front for sure
        {"name": "B", "lat": 2.0, "q": 0.52, "lo": 0.40, "hi": 0.64},   # on the front, but overlaps A: unsure
        {"name": "C", "lat": 3.0, "q": 0.80, "lo": 0.75, "hi": 0.85},   # above every cheaper interval: sure
        {"name": "D", "lat": 4.0, "q": 0.78, "lo": 0.70, "hi": 0.90},   # dominated by C, but overlaps it: unsure
        {"name": "E", "lat": 5.0, "q": 0.30, "lo": 0.25, "hi": 0.35},   # below C's whole interval: dominated
        {"name": "F", "lat": None, "q": 1.0, "lo": 0.9, "hi": 1.0},     # no x: left out
    ]
    assert pareto_indices(pts, minimize=["lat"], maximize=["q"]) == [0, 1, 2]
    assert not_separable(pts, "lat", "q", "lo", "hi") == [1, 3]
    # narrower intervals settle B: its interval clears A's
    pts[1].update(q=0.58, lo=0.56, hi=0.60)
    assert not_separable(pts, "lat", "q", "lo", "hi") == [3]


def test_not_separable_directions():
    """KL (lower is better) against throughput (higher is better): the same geometry mirrored."""
    pts = [{"tput": 100.0, "kl": 0.50, "lo": 0.45, "hi": 0.55},        # fastest: on the front for sure
           {"tput": 90.0, "kl": 0.48, "lo": 0.40, "hi": 0.60},         # slower, KL overlaps: unsure
           {"tput": 50.0, "kl": 0.05, "lo": 0.04, "hi": 0.06},         # sure
           {"tput": 40.0, "kl": 0.30, "lo": 0.25, "hi": 0.35}]         # dominated for sure by the third
    assert not_separable(pts, "tput", "kl", "lo", "hi", x_minimize=False, y_minimize=True) == [1]


def test_equal_cost_points_and_exact_duplicates():
    pts = [{"lat": 1.0, "q": 0.5, "lo": 0.4, "hi": 0.6}, {"lat": 1.0, "q": 0.55, "lo": 0.45, "hi": 0.65},
           {"lat": 2.0, "q": 0.9}, {"lat": 2.0, "q": 0.9},           # exact duplicates: both on the front
           {"lat": 3.0, "q": 0.9},                                      # exact tie, slower: dominated for sure
           {"lat": 4.0, "q": 0.95, "lo": 0.9, "hi": 1.0},            # touches the duplicates' 0.9, slower: unsure
           {"lat": 4.0, "q": 0.9, "lo": 0.85, "hi": 0.95}]           # equal cost to the one above, overlapping
    # the two at 1 ms could each be better than the other: both unsure; so are the two at 4 ms
    assert not_separable(pts, "lat", "q", "lo", "hi") == [0, 1, 5, 6]
    # equal cost, an interval whose worst end touches an exact value: a tie is possible, neither is settled
    touch = [{"lat": 1.0, "q": 0.5}, {"lat": 1.0, "q": 0.55, "lo": 0.5, "hi": 0.6}]
    assert not_separable(touch, "lat", "q", "lo", "hi") == [0, 1]
