"""One sweep point in its own process: ``python -m varbench.measuring.sweep_worker`` reads a JSON point on stdin and prints
one ``VARBENCH_RESULT {...}`` line on stdout (everything else the process prints goes to stderr).

Order of work (DESIGN "Measurement rules"): build the pipeline; reset allocator peaks; latency of
generate(decode=False) with warm-up and repeats (no sampler, no callbacks); a separate pass with per-scale
boundaries (events on GPU, synchronize + perf_counter on CPU) and the cache's real bytes; VQ-VAE decode timed on
its own; then, on GPU, one pass with the NVML sampler for the device peak and a window of generate + decode for
the energy per image (``energy``); last, with ``--profile``, one profiled generation (``profiling``). Never
imports plotly or rich.
The fault hooks (VARBENCH_FAULT) are documented in ``varbench.measuring.sweep``.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

RESULT_MARK = "VARBENCH_RESULT "     # same as varbench.measuring.sweep.RESULT_MARK (not imported: keep the worker lean)


def _parse_faults(text: str) -> list[tuple[str, dict[str, str]]]:
    faults = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        kind, _, conds = part.partition(":")
        cond = {}
        for c in filter(None, (c.strip() for c in conds.split(","))):
            k, _, v = c.partition("=")
            cond[k.strip()] = v.strip()
        faults.append((kind.strip(), cond))
    return faults


def _inject_fault(point: dict[str, Any]) -> None:
    """Test hook: VARBENCH_FAULT="oom:depth=2,batch=2;kill:depth=4" (see varbench.measuring.sweep)."""
    import torch

    for kind, cond in _parse_faults(os.environ.get("VARBENCH_FAULT", "")):
        if all(str(point.get(k)) == v for k, v in cond.items()):
            if kind == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by VARBENCH_FAULT)")
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "error":
                raise RuntimeError("failure injected by VARBENCH_FAULT")


def _build(point: dict[str, Any], device: Any, dtype: Any) -> Any:
    """The point's pipeline through the one loader; the parent resolved the weights (label and files) already."""
    from varbench import target as target_mod

    target = target_mod.ModelTarget(point["model"], allow_random=True, dtype=target_mod.dtype_name(dtype),
                                    device=str(device), seed=point["seed"])
    weights = target_mod.Weights(point["weights"], point.get("var_path"), point.get("vae_path"))
    return target_mod.load_pipeline(target, weights)


def _scale_pass(pipe: Any, gen_kw: dict[str, Any], device: Any) -> tuple[list[float], int]:
    """One generation with a mark at every scale end: per-scale ms and the cache's largest real size."""
    import torch

    cuda = device.type == "cuda"
    kv_max = 0
    if cuda:
        evs = [torch.cuda.Event(enable_timing=True)]
        evs[0].record()
    else:
        stamps = [time.perf_counter()]

    def on_scale_end(si: int, cache: Any) -> None:
        nonlocal kv_max
        kv_max = max(kv_max, int(cache.nbytes()))
        if cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            evs.append(ev)
        else:
            stamps.append(time.perf_counter())

    pipe.generate(**gen_kw, on_scale_end=on_scale_end)
    if cuda:
        evs[-1].synchronize()
        per_scale = [float(a.elapsed_time(b)) for a, b in zip(evs, evs[1:])]
    else:
        per_scale = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]
    return per_scale, kv_max


def measure_point(point: dict[str, Any]) -> dict[str, Any]:
    """All measurements of one point; raises on OOM (the caller turns it into status "oom")."""
    import torch

    from model import spec as spec_mod
    from varbench.measuring import analytic
    from varbench.measuring import timing

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[point["dtype"]]
    device = torch.device(point["device"])
    cuda = device.type == "cuda"
    spec = spec_mod.get(point["model"])
    depth, switch, batch = int(point["depth"]), int(point["switch"]), int(point["batch"])
    from model import methods
    conf = (methods.parse(point["method"], spec) if point.get("method")
            else methods.variant(spec, depth, switch, point["select"]))     # rows written before methods existed
    schedule = conf.schedule()
    res: dict[str, Any] = {"layers": list(conf.layers()), "schedule": schedule.describe(),
                           "method": conf.canonical(), "method_params": conf.params()}
    if cuda and device.index is not None:
        torch.cuda.set_device(device)
    if point.get("threads"):
        torch.set_num_threads(int(point["threads"]))   # CPU timings depend on it: fixed by suites, kept in the row
    res["cpu_threads"] = torch.get_num_threads()
    cap_check = _cap_memory(point, device)     # maxbatch --memory-limit: set before anything is allocated
    pipe = _build(point, device, dtype)
    _inject_fault(point)
    labels = [i % spec.num_classes for i in range(batch)]
    gen_kw = dict(labels_B=labels, cfg=point["cfg"], top_k=point["top_k"], top_p=point["top_p"],
                  seed=point["seed"], schedule=schedule, keep_skipped=point["keep_skipped"], decode=False)
    # the point's execution choices become the pipeline's inference plan (resolved for this device; compiling
    # happens during the warm-up generation(s), which are not timed); the row records the plan that ran
    refiner_spec = None
    if conf.refiner():                    # code: the refiner model in the same process, its memory counted
        from varbench import target as target_mod
        rt = target_mod.ModelTarget(conf.refiner(), allow_random=True, dtype=point["dtype"], device=str(device),
                                    seed=point["seed"])
        rw = target_mod.resolve_weights(rt)
        ref_pipe = target_mod.load_pipeline(rt, rw)
        pipe.set_refiner(ref_pipe.var)
        refiner_spec, res["refiner_weights"] = ref_pipe.spec, rw.label
        del ref_pipe                      # its VQ-VAE: the drafter's decodes
    pipe.set_plan(compiled=bool(point.get("compile")),
                  cuda_graphs=bool(point.get("cuda_graphs")) and refiner_spec is None,   # code runs eager
                  **{**conf.plan_changes(), **(point.get("plan_overrides") or {})})
    res["plan"], res["execution"] = pipe.plan.as_dict(), pipe.plan.execution
    if cuda:
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        res["baseline_allocated_bytes"] = int(torch.cuda.memory_allocated(device))

    reps, min_s, warm = int(point["repeats"]), float(point["min_seconds"]), int(point["warmup"])
    t0 = time.perf_counter()              # the first call compiles (or loads the on-disk cache) and captures
    if warm:
        pipe.generate(**gen_kw)
        timing.synchronize(device)
        warm -= 1
    res["first_call_s"] = time.perf_counter() - t0 if int(point["warmup"]) else None
    samples = timing.measure(lambda: pipe.generate(**gen_kw), warmup=warm, min_repeats=reps,
                             min_seconds=min_s, device=device)
    lat = timing.percentiles(samples)
    if cuda:
        res["peak_allocated_gen_bytes"] = int(torch.cuda.max_memory_allocated(device))
        res["reserved_bytes"] = int(torch.cuda.memory_reserved(device))

    per_scale_runs, kv_bytes = [], 0
    for _ in range(max(1, min(reps, 5))):
        per_scale, kv = _scale_pass(pipe, gen_kw, device)
        per_scale_runs.append(per_scale)
        kv_bytes = max(kv_bytes, kv)
    scale_ms_p50 = [timing.percentiles([run[si] for run in per_scale_runs])["p50"]
                    for si in range(len(per_scale_runs[0]))]

    f_hat = pipe.generate(**gen_kw).f_hat
    dec = timing.percentiles(timing.measure(lambda: pipe.decode(f_hat), warmup=1, min_repeats=reps,
                                            min_seconds=min_s, device=device))
    if cuda:
        res["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        from varbench.measuring.memory import MemoryProbe
        res["peak_allocated_bytes"] = None
        res["rss_peak_bytes"] = MemoryProbe("cpu").snapshot()["rss_peak_bytes"]

    e2e = lat["p50"] + dec["p50"]
    flops = (analytic.flops(spec, schedule, batch, plan=pipe.plan) if refiner_spec is None
             else analytic.code_flops(spec, refiner_spec, batch, plan=pipe.plan))
    kv_analytic = (analytic.kv_peak_bytes(spec, schedule, batch, dtype, point["keep_skipped"], plan=pipe.plan)
                   if refiner_spec is None else
                   max(analytic.code_kv_bytes_per_scale(spec, refiner_spec, batch, dtype, point["keep_skipped"],
                                                        plan=pipe.plan)))
    res.update({
        "n": lat["n"], "latency_ms_p50": lat["p50"], "latency_ms_p90": lat["p90"], "latency_ms_p99": lat["p99"],
        "latency_ms_mean": lat["mean"], "latency_ms_min": lat["min"], "decode_ms_p50": dec["p50"],
        "latency_ms_samples": [round(v, 4) for v in samples],    # raw, for the gate's rank test
        "decode_n": dec["n"], "latency_incl_decode_ms_p50": e2e,
        "images_per_s": batch * 1e3 / e2e if e2e > 0 else None,
        "images_per_s_excl_decode": batch * 1e3 / lat["p50"] if lat["p50"] > 0 else None,
        "scale_ms_p50": scale_ms_p50, "kv_bytes": kv_bytes,
        "kv_bytes_analytic": kv_analytic,
        "flops": flops, "tflop_per_s": flops / (lat["p50"] * 1e9) if lat["p50"] > 0 else None,
        "nvml_peak_used_bytes": None, "nvml_peak_process_used_bytes": None,
    })
    res.update(_nvml_pass(pipe, gen_kw, device) if cuda and point.get("nvml_pass", True)
               else {"nvml": "NVML unavailable: device is CPU" if not cuda else "NVML pass disabled"})
    from varbench.measuring import energy
    res.update(_energy_pass(pipe, gen_kw, device, batch, point) if cuda
               else energy.null_fields("device is CPU: NVML measures GPU boards only"))
    if point.get("profile_root"):         # --profile: the drill-down, after every measurement
        from varbench.measuring import profiling
        res.update(profiling.profile_point(pipe, gen_kw, device, point["profile_root"], point["profile_id"]))
    res.update({"status": "ok", "error": None})
    if cap_check is not None:
        res.update(cap_check())           # CPU, past the limit: status "oom", the growth still reported
    return res


def _nvml_pass(pipe: Any, gen_kw: dict[str, Any], device: Any) -> dict[str, Any]:
    """One generate + decode with the 1 kHz sampler on (kept apart from the latency runs it would perturb)."""
    import torch

    from varbench.measuring.memory import Nvml
    from varbench.measuring.samplers import make_sampler

    nv = Nvml(index=device.index)
    if not nv.available:
        return {"nvml": nv.reason}
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()              # start from the weights alone, not the latency runs' cached blocks
    base = nv.device_used_bytes()
    with make_sampler(nv, interval_ms=1.0) as sampler:
        out = pipe.generate(**{**gen_kw, "decode": True})
        torch.cuda.synchronize(device)
        del out
    peak = sampler.peak_device_used()
    return {"nvml": nv.reason, "nvml_peak_used_bytes": peak, "nvml_baseline_used_bytes": base,
            "nvml_peak_process_used_bytes": sampler.peak_process_used(), "nvml_samples": sampler.n,
            "nvml_sample_hz": round(sampler.achieved_hz(), 1), "nvml_sampler": sampler.kind}


def _energy_pass(pipe: Any, gen_kw: dict[str, Any], device: Any, batch: int, point: dict[str, Any],
                 nvml: Any = None) -> dict[str, Any]:
    """Energy per image over a window of generate + decode (``energy.measure_energy``), kept apart from the
    latency runs its power sampler would perturb; ``point["energy_seconds"]`` <= 0 turns it off."""
    from varbench.measuring import energy
    from varbench.measuring.memory import Nvml

    seconds = float(point.get("energy_seconds", 2.0))
    if seconds <= 0:
        return energy.null_fields("energy pass disabled (energy_seconds = 0)")
    nv = nvml if nvml is not None else Nvml(index=device.index)
    return energy.measure_energy(lambda: pipe.generate(**{**gen_kw, "decode": True}), batch, nv, device=device,
                                 min_repeats=int(point.get("repeats", 1)), min_seconds=seconds)


def _cap_memory(point: dict[str, Any], device: Any) -> Any:
    """``point["memory_limit_bytes"]`` (``varbench maxbatch --memory-limit``): on CUDA the caching allocator is
    capped with ``set_per_process_memory_fraction``, so a larger need raises OutOfMemoryError ("oom"); on the CPU
    the returned check compares the growth of the process's peak RSS (VmHWM, reset here and kept by the kernel, so
    no transient is missed; ru_maxrss where it cannot be reset) from this point on (weights, activations, decode: what the allocator peak counts on a
    GPU) with the limit, after the point ran, and returns status "oom" past it. None without a limit."""
    limit = point.get("memory_limit_bytes")
    if not limit:
        return None
    import torch

    from varbench.measuring.memory import MemoryProbe

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()   # it wants an index
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, int(limit) / total), index)
        return lambda: {"memory_limit_bytes": int(limit), "memory_limit_mechanism": "cuda-memory-fraction"}
    gc.collect()
    base = MemoryProbe("cpu").snapshot()["rss_bytes"] or 0
    hwm = _reset_peak_rss()          # the high-water mark from here on, not the process's earlier peaks

    def check() -> dict[str, Any]:
        peak = _peak_rss() if hwm else (MemoryProbe("cpu").snapshot()["rss_peak_bytes"] or 0)
        grown = peak - base
        out = {"memory_limit_bytes": int(limit), "memory_limit_mechanism": "cpu-rss-peak",
               "rss_peak_growth_bytes": int(grown)}
        if grown > int(limit):
            out.update(status="oom", error=f"out of memory: peak RSS grew {grown / 2**20:.1f} MiB, over the "
                                           f"memory limit of {int(limit) / 2**20:.1f} MiB")
        return out
    return check


def _reset_peak_rss() -> bool:
    """Reset Linux's VmHWM (``/proc/self/clear_refs`` 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _peak_rss() > 0
    except OSError:
        return False


def _peak_rss() -> int:
    """VmHWM of /proc/self/status in bytes (0 if absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, (RuntimeError, MemoryError)) and ("out of memory" in msg or "can't allocate" in msg)


def _pin_cpus() -> list[int] | None:
    """Apply VARBENCH_CPUS (set by a sweep spread over several GPUs) before torch starts its thread pools."""
    spec = os.environ.get("VARBENCH_CPUS")
    if not spec:
        return None
    cpus = [int(c) for c in spec.split(",") if c.strip()]
    try:
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError):
        return None
    return cpus


def main() -> int:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr                 # anything printed by libraries stays off the result channel
    try:
        cpus = _pin_cpus()
        point = json.loads(sys.stdin.read())
        result = measure_point(point)
        if cpus is not None:
            result["cpu_affinity_count"] = len(os.sched_getaffinity(0))
    except BaseException as e:  # noqa: BLE001 - every failure becomes a result the parent can record
        if isinstance(e, KeyboardInterrupt):
            raise
        first = (str(e).strip().splitlines() or [""])[0][:500]
        if _is_oom(e):
            result = {"status": "oom", "error": first or "out of memory"}
        else:
            traceback.print_exc(file=sys.stderr)
            result = {"status": "error", "error": f"{type(e).__name__}: {first}"}
    real_stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
