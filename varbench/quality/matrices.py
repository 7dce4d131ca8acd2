"""The sensitivity results as tables: one matrix (scale or group × depth) per mode and metric, its intervals, and
the CSV files ``run_sensitivity`` writes next to the rows (written whole, atomically)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from varbench.results import atomic_write_text

CANDIDATE_MODES = ("method", "schedule")     # rows scoring one configuration each (no matrix)


def matrix(rows: Sequence[dict], mode: str, metric: str) -> tuple[list[str], list[int], list[list[float]]]:
    """(row labels, depths, values[row][depth]) for one mode and metric; NaN where a cell is missing."""
    sel = [r for r in rows if r.get("mode") == mode and r.get("metric") == metric]
    labels = list(dict.fromkeys(r["group"] if r.get("group") else str(r["scale"]) for r in sel))
    depths = list(dict.fromkeys(r["depth"] for r in sel))
    val = {(r["group"] if r.get("group") else str(r["scale"]), r["depth"]): r["value"] for r in sel}
    return labels, depths, [[val.get((lab, d), math.nan) for d in depths] for lab in labels]


def matrix_intervals(rows: Sequence[dict], mode: str, metric: str
                     ) -> dict[tuple[str, int], tuple[float | None, float | None, int | None]]:
    """(row label, depth) -> (ci_low, ci_high, n) of one matrix; rows written before intervals give Nones."""
    return {(r["group"] if r.get("group") else str(r["scale"]), r["depth"]):
            (r.get("ci_low"), r.get("ci_high"), r.get("n"))
            for r in rows if r.get("mode") == mode and r.get("metric") == metric}


def _write_csv(path: Path, table: Sequence[Sequence]) -> Path:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(table)
    atomic_write_text(path, buf.getvalue())
    return path


def write_candidates(rows: Sequence[dict], out_dir: Path) -> Path:
    """sensitivity_candidates.csv: one line per (method or schedule, metric) with its interval."""
    head = ["mode", "method", "metric", "value", "ci_low", "ci_high", "n", "kv_bytes", "flops", "predicted_loss"]
    body = [[r["mode"], r["method"], r["metric"], repr(float(r["value"])), r.get("ci_low"), r.get("ci_high"),
             r.get("n"), r.get("kv_bytes"), r.get("flops"), r.get("predicted_loss")]
            for r in rows if r.get("mode") in CANDIDATE_MODES]
    return _write_csv(Path(out_dir) / "sensitivity_candidates.csv", [head, *body])


def write_matrices(rows: Sequence[dict], out_dir: Path, mode: str) -> list[Path]:
    """One CSV per metric: sensitivity_matrix_<mode>_<metric>.csv, rows = scale or group, columns = depth."""
    paths = []
    for m in dict.fromkeys(r["metric"] for r in rows if r.get("mode") == mode):
        labels, depths, vals = matrix(rows, mode, m)
        table = [["group" if mode == "groups" else "scale"] + [f"d{d}" for d in depths]]
        table += [[lab] + [repr(float(v)) for v in row] for lab, row in zip(labels, vals)]
        paths.append(_write_csv(Path(out_dir) / f"sensitivity_matrix_{mode}_{m}.csv", table))
    return paths
