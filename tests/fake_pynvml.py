"""A fake ``pynvml`` module for CPU tests: counters instead of a GPU, switchable failure modes.

``make(...)`` returns a fresh module object to put in ``sys.modules['pynvml']`` (monkeypatch.setitem).
- mode "ok": one device; every nvmlDeviceGetMemoryInfo call returns a strictly larger ``used`` (a counter), so a
  timeline's ordering is visible in its values.
- mode "no_driver": nvmlInit raises NVMLError (as on a machine without the NVIDIA driver).
- missing: names among {"v3", "v2", "v1"} whose process-info function is absent from the module;
  not_supported: names whose function exists but raises NVMLError_FunctionNotFound (old driver, new binding).
- hide_pids: process list holds only foreign PIDs (container PID namespace).
- energy: "counter" (nvmlDeviceGetTotalEnergyConsumption reads ``mod.state["energy_mj"]``, which only moves by
  ``energy_step_mj`` per call or ``mod.advance_energy(mj)``), "not_supported" (it raises NVMLError_NotSupported, as
  before Volta) or "missing" (the binding lacks it). Power (nvmlDeviceGetPowerUsage, mW) and the SM clock
  (nvmlDeviceGetClockInfo) read ``mod.state["power_mw"]`` / ``mod.state["sm_clock_mhz"]``.
``nvml_factory`` builds the same fake inside a spawned sampler child (``samplers.NvmlProcessSampler``).
"""
from __future__ import annotations

import os
import threading
import types
from dataclasses import dataclass

MIB = 1 << 20
UUID = "GPU-fake-0000"        # the one device's UUID (nvmlDeviceGetHandleByUUID knows no other)


class NVMLError(Exception):
    def __init__(self, value: int = 999, msg: str = "Unknown Error"):
        super().__init__(msg)
        self.value = value


class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801 - mirrors pynvml's names
    def __init__(self) -> None:
        super().__init__(13, "Function Not Found")


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(9, "Driver Not Loaded")


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    def __init__(self) -> None:
        super().__init__(3, "Not Supported")


NVML_CLOCK_SM = 1


@dataclass
class _MemInfo:
    total: int
    free: int
    used: int


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - pynvml's field name


def make(mode: str = "ok", missing: tuple[str, ...] = (), not_supported: tuple[str, ...] = (),
         hide_pids: bool = False, pid: int | None = None, base_used: int = 1000 * MIB,
         step: int = MIB, total: int = 80_000 * MIB, energy: str = "counter", energy_mj: int = 1_000_000,
         energy_step_mj: int = 0, power_mw: int = 300_000, sm_clock_mhz: int = 1980) -> types.ModuleType:
    """Build a fake pynvml module; ``mod.calls`` counts calls per function name."""
    mod = types.ModuleType("pynvml")
    mod.NVMLError = NVMLError
    mod.NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    mod.NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    mod.NVMLError_NotSupported = NVMLError_NotSupported
    mod.NVML_CLOCK_SM = NVML_CLOCK_SM
    mod.calls = {}
    state = {"used": base_used, "init": 0, "energy_mj": energy_mj, "power_mw": power_mw,
             "sm_clock_mhz": sm_clock_mhz}
    mod.state = state
    lock = threading.Lock()
    own_pid = os.getpid() if pid is None else pid

    def count(name: str) -> None:
        with lock:
            mod.calls[name] = mod.calls.get(name, 0) + 1

    def nvmlInit() -> None:  # noqa: N802
        count("nvmlInit")
        if mode == "no_driver":
            raise NVMLError_DriverNotLoaded()
        state["init"] += 1

    def nvmlShutdown() -> None:  # noqa: N802
        count("nvmlShutdown")
        state["init"] = max(0, state["init"] - 1)

    def _check() -> None:
        if state["init"] <= 0:
            raise NVMLError(1, "Uninitialized")

    def nvmlDeviceGetCount() -> int:  # noqa: N802
        _check()
        return 1

    def nvmlDeviceGetHandleByIndex(i: int) -> str:  # noqa: N802
        _check()
        if i != 0:
            raise NVMLError(2, "Invalid Argument")
        return "handle0"

    def nvmlDeviceGetName(h: str) -> str:  # noqa: N802
        return "Fake GPU 80GB"

    def nvmlSystemGetDriverVersion() -> str:  # noqa: N802
        return "999.99"

    def nvmlDeviceGetMemoryInfo(h: str) -> _MemInfo:  # noqa: N802
        _check()
        count("nvmlDeviceGetMemoryInfo")
        with lock:
            state["used"] += step
            used = state["used"]
        return _MemInfo(total=total, free=total - used, used=used)

    def _proc_fn(tag: str):
        def fn(h: str) -> list[_Proc]:
            _check()
            count(tag)
            if tag in not_supported:
                raise NVMLError_FunctionNotFound()
            procs = [_Proc(pid=own_pid + 100_000, usedGpuMemory=7 * MIB)]
            if not hide_pids:
                # the process figure is tied to the device counter, so the two stay comparable
                procs.append(_Proc(pid=own_pid, usedGpuMemory=state["used"] - base_used))
            return procs
        return fn

    for tag, name in (("v3", "nvmlDeviceGetComputeRunningProcesses_v3"),
                      ("v2", "nvmlDeviceGetComputeRunningProcesses_v2"),
                      ("v1", "nvmlDeviceGetComputeRunningProcesses")):
        if tag not in missing:
            setattr(mod, name, _proc_fn(tag))

    def nvmlDeviceGetTotalEnergyConsumption(h: str) -> int:  # noqa: N802
        _check()
        count("nvmlDeviceGetTotalEnergyConsumption")
        if energy == "not_supported":
            raise NVMLError_NotSupported()
        with lock:
            state["energy_mj"] += energy_step_mj
            return state["energy_mj"]

    def advance_energy(mj: int) -> None:
        with lock:
            state["energy_mj"] += int(mj)

    def nvmlDeviceGetPowerUsage(h: str) -> int:  # noqa: N802
        _check()
        count("nvmlDeviceGetPowerUsage")
        return state["power_mw"]

    def nvmlDeviceGetClockInfo(h: str, clock: int) -> int:  # noqa: N802
        _check()
        count("nvmlDeviceGetClockInfo")
        if clock != NVML_CLOCK_SM:
            raise NVMLError(2, "Invalid Argument")
        return state["sm_clock_mhz"]

    mod.advance_energy = advance_energy
    if energy != "missing":
        mod.nvmlDeviceGetTotalEnergyConsumption = nvmlDeviceGetTotalEnergyConsumption
    for fn in (nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetName,
               nvmlSystemGetDriverVersion, nvmlDeviceGetMemoryInfo, nvmlDeviceGetPowerUsage, nvmlDeviceGetClockInfo):
        setattr(mod, fn.__name__, fn)
    mod.nvmlDeviceGetUUID = lambda h: UUID
    mod.nvmlDeviceGetIndex = lambda h: 0
    mod.nvmlDeviceGetHandleByUUID = lambda u: ("handle0" if u == UUID and state["init"] > 0
                                               else (_ for _ in ()).throw(NVMLError(2, "Invalid Argument")))
    mod.nvmlDeviceGetHandleByPciBusId = lambda b: (_ for _ in ()).throw(NVMLError(2, "Invalid Argument"))
    return mod


def nvml_factory(pid: int, **make_kw):
    """For ``NvmlProcessSampler(nvml_factory=functools.partial(nvml_factory, **make_kw))``: runs in the spawned
    sampler child (monkeypatching the parent's sys.modules does not reach it), installs a fake pynvml whose process
    list holds ``pid`` (the parent) and returns an Nvml on it."""
    import sys

    from varbench.measuring import memory

    sys.modules["pynvml"] = make(pid=pid, **make_kw)
    return memory.Nvml(pid=pid, nvml_index=0)
