"""The H100 measurement of issues 4 and 9 in one process tree (no typer needed on the device): var-d30 random
weights, bf16; eager sweep (freed KV accounting) over depths × batch 64, CUDA-graph sweep at batch 1 and 64, and a
trace with the 1 kHz NVML sampler. Rows land in OUT/{sweep,sweep-graphs,trace}/ (committed under results/h100/).
Usage: PYTHONPATH=. python3 scripts/h100_bench.py OUT
"""
import sys
from pathlib import Path

from varbench.sweep import SweepConfig, run_sweep
from varbench.trace import TraceConfig, run_trace

out = Path(sys.argv[1])
common = dict(model="var-d30", dtype="bf16", device="cuda", repeats=3, min_seconds=0.5, warmup=1, timeout_s=120)
run_sweep(SweepConfig(depths=[30, 16, 8, 2], batches=[64], **common), out / "sweep", progress=False)
run_sweep(SweepConfig(depths=[30, 2], batches=[1, 64], cuda_graphs=True, **common), out / "sweep-graphs",
          progress=False)
run_trace(TraceConfig(model="var-d30", depth=8, switch=6, batch=64, device="cuda", overhead_repeats=3), out / "trace")
