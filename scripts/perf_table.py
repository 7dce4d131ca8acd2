"""The README's H200 performance table, regenerated from committed sweep rows next to the official figures.

Usage: python scripts/perf_table.py results/h200/fast-lean  (prints Markdown: the table and the target verdicts)

Every varbench number comes from a row of DIR/{fast,lean,eager}.jsonl (the median latency of generation, the
median decode, the peak allocated, the energy per image); the official figures are ANCHORS.md's (the official
code on the same GPU model, fp16 autocast), written here once as constants with that source.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# ../shared/ANCHORS.md, "Official VAR vs varbench on one NVIDIA H200" (ms incl. decode, peak allocated MiB)
OFFICIAL = {(30, 1): (280.0, 8634), (30, 16): (378.0, 15862), (30, 64): (1103.0, 39005), (30, 128): (2159.0, 69883),
            (2, 1): (144.0, 8296), (2, 16): (186.0, 10820), (2, 64): (428.0, 18902), (2, 128): (802.0, 29671)}
OFFICIAL_MAX_BATCH = 240


def rows(d: Path, name: str) -> dict[tuple[int, int], dict]:
    p = d / f"{name}.jsonl"
    out = {}
    for line in p.read_text().splitlines() if p.exists() else []:
        r = json.loads(line)
        if r.get("status") == "ok" and r.get("method", "").startswith("variant"):
            out[(r["depth"], r["batch"])] = r
    return out


def cell(r: dict | None) -> str:
    if r is None:
        return ""
    mib = r["peak_allocated_bytes"] / 2**20
    j = r.get("energy_j_per_image")
    energy = f" · {j:.2f} J/img" if j is not None else ""
    return f"{r['latency_ms_p50']:.1f} + {r['decode_ms_p50']:.1f} ms · {mib:,.0f} MiB{energy}"


def main(d: Path) -> None:
    fast, lean, eager = rows(d, "fast"), rows(d, "lean"), rows(d, "eager")
    print("| case | official (incl. decode) · peak | varbench default (graphs + compile) | compile only | --eager |")
    print("|---|---|---|---|---|")
    for key in sorted(fast, key=lambda k: (-k[0], k[1])):
        depth, batch = key
        name = "d30" if depth == 30 else f"VARiant-d{depth}"
        off = OFFICIAL.get(key)
        naive = "naive " if depth != 30 else ""
        o = f"{naive}{off[0]:,.0f} ms · {off[1]:,} MiB" if off else ""
        print(f"| {name}, batch {batch} | {o} | {cell(fast.get(key))} | {cell(lean.get(key))} | "
              f"{cell(eager.get(key))} |")
    f30, f2 = fast.get((30, 64)), fast.get((2, 64))
    if f30 and f2:
        e2e = f30["latency_ms_p50"] + f30["decode_ms_p50"]
        print()
        print(f"- d30 batch 64: {e2e:.1f} ms incl. decode = {e2e / OFFICIAL[(30, 64)][0]:.3f}× official; "
              f"{f30['tflop_per_s']:.0f} TFLOP/s; peak {f30['peak_allocated_bytes'] / 2**20:,.0f} MiB = "
              f"{f30['peak_allocated_bytes'] / 2**20 / OFFICIAL[(30, 64)][1]:.3f}× official")
        print(f"- VARiant-d2 vs d30, batch 64, excl. decode: {f30['latency_ms_p50'] / f2['latency_ms_p50']:.2f}×")
    if (30, 1) in fast:
        r = fast[(30, 1)]
        print(f"- d30 batch 1 incl. decode: {r['latency_ms_p50'] + r['decode_ms_p50']:.1f} ms")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/h200/fast-lean"))
