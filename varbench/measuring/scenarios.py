"""MLPerf-like scenarios over a finished sweep: the fixed-batch rows answer two other questions without a rerun.

- **max-throughput** (MLPerf "offline"): per configuration, the batch size with the most images/s.
- **slo** (MLPerf "server"-like): per configuration, the most images/s among batch sizes whose p99 latency of a
  batch is within a bound. The latency of a request is the latency of the batch it is in: the p99 of the
  per-rep generation samples (``latency_ms_samples``; the row's ``latency_ms_p99`` where samples are missing)
  plus the median decode. There is no queueing model (arrivals waiting for a batch to fill are not simulated),
  so this is the batch-latency bound a server would have to meet, not a full server scenario.

Throughput is the row's ``images_per_s`` (batch / (p50 generation + p50 decode)). With few samples the p99 is in
effect the slowest rep; each choice carries its sample count ``n``. A configuration is a sweep point's key
fields except ``batch`` (older rows normalised as ``varbench compare`` does). Pure: rows in, results out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from varbench import schema
from varbench.errors import UsageError
from varbench.results import finite_number


@dataclass
class BatchPoint:
    """One batch size of one configuration: its throughput and the p99 latency a request in it sees."""

    batch: int
    status: str
    images_per_s: float | None = None
    latency_p99_ms: float | None = None        # generation p99 + decode p50
    n: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.images_per_s is not None


@dataclass
class ScenarioResult:
    config: str
    model: str
    method: str | None
    points: list[BatchPoint] = field(default_factory=list)
    max_throughput: BatchPoint | None = None
    slo_ms: float | None = None
    slo: BatchPoint | None = None              # None: no batch meets the bound (or no bound asked)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def p99(samples: Iterable[Any]) -> float | None:
    """The 99th percentile (numpy's linear interpolation, as ``timing.percentiles``) of the finite samples."""
    vals = [v for v in (finite_number(s) for s in samples) if v is not None]
    if not vals:
        return None
    import numpy as np

    return float(np.percentile(vals, 99))


def batch_point(r: Mapping[str, Any]) -> BatchPoint:
    samples = r.get("latency_ms_samples") or []
    gen = p99(samples) if samples else finite_number(r.get("latency_ms_p99"))
    dec = finite_number(r.get("decode_ms_p50")) or 0.0
    n = len(samples) or int(finite_number(r.get("n")) or 0)
    return BatchPoint(int(r["batch"]), str(r.get("status")), finite_number(r.get("images_per_s")),
                      None if gen is None else gen + dec, n)


def analyse(rows: Iterable[Mapping[str, Any]], latency_slo_ms: float | None = None) -> list[ScenarioResult]:
    """One result per configuration, in the rows' order; the latest row of a (configuration, batch) wins."""
    from varbench.gating.compare import normal_row, point_labels

    if latency_slo_ms is not None and not (math.isfinite(latency_slo_ms) and latency_slo_ms > 0):
        raise UsageError(f"--latency-slo: must be a positive number of ms, got {latency_slo_ms}")
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r.get("kind", "sweep") != "sweep" or r.get("batch") is None:
            continue
        r = normal_row(r)
        key = schema.key_of({**r, "batch": None}, schema.SWEEP)
        groups.setdefault(key, {})[int(r["batch"])] = r
    labels = point_labels(schema.SWEEP, list(groups))
    out = []
    for key, by_batch in groups.items():
        first = next(iter(by_batch.values()))
        res = ScenarioResult(labels[key], str(first.get("model")), first.get("method"), slo_ms=latency_slo_ms)
        res.points = [batch_point(by_batch[b]) for b in sorted(by_batch)]
        ok = [p for p in res.points if p.ok]
        if ok:
            res.max_throughput = max(ok, key=lambda p: (p.images_per_s, -p.batch))
        if latency_slo_ms is not None:
            within = [p for p in ok if p.latency_p99_ms is not None and p.latency_p99_ms <= latency_slo_ms]
            res.slo = max(within, key=lambda p: (p.images_per_s, -p.batch)) if within else None
        out.append(res)
    if not any(p.ok for res in out for p in res.points):
        raise UsageError("no finished sweep points (status ok) to analyse")
    return out
