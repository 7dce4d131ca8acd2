"""The drill-down behind a point (``--profile``, issue 21): one profiled generation + decode per point.

Files, under ``<results>/profiles/<point id>/``: ``trace.json``, a torch.profiler Chrome trace (open it in
https://ui.perfetto.dev or chrome://tracing) and, on CUDA, ``memory_snapshot.pickle`` from
``torch.cuda.memory._record_memory_history`` / ``_dump_snapshot`` (open it in https://pytorch.org/memory_viz).
The row records both paths relative to the results folder, and a per-scale / per-phase breakdown read back
from the trace (``breakdown``), which the report shows next to links to the files.

Named ranges (``torch.profiler.record_function``): ``generate``; ``scale i`` per scale, opened and closed by the
pipeline's ``on_scale_begin`` / ``on_scale_end`` hooks; the phases inside a scale from its ``on_phase`` hook:
``blocks`` (the step's run; on the CUDA-graph path the captured graph holds the head too), ``sampling`` (CFG,
top-k/top-p, with ``head`` nested around each chunk's logits on the eager path, taken out of the exclusive
figure) and ``next_input`` (the VQ-VAE step, counted as "other"); ``decode`` around the VQ-VAE decode (outside
the scale loop).

On CUDA every range boundary synchronises the device, so a range's wall time is the GPU time of its work
(this generation is profiled, never timed). The profiled pass runs after every measurement of the point.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

PROFILES_DIR = "profiles"
TRACE_FILE = "trace.json"
SNAPSHOT_FILE = "memory_snapshot.pickle"
PHASES = ("blocks", "head", "sampling", "decode")
SNAPSHOT_ENTRIES = 200_000          # allocation events kept by the CUDA memory history


def point_id(point: Mapping[str, Any], key_fields: tuple[str, ...]) -> str:
    """A folder name for a point: readable (method, batch, dtype) plus a hash of its whole key, so two points
    never share a folder and a resumed sweep finds the same one."""
    method = str(point.get("method") or f"d{point.get('depth')}-s{point.get('switch')}")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", method).strip("-")[:60] or "point"
    key = json.dumps({k: point.get(k) for k in key_fields}, sort_keys=True, default=str)
    return f"{slug}-b{point.get('batch')}-{point.get('dtype')}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


class _Ranges:
    """A stack of open record_function ranges, entered and exited by hand (hooks open and close them)."""

    def __init__(self, sync: Any):
        from torch.profiler import record_function

        self._rf, self._sync, self.stack = record_function, sync, []

    def push(self, name: str) -> None:
        self._sync()
        rf = self._rf(name)
        rf.__enter__()
        self.stack.append((name, rf))

    def pop(self, name: str | None = None) -> None:
        """Close the innermost range (only if it is ``name``, when given)."""
        if not self.stack or (name is not None and self.stack[-1][0] != name):
            return
        self._sync()
        self.stack.pop()[1].__exit__(None, None, None)

    def close_all(self) -> None:
        while self.stack:
            self.pop()


def profile_point(pipe: Any, gen_kw: Mapping[str, Any], device: Any, results_dir: str | os.PathLike,
                  name: str) -> dict[str, Any]:
    """Profile one generation (``gen_kw``, decode run separately) + decode into ``results_dir/profiles/name/``;
    returns the row's profile fields (paths relative to ``results_dir``). Never raises for a profiling failure:
    the point's other measurements stand, ``profile_error`` says what went wrong."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    rel = f"{PROFILES_DIR}/{name}"
    folder = Path(results_dir) / rel
    out: dict[str, Any] = {"profile_trace": None, "profile_memory_snapshot": None,
                           "profile_memory_snapshot_reason": None if cuda else
                           f"a CUDA memory snapshot needs a CUDA device (this point ran on {device.type})",
                           "profile_scale_ms": None, "profile_phase_ms": None, "profile_scale_phase_ms": None,
                           "profile_note": ("CUDA graphs: the head runs inside the captured graph, so it is in "
                                            "'blocks'" if pipe.plan.cuda_graphs and cuda else
                                            "'sampling' includes CFG, top-k/top-p and the next scale's input; "
                                            "'head' is nested in it and counted apart"),
                           "profile_error": None}
    recording = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        trace_path, snap_path = folder / TRACE_FILE, folder / SNAPSHOT_FILE
        sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
        ranges = _Ranges(sync)

        def on_scale_begin(si: int, cache: Any) -> None:
            ranges.push(f"scale {si}")

        def on_scale_end(si: int, cache: Any) -> None:
            ranges.pop(f"scale {si}")

        def on_phase(name: str, si: int, event: str) -> None:
            if event == "begin":
                ranges.push(name)
            else:
                ranges.pop(name)

        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        kw = {k: v for k, v in gen_kw.items() if k not in ("on_scale_begin", "on_scale_end", "on_phase")}
        kw["decode"] = False
        try:
            sync()
            if cuda:
                torch.cuda.memory._record_memory_history(max_entries=SNAPSHOT_ENTRIES)
                recording = True
            with torch.profiler.profile(activities=activities) as prof:
                ranges.push("generate")
                res = pipe.generate(**kw, on_scale_begin=on_scale_begin, on_scale_end=on_scale_end,
                                    on_phase=on_phase)
                ranges.close_all()
                ranges.push("decode")
                pipe.decode(res.f_hat)
                ranges.close_all()
            if cuda:
                torch.cuda.memory._dump_snapshot(str(snap_path))
                out["profile_memory_snapshot"] = f"{rel}/{SNAPSHOT_FILE}"
        finally:
            ranges.close_all()
        prof.export_chrome_trace(str(trace_path))
        out["profile_trace"] = f"{rel}/{TRACE_FILE}"
        out.update(breakdown(trace_path, len(pipe.spec.patch_nums)))
    except Exception as e:  # noqa: BLE001 - a profiler fault must not lose the point's measurements
        log.warning("profiling %s failed: %s", name, e)
        out["profile_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    finally:
        if recording:
            torch.cuda.memory._record_memory_history(enabled=None)
    return out


# ---- reading a trace back -------------------------------------------------------------------------------------
def range_events(trace: str | os.PathLike | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The CPU-side record_function ranges of a Chrome trace (file or loaded dict): name, ts, dur in µs."""
    data = trace if isinstance(trace, Mapping) else json.loads(Path(trace).read_text(encoding="utf-8"))
    return [e for e in data.get("traceEvents", [])
            if e.get("ph") == "X" and e.get("cat") == "user_annotation" and "dur" in e]


def breakdown(trace: str | os.PathLike | Mapping[str, Any], num_scales: int) -> dict[str, Any]:
    """Per-scale ms and per-phase exclusive ms from a trace's ranges: ``profile_scale_ms`` (one per scale),
    ``profile_scale_phase_ms`` (per scale: blocks, head, sampling without its head, other) and
    ``profile_phase_ms`` (their sums over scales, plus decode)."""
    ev = range_events(trace)
    eps = 1e-3

    def inside(e: Mapping[str, Any], outer: Mapping[str, Any]) -> bool:
        return (e.get("tid") == outer.get("tid") and e["ts"] >= outer["ts"] - eps
                and e["ts"] + e["dur"] <= outer["ts"] + outer["dur"] + eps)

    scales: list[dict[str, Any] | None] = [None] * num_scales
    for e in ev:
        m = re.fullmatch(r"scale (\d+)", str(e.get("name")))
        if m and int(m.group(1)) < num_scales:
            scales[int(m.group(1))] = e
    per_scale, scale_ms = [], []
    for si, s in enumerate(scales):
        if s is None:
            scale_ms.append(None)
            per_scale.append({"scale": si})
            continue
        within = [e for e in ev if e is not s and inside(e, s)]

        def total(name: str, pool: list[dict[str, Any]] = within) -> float:
            return sum(e["dur"] for e in pool if e.get("name") == name) / 1e3
        samp = [e for e in within if e.get("name") == "sampling"]
        heads_in_sampling = [e for e in within if e.get("name") == "head" and any(inside(e, x) for x in samp)]
        blocks, sampling_incl = total("blocks"), total("sampling")
        head = total("head", heads_in_sampling)           # a head inside 'blocks' (graphs, code) stays there
        ms = s["dur"] / 1e3
        phases = {"blocks": blocks, "head": head, "sampling": max(0.0, sampling_incl - head)}
        phases["other"] = max(0.0, ms - blocks - sampling_incl)
        scale_ms.append(ms)
        per_scale.append({"scale": si, "ms": ms, **phases})
    sums = {p: sum(d.get(p, 0.0) for d in per_scale) for p in ("blocks", "head", "sampling", "other")}
    sums["decode"] = sum(e["dur"] for e in ev if e.get("name") == "decode") / 1e3
    return {"profile_scale_ms": scale_ms, "profile_phase_ms": sums, "profile_scale_phase_ms": per_scale}
