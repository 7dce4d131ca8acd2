"""Energy per image from NVML (issue 21): the board's total-energy counter read around a window of generations.

Why a window of its own: the counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver
loaded; Volta and newer) counts the whole board, so it needs a window long enough to swamp its update step, and
the power sampler that goes with it must not run during the latency samples (DESIGN "Measurement rules"). The
window repeats whole generations *with* decode (what an image costs), synchronised after each, until both a
count and a duration are met; energy per image = counter delta / images generated in the window.

Where the counter is missing (``NVMLError_NotSupported``, an old binding, any NVML error) the power samples
(``nvmlDeviceGetPowerUsage``, mW) are integrated over the window instead (trapezoids, ends held flat) and
``energy_method`` says so: "nvml_total_energy" | "power_integral" | None (with ``energy_null_reason``). Power
samples also give the peak power, and the SM clock (``nvmlDeviceGetClockInfo(NVML_CLOCK_SM)``) is sampled with
them: a throttled clock explains a slow point. On Ampere and newer, NVML's power reading is a 1-second average, so
``peak_power_w`` is the peak of that smoothed reading, and a power integral lags a short window.

No torch import at module level: the sampler child imports this module for its readers.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

METHOD_COUNTER = "nvml_total_energy"
METHOD_INTEGRAL = "power_integral"
J_PER_KWH = 3.6e6
SAMPLE_INTERVAL_MS = 5.0          # NVML's power reading changes at most every few ms; 200 Hz is plenty

# every field a sweep row gets from the energy pass (declared in varbench.schema.ENERGY)
FIELDS = ("energy_j_per_image", "images_per_kwh", "avg_power_w", "peak_power_w", "sm_clock_mhz", "energy_method",
          "energy_null_reason", "energy_note", "energy_j", "energy_window_s", "energy_images",
          "energy_power_samples", "energy_sampler")


def null_fields(reason: str) -> dict[str, Any]:
    """The energy fields of a row where nothing was measured (CPU, NVML missing, pass disabled), and why."""
    out: dict[str, Any] = {k: None for k in FIELDS}
    out["energy_null_reason"] = reason
    return out


# ---- NVML reads (through varbench.measuring.memory.Nvml's handle) ----------------------------------------------
def total_energy_mj(nv: Any) -> tuple[int | None, str | None]:
    """(the board's energy counter in mJ, None), or (None, why it cannot be read)."""
    if not getattr(nv, "available", False):
        return None, getattr(nv, "reason", "NVML unavailable")
    fn = getattr(nv._nv, "nvmlDeviceGetTotalEnergyConsumption", None)
    if fn is None:
        return None, "this pynvml has no nvmlDeviceGetTotalEnergyConsumption"
    try:
        return int(fn(nv._h)), None
    except Exception as e:  # noqa: BLE001 - NVMLError_NotSupported (pre-Volta), or any driver error
        return None, f"nvmlDeviceGetTotalEnergyConsumption failed: {type(e).__name__}: {e}"


def power_reader(nv: Any) -> Callable[[], int | None]:
    """A call returning the board power in mW (None when unreadable)."""
    fn = getattr(getattr(nv, "_nv", None), "nvmlDeviceGetPowerUsage", None)
    h = getattr(nv, "_h", None)

    def read() -> int | None:
        if fn is None:
            return None
        try:
            return int(fn(h))
        except Exception:  # noqa: BLE001
            return None
    return read


def sm_clock_reader(nv: Any) -> Callable[[], int | None]:
    """A call returning the SM clock in MHz (None when unreadable)."""
    mod = getattr(nv, "_nv", None)
    fn = getattr(mod, "nvmlDeviceGetClockInfo", None)
    clock = getattr(mod, "NVML_CLOCK_SM", 1)
    h = getattr(nv, "_h", None)

    def read() -> int | None:
        if fn is None:
            return None
        try:
            return int(fn(h, clock))
        except Exception:  # noqa: BLE001
            return None
    return read


# ---- arithmetic ----------------------------------------------------------------------------------------------
def integrate_power(samples: list[tuple[int, float]], t0_ns: int, t1_ns: int) -> float | None:
    """Joules of the power curve (t_ns, watts) over [t0_ns, t1_ns]: trapezoids through the samples inside, the
    curve interpolated at the ends (held flat beyond the first / last sample). None with no usable sample."""
    pts = sorted((t, p) for t, p in samples if p is not None)
    if not pts or t1_ns <= t0_ns:
        return None
    import numpy as np

    ts = np.array([t for t, _ in pts], dtype=np.float64)
    ps = np.array([p for _, p in pts], dtype=np.float64)
    inside = ts[(ts > t0_ns) & (ts < t1_ns)]
    grid = np.concatenate(([float(t0_ns)], inside, [float(t1_ns)]))
    vals = np.interp(grid, ts, ps)
    return float(np.sum((vals[1:] + vals[:-1]) * 0.5 * np.diff(grid)) / 1e9)


def per_image(energy_j: float | None, images: int) -> dict[str, float | None]:
    """J per image and images per kWh of ``energy_j`` spent on ``images`` images."""
    if energy_j is None or images <= 0 or energy_j <= 0:
        return {"energy_j_per_image": None, "images_per_kwh": None}
    j = energy_j / images
    return {"energy_j_per_image": j, "images_per_kwh": J_PER_KWH / j}


# ---- the window ----------------------------------------------------------------------------------------------
def measure_energy(fn: Callable[[], Any], images_per_call: int, nvml: Any, *, device: Any = "cpu",
                   min_repeats: int = 1, min_seconds: float = 2.0, interval_ms: float = SAMPLE_INTERVAL_MS,
                   sampler_mode: str = "auto", sampler_factory: Any = None, lead_in: int = 1) -> dict[str, Any]:
    """Energy of ``fn`` (one generation of ``images_per_call`` images, decode included) repeated until at least
    ``min_repeats`` calls AND ``min_seconds`` of wall time, each call synchronised; returns the energy fields.

    The counter is read just before the first call and just after the last synchronise; the power sampler
    (``samplers.make_sampler(channels="power")``; a child process on real NVML) runs around the window and is
    started before it (its start-up is never inside). ``sampler_factory``: an ``nvml_factory`` for the sampler
    child (tests). Warm-up is the caller's: the pipeline should have generated at this shape already.
    ``lead_in`` untimed calls run after the sampler started and before the first counter read: the board's
    counter lags its draw, so a window that starts from idle (the sampler child's start-up) under-counts; with
    the board busy on both sides of the window the lag cancels (on an H200, d30 depth 2, batch 64: 2.91 J per
    image without it against 3.15 J from a hand reading around busy generations).
    """
    from varbench.measuring import timing
    from varbench.measuring.samplers import make_sampler

    if images_per_call < 1 or min_repeats < 1 or min_seconds < 0 or interval_ms <= 0 or lead_in < 0:
        raise ValueError(f"bad energy settings: images_per_call={images_per_call}, min_repeats={min_repeats}, "
                         f"min_seconds={min_seconds}, interval_ms={interval_ms}")
    if not getattr(nvml, "available", False):
        return null_fields(getattr(nvml, "reason", "NVML unavailable"))
    _, counter_why = total_energy_mj(nvml)
    sampler = make_sampler(nvml, interval_ms=interval_ms, mode=sampler_mode, capacity=120_000, process_every=1,
                           nvml_factory=sampler_factory, channels="power")
    calls = 0
    timing.synchronize(device)
    with sampler:
        for _ in range(lead_in):
            fn()
        timing.synchronize(device)
        e0, _ = total_energy_mj(nvml)
        t0 = time.perf_counter_ns()
        while True:
            fn()
            timing.synchronize(device)
            calls += 1
            if calls >= min_repeats and time.perf_counter_ns() - t0 >= min_seconds * 1e9:
                break
        t1 = time.perf_counter_ns()
        e1, why_end = total_energy_mj(nvml)
    window_s = (t1 - t0) / 1e9
    images = calls * int(images_per_call)
    samples = sampler.samples()
    power = [(t, p / 1e3) for t, p, _ in samples if p is not None]
    in_window = [p for t, p in power if t0 <= t <= t1]
    clocks = [c for t, _, c in samples if c is not None and t0 <= t <= t1]
    out: dict[str, Any] = {"energy_window_s": window_s, "energy_images": images,
                           "energy_power_samples": len(in_window), "energy_sampler": sampler.kind,
                           "peak_power_w": max(in_window) if in_window else None,
                           "sm_clock_mhz": float(statistics.median(clocks)) if clocks else None,
                           "energy_null_reason": None}
    if e0 is not None and e1 is not None and e1 >= e0:
        energy_j, method = (e1 - e0) / 1e3, METHOD_COUNTER
    else:
        energy_j, method = integrate_power(power, t0, t1), METHOD_INTEGRAL
        why = counter_why or why_end or (f"the counter went back ({e0} -> {e1} mJ)" if e0 is not None else None)
        if energy_j is None:
            method = None
            out["energy_null_reason"] = f"{why}; and no power samples in the window"
        else:
            out["energy_note"] = f"power samples integrated: {why}"
            log.info("energy counter unusable (%s): integrated %d power samples", why, len(power))
    out.update({"energy_method": method, "energy_j": energy_j,
                "avg_power_w": energy_j / window_s if energy_j is not None and window_s > 0 else None,
                **per_image(energy_j, images)})
    return {k: out.get(k) for k in FIELDS}
