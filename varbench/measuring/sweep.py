"""Throughput/memory sweeps over (switch, depth, batch), one fresh worker process per point (DESIGN "Isolation").

Each point runs ``python -m varbench.measuring.sweep_worker`` with a JSON spec on stdin; the worker prints one result line on
stdout. A fresh process keeps NVML and allocator peaks clean and contains crashes: an OOM becomes a row with
status "oom", a worker that dies (even by SIGKILL) a row with status "error" and what is known (return code or
signal, stderr tail). Rows are appended to ``out_dir/sweep.jsonl`` (flushed + fsynced) as each point finishes,
next to ``manifest.json``. Re-running resumes: points whose key already has an "ok" or "oom" row are skipped;
Ctrl-C kills the running worker and leaves every finished row on disk.

Test hooks (environment variable read by the worker, never set by varbench itself):
    VARBENCH_FAULT="oom:depth=2,batch=2"             raise an OutOfMemoryError in the matching point's worker
    VARBENCH_FAULT="kill:depth=4,batch=1"            the matching worker SIGKILLs itself
    VARBENCH_FAULT="error:depth=4"                   the matching worker raises a RuntimeError
Several faults are separated by ";". Conditions are ``field=value`` pairs on the point (model, depth, switch,
batch, select, dtype, device); an empty condition list matches every point.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from varbench import results
from varbench.schema import SWEEP, key_of
from varbench.target import ModelTarget, Weights, portable_config, resolve_weights

log = logging.getLogger(__name__)

RESULT_MARK = "VARBENCH_RESULT "


@dataclass
class SweepConfig:
    """One sweep: the grid (depths × batches × switches) and the measurement settings shared by every point."""

    model: str = "var-d30"
    ckpt: str | None = None
    vae: str | None = None
    depths: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 30])
    batches: list[int] = field(default_factory=lambda: [1])
    switches: list[int] = field(default_factory=lambda: [6])
    select: str = "isometric"
    dtype: str = "bf16"                 # bf16 | fp16 | fp32 (a name, so configs and rows stay JSON)
    device: str = "cpu"                 # already resolved: cpu | cuda | cuda:N
    repeats: int = 3
    min_seconds: float = 1.0
    warmup: int = 1
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    keep_skipped: bool = False
    allow_random: bool = True
    seed: int = 0
    timeout_s: float | None = None      # per point; None = no limit
    nvml_pass: bool = True              # one extra pass with the NVML sampler (GPU only)
    cuda_graphs: bool | None = None     # per-scale CUDA graph replay; None = on for CUDA (the fast path), off on CPU
    compile: bool | None = None         # fused element-wise kernels + compiled decoder; None = as cuda_graphs
    plan_overrides: dict[str, Any] | None = None   # explicit InferencePlan fields (model/plan.py), e.g. A/B probes
    methods: list[str] | None = None    # efficiency-method configurations (model/methods.py) or per-scale
    #                                     schedules "schedule:depths=..." (varbench plan); None = the variant grid
    devices: list[str] | None = None    # GPU ids, one concurrent worker each (CUDA_VISIBLE_DEVICES); None = one
    threads: int | None = None          # torch intra-op CPU threads per worker; None = torch's default (all cores)
    energy_seconds: float = 2.0         # GPU energy window (generate + decode) at least this long; 0 = no energy pass
    profile: bool = False               # one profiled generation per point: <out>/profiles/<point id>/ (profiling)

    def execution(self) -> tuple[bool, bool]:
        """(cuda_graphs, compile) as the points run: a choice left unset takes the fastest path of the device
        (both on CUDA, the eager path on a CPU); ``--eager`` sets both off."""
        gpu = self.device.startswith("cuda")
        return (gpu if self.cuda_graphs is None else bool(self.cuda_graphs),
                gpu if self.compile is None else bool(self.compile))

    def target(self) -> ModelTarget:
        """What every point loads; each worker rebuilds it from the point's fields (sweep_worker._build)."""
        return ModelTarget(self.model, self.ckpt, self.vae, self.allow_random, self.dtype, self.device, self.seed)


def method_grid(cfg: SweepConfig) -> list[tuple[str, int, int, str | None]]:
    """(canonical method, depth, switch, select) per configuration: ``cfg.methods`` when given, else the
    variant grid (switches × depths). A bad method is a UsageError naming it. (depth, switch, select):
    ``Configuration.descriptor()``."""
    from model import methods as methods_mod
    from model import spec as spec_mod

    from varbench.errors import UsageError

    spec = spec_mod.get(cfg.model)
    if not cfg.methods:
        return [(methods_mod.variant(spec, d, sw, cfg.select).canonical(), int(d), int(sw), cfg.select)
                for sw in cfg.switches for d in cfg.depths]
    out = []
    for text in cfg.methods:
        try:
            conf = methods_mod.parse(text, spec)
        except methods_mod.MethodError as e:
            raise UsageError(f"--method: {e}") from None
        out.append((conf.canonical(), *conf.descriptor()))
    return list(dict.fromkeys(out))


def expand_grid(cfg: SweepConfig, weights: Weights) -> list[dict[str, Any]]:
    """Points in run order (configuration, batch); each carries the key fields and the settings the worker
    needs."""
    points = []
    graphs, compiled = cfg.execution()
    for method, depth, switch, select in method_grid(cfg):
        for batch in cfg.batches:
            points.append({
                "model": cfg.model, "weights": weights.label, "depth": int(depth), "switch": int(switch),
                "method": method, "select": select, "batch": int(batch), "dtype": cfg.dtype,
                "device": cfg.device,
                "keep_skipped": bool(cfg.keep_skipped), "cuda_graphs": graphs,
                "compile": compiled, "plan_overrides": dict(cfg.plan_overrides or {}) or None,
                "var_path": weights.var_path, "vae_path": weights.vae_path,
                "repeats": cfg.repeats, "min_seconds": cfg.min_seconds, "warmup": cfg.warmup,
                "cfg": cfg.cfg, "top_k": cfg.top_k, "top_p": cfg.top_p, "seed": cfg.seed,
                "nvml_pass": cfg.nvml_pass, "threads": cfg.threads, "energy_seconds": cfg.energy_seconds,
            })
    return points


def base_row(point: dict[str, Any], weights: Weights) -> dict[str, Any]:
    """The row skeleton: identity fields filled, every measured field present (null until measured)."""
    row: dict[str, Any] = {"kind": SWEEP.name}
    row.update({k: point[k] for k in SWEEP.key_fields})
    row.update({k: None for k in SWEEP.required if k not in row})     # layers, status, error, measured fields
    row["status"] = "error"
    if weights.notice:
        row["weights_notice"] = weights.notice
    return row


def _worker_env() -> dict[str, str]:
    """The parent's environment with this checkout first on PYTHONPATH, so the worker imports the same code."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Inductor's on-disk caches (compiled graphs, Triton kernels, autotuning) in one lasting place, so a compile
    # is paid by the first worker of a configuration and loaded by the later ones (rows: first_call_s)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))
    return env


def compile_cache_dir() -> Path:
    """Where the workers' torch.compile caches live: $XDG_CACHE_HOME/varbench/inductor (~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "varbench" / "inductor"


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"worker killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"worker killed by signal {-rc}"
    return f"worker exited with code {rc}"


def _tail(text: str, lines: int = 8, chars: int = 1500) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


def cpu_slices(n: int) -> list[list[int]] | None:
    """The CPUs this process may use, split into ``n`` disjoint slices (None if fewer CPUs than slices or no
    affinity API). Concurrent workers on several GPUs otherwise share every core: each one's intra-op thread pool
    spans the whole host and the launch-bound points of both slow down (on 2 x H100, VARiant-d2 batch 64 took
    346.7 ms beside another worker and 243.9 ms alone)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if n < 2 or len(cpus) < n:
        return None
    k = len(cpus) // n
    return [cpus[i * k:(i + 1) * k] for i in range(n)]


def run_point(point: dict[str, Any], timeout_s: float | None = None, gpu: str | None = None,
              cpus: list[int] | None = None) -> dict[str, Any]:
    """Run one point in a fresh worker; returns the worker's result dict or an "error" dict saying what happened.

    ``gpu``: the physical GPU the worker sees (CUDA_VISIBLE_DEVICES), so rows stay device "cuda" whichever card.
    ``cpus``: pin the worker to these CPUs (and size its thread pools to them) while other workers run.
    """
    cmd = [sys.executable, "-m", "varbench.measuring.sweep_worker"]
    env = _worker_env()
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if cpus:                           # the worker pins itself (no preexec_fn: the parent runs threads)
        env["VARBENCH_CPUS"] = ",".join(map(str, cpus))
        env["OMP_NUM_THREADS"] = str(len(cpus))
        if not point.get("threads"):
            point = {**point, "threads": len(cpus)}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        out, err = proc.communicate(json.dumps(point), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"status": "error", "error": f"worker timed out after {timeout_s} s; stderr: {_tail(err)}",
                "returncode": proc.returncode}
    except BaseException:          # Ctrl-C: leave no orphan behind, then let the caller stop the sweep
        proc.kill()
        proc.wait()
        raise
    result = None
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                result = json.loads(line[len(RESULT_MARK):])
            except ValueError:
                result = None
            break
    if proc.returncode != 0 or not isinstance(result, dict):
        what = _describe_exit(proc.returncode) if proc.returncode != 0 else "worker printed no result"
        return {"status": "error", "error": f"{what}; stderr: {_tail(err) or '(empty)'}",
                "returncode": proc.returncode}
    return result


def _latest_by_key(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind", SWEEP.name) == SWEEP.name:
            latest[key_of(r, SWEEP)] = r
    return latest


def _write_manifest(out_dir: Path, cfg: SweepConfig, weights: Weights, n_points: int) -> None:
    """First run writes the manifest; a resume keeps its environment and appends when/where it resumed."""
    extra: dict[str, Any] = {"kind": "sweep", "config": portable_config(asdict(cfg)), "weights": weights.label,
                             "weights_notice": weights.notice, "dtype": cfg.dtype, "points": n_points,
                             "rows_file": SWEEP.rows_file}
    old = results.read_manifest(out_dir)
    if old:
        env = results.environment()
        resumes = list(old.get("resumes", [])) + [{k: env[k] for k in ("start_time", "command_line",
                                                                       "git_commit", "hostname", "gpu_name")}]
        extra = {**old, **extra, "resumes": resumes}
        for k in ("start_time", "command_line", "git_commit"):
            extra[k] = old.get(k)
    results.write_manifest(out_dir, extra)


ProgressFn = Callable[[str, int, int, dict[str, Any]], None]


def run_sweep(cfg: SweepConfig, out_dir: str | os.PathLike, progress: bool | ProgressFn = True) -> list[dict]:
    """Run every grid point not already finished in ``out_dir``; returns one row per point (grid order).

    ``progress``: a callable ``(event, index, total, row_or_point)`` with event "skip" | "start" | "done",
    or True to log each point, or False for silence.
    """
    if cfg.repeats < 1 or cfg.min_seconds < 0 or cfg.warmup < 0 or (cfg.threads is not None and cfg.threads < 1) \
            or not cfg.energy_seconds >= 0:
        raise ValueError(f"bad sweep settings: repeats={cfg.repeats}, min_seconds={cfg.min_seconds}, "
                         f"warmup={cfg.warmup}, threads={cfg.threads}, energy_seconds={cfg.energy_seconds}")
    if cfg.plan_overrides:                # a typo in a plan field fails here, not in every worker
        from model.plan import InferencePlan
        try:
            InferencePlan.resolve("cpu", **cfg.plan_overrides)
        except (TypeError, ValueError) as e:
            from varbench.errors import UsageError
            raise UsageError(f"plan_overrides: {e}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / SWEEP.rows_file
    weights = resolve_weights(cfg.target())
    points = expand_grid(cfg, weights)
    if cfg.profile:                       # the worker writes <out>/profiles/<point id>/ (varbench.measuring.profiling)
        from varbench.measuring.profiling import point_id
        for p in points:
            p.update(profile_root=str(out.resolve()), profile_id=point_id(p, SWEEP.key_fields))
    _write_manifest(out, cfg, weights, len(points))

    def report(event: str, i: int, obj: dict[str, Any]) -> None:
        if callable(progress):
            progress(event, i, len(points), obj)
        elif progress:
            log.info("[%d/%d] %s depth=%s batch=%s switch=%s %s", i + 1, len(points), event, obj.get("depth"),
                     obj.get("batch"), obj.get("switch"), obj.get("status", ""))

    done = _latest_by_key(results.read_rows(rows_path))
    rows: list[dict[str, Any] | None] = [None] * len(points)
    todo = []
    for i, point in enumerate(points):
        prev = done.get(key_of(point, SWEEP))
        if prev is not None and prev.get("status") in SWEEP.done_statuses:
            rows[i] = prev
            report("skip", i, prev)
        else:
            todo.append(i)
    lock = threading.Lock()

    devices = list(cfg.devices or [])
    slices = cpu_slices(len(devices)) if len(devices) > 1 else None

    def run_one(i: int, gpu: str | None) -> None:
        with lock:
            report("start", i, points[i])
        cpus = slices[devices.index(gpu)] if slices and gpu in devices else None
        res = run_point(points[i], cfg.timeout_s, gpu, cpus)
        row = base_row(points[i], weights)
        row.update(res)
        if gpu is not None:
            row["gpu_index"] = gpu
        with lock:                    # rows are appended whole, one line each, as each point finishes
            results.append_row(rows_path, row)
            rows[i] = row
            report("done", i, row)

    if len(devices) <= 1:
        for i in todo:
            run_one(i, devices[0] if devices else None)
    else:
        free: queue.Queue[str] = queue.Queue()
        for d in devices:
            free.put(d)

        def on_free_device(i: int) -> None:
            gpu = free.get()
            try:
                run_one(i, gpu)
            finally:
                free.put(gpu)

        with ThreadPoolExecutor(max_workers=len(devices)) as pool:
            for fut in [pool.submit(on_free_device, i) for i in todo]:
                fut.result()
    return [r for r in rows if r is not None]
