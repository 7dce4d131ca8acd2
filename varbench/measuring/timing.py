"""Latency instruments (DESIGN "Measurement rules": latency): CUDA events on GPU, perf_counter + synchronize on
CPU, warm-up not counted, repeats until BOTH a count and a duration are met, percentiles with n.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def _as_device(device: Any) -> Any:
    import torch
    return torch.device(device) if device is not None else torch.device("cpu")


def synchronize(device: Any) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    import torch
    dev = _as_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Timer:
    """Times one region. GPU: CUDA events on the current stream (kernel time, not launch time). CPU: perf_counter.

    Usage: ``t = Timer(dev); t.start(); work(); ms = t.stop()`` — ``stop`` synchronises and returns milliseconds.
    Also a context manager (``with Timer(dev) as t: ...; t.ms``).
    """

    def __init__(self, device: Any = "cpu"):
        import torch
        self.device = _as_device(device)
        self.cuda = self.device.type == "cuda"
        self.ms: float | None = None
        if self.cuda:
            self._start_ev = torch.cuda.Event(enable_timing=True)
            self._end_ev = torch.cuda.Event(enable_timing=True)
        self._t0 = 0.0

    def start(self) -> "Timer":
        self.ms = None
        if self.cuda:
            self._start_ev.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def stop(self) -> float:
        if self.cuda:
            self._end_ev.record()
            self._end_ev.synchronize()
            self.ms = float(self._start_ev.elapsed_time(self._end_ev))
        else:
            self.ms = (time.perf_counter() - self._t0) * 1e3
        return self.ms

    def __enter__(self) -> "Timer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def measure(fn: Callable[[], Any], warmup: int = 1, min_repeats: int = 3, min_seconds: float = 0.0,
            device: Any = "cpu", max_repeats: int | None = None) -> list[float]:
    """Run ``fn`` ``warmup`` times (discarded), then repeat until at least ``min_repeats`` samples AND
    ``min_seconds`` of timed work; returns one latency in ms per timed call. ``max_repeats`` caps a fast fn."""
    if warmup < 0 or min_repeats < 1 or min_seconds < 0:
        raise ValueError(f"bad measure settings: warmup={warmup}, min_repeats={min_repeats}, "
                         f"min_seconds={min_seconds}")
    dev = _as_device(device)
    for _ in range(warmup):
        fn()
    synchronize(dev)
    timer = Timer(dev)
    samples: list[float] = []
    spent_s = 0.0
    while len(samples) < min_repeats or spent_s < min_seconds:
        if max_repeats is not None and len(samples) >= max_repeats:
            break
        timer.start()
        fn()
        ms = timer.stop()
        samples.append(ms)
        spent_s += ms / 1e3
    log.debug("measure: %d samples, %.3f s timed", len(samples), spent_s)
    return samples


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), on an already sorted sequence."""
    n = len(sorted_vals)
    pos = (n - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return float(sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo))


def percentiles(samples: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/mean/min/max and n of ``samples`` (None values when empty)."""
    vals = sorted(float(s) for s in samples)
    if not vals:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    return {"n": len(vals), "p50": _quantile(vals, 0.5), "p90": _quantile(vals, 0.9),
            "p99": _quantile(vals, 0.99), "mean": sum(vals) / len(vals), "min": vals[0], "max": vals[-1]}
