"""Memory instruments: NVML (device and per-process used bytes), a >= 1 kHz background sampler with scale marks,
and snapshots of the torch allocator (GPU) or process RSS (CPU). DESIGN "Measurement rules": memory.

NVML comes from nvidia-ml-py (``import pynvml``). Everything here degrades instead of failing: no module, no
library, no driver -> ``available`` False with ``reason`` "NVML unavailable: ..." and None for every NVML figure;
an old driver without ``nvmlDeviceGetComputeRunningProcesses_v3`` falls back to _v2, then to the plain call; a
container that hides host PIDs yields a process figure of None (device used stays valid).
"""
from __future__ import annotations

import ctypes
import logging
import os
import resource
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

_PROC_FUNCS = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
               "nvmlDeviceGetComputeRunningProcesses")


def _nvml_index_for_torch_device(pynvml: Any, index: int | None) -> Any:
    """NVML handle of the GPU torch calls ``cuda:index`` (CUDA_VISIBLE_DEVICES renumbers, NVML does not)."""
    try:
        import torch
        if torch.cuda.is_available():
            i = torch.cuda.current_device() if index is None else index
            props = torch.cuda.get_device_properties(i)
            uuid = getattr(props, "uuid", None)
            if uuid is not None:
                u = str(uuid)
                try:
                    return pynvml.nvmlDeviceGetHandleByUUID(u if u.startswith(("GPU-", "MIG-")) else f"GPU-{u}")
                except Exception:  # noqa: BLE001 - fall through to PCI / ordinal
                    pass
            if hasattr(props, "pci_bus_id"):
                bus = f"{getattr(props, 'pci_domain_id', 0):08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
                try:
                    return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
                except Exception:  # noqa: BLE001
                    pass
            vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            if i < len(vis) and vis[i].strip().isdigit():
                return pynvml.nvmlDeviceGetHandleByIndex(int(vis[i]))
            return pynvml.nvmlDeviceGetHandleByIndex(i)
    except Exception:  # noqa: BLE001 - torch without CUDA, or odd properties
        pass
    return pynvml.nvmlDeviceGetHandleByIndex(index or 0)


class Nvml:
    """One NVML device handle with tolerant queries. ``available`` False means every query returns None."""

    def __init__(self, index: int | None = None, pid: int | None = None):
        self.available = False
        self.reason = ""
        self.pid = os.getpid() if pid is None else pid
        self.proc_func: str | None = None      # which process-info variant works here
        self.pids_visible: bool | None = None  # False once we saw processes but never our own PID
        self._nv: Any = None
        self._h: Any = None
        try:
            import pynvml  # nvidia-ml-py
        except Exception as e:  # noqa: BLE001
            self.reason = f"NVML unavailable: cannot import pynvml ({e})"
            return
        try:
            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound / DriverNotLoaded / ...
            self.reason = f"NVML unavailable: {e}"
            return
        try:
            self._h = _nvml_index_for_torch_device(pynvml, index)
            pynvml.nvmlDeviceGetMemoryInfo(self._h)
        except Exception as e:  # noqa: BLE001
            self.reason = f"NVML unavailable: no usable device ({e})"
            try:
                pynvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            return
        self._nv = pynvml
        self.available = True
        self.reason = "NVML available"

    # ---- queries ----------------------------------------------------------------------------------------
    def device_used_bytes(self) -> int | None:
        """Bytes used on the whole device (every process, plus the driver's reservation)."""
        if not self.available:
            return None
        try:
            return int(self._nv.nvmlDeviceGetMemoryInfo(self._h).used)
        except Exception:  # noqa: BLE001
            return None

    def fast_device_used_reader(self):
        """A cheaper ``device_used_bytes`` for the sampler: one ctypes call into a preallocated struct (the
        binding's wrapper allocates and checks in Python each call). Falls back to the wrapper if unavailable."""
        if not self.available:
            return self.device_used_bytes
        try:
            fn = self._nv._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo")
            mem = self._nv.c_nvmlMemory_t()
            ref, h = ctypes.byref(mem), self._h

            def read() -> int | None:
                return int(mem.used) if fn(h, ref) == 0 else None

            if read() is None:
                return self.device_used_bytes
            return read
        except Exception:  # noqa: BLE001 - fake or unusual binding
            return self.device_used_bytes

    def device_total_bytes(self) -> int | None:
        if not self.available:
            return None
        try:
            return int(self._nv.nvmlDeviceGetMemoryInfo(self._h).total)
        except Exception:  # noqa: BLE001
            return None

    def _processes(self) -> list[Any] | None:
        """Compute processes through the newest process-info call this driver/binding supports."""
        funcs = [self.proc_func] if self.proc_func else list(_PROC_FUNCS)
        for name in funcs:
            fn = getattr(self._nv, name, None)
            if fn is None:
                continue
            try:
                procs = fn(self._h)
            except Exception as e:  # noqa: BLE001 - e.g. NVMLError_FunctionNotFound on an older driver
                log.debug("%s failed: %s", name, e)
                if self.proc_func:          # worked before: a transient error, not a missing function
                    return None
                continue
            self.proc_func = name
            return list(procs)
        return None

    def process_used_bytes(self, pid: int | None = None) -> int | None:
        """Bytes NVML attributes to ``pid`` (default: this process); None if unknown or PIDs are hidden."""
        if not self.available:
            return None
        procs = self._processes()
        if procs is None:
            return None
        pid = self.pid if pid is None else pid
        for p in procs:
            if int(getattr(p, "pid", -1)) == pid:
                self.pids_visible = True
                used = getattr(p, "usedGpuMemory", None)
                return None if used is None else int(used)
        if procs and self.pids_visible is None:
            self.pids_visible = False
            log.info("NVML lists processes but not PID %d (container PID namespace?): process memory unknown", pid)
        return None

    def close(self) -> None:
        if self.available:
            try:
                self._nv.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self.available = False


_DEFAULT: Nvml | None = None


def default_nvml() -> Nvml:
    """A lazily created process-wide Nvml (for the module-level helpers)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Nvml()
    return _DEFAULT


def device_used_bytes() -> int | None:
    return default_nvml().device_used_bytes()


def process_used_bytes(pid: int | None = None) -> int | None:
    return default_nvml().process_used_bytes(pid)


class NvmlSampler:
    """Background thread reading NVML every ``interval_ms`` into preallocated lists; ``mark`` stamps boundaries.

    Timestamps are ``time.perf_counter_ns`` (the same clock ``mark`` uses). While sampling, the interpreter's
    GIL switch interval is lowered to half the sampling interval, else a busy main thread would starve the
    sampler to ~200 Hz. The per-process figure (a heavier NVML call) is read every ``process_every`` samples and
    carried forward in between; device used is read every sample. The sampler must not run during latency
    measurements (DESIGN); its overhead is measured by trace.
    """

    def __init__(self, nvml: Nvml | None = None, interval_ms: float = 1.0, capacity: int = 600_000,
                 process_every: int = 10):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        self.nvml = nvml if nvml is not None else Nvml()
        self.interval_ms = float(interval_ms)
        self.process_every = max(1, int(process_every))
        self.t_ns: list[int] = [0] * capacity
        self.device_used: list[int | None] = [None] * capacity
        self.process_used: list[int | None] = [None] * capacity
        self.n = 0
        self.marks: list[tuple[int, str]] = []
        self.t_start_ns = 0
        self.t_stop_ns = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._old_switch: float | None = None

    @property
    def available(self) -> bool:
        return self.nvml.available

    def _grow(self) -> None:
        extra = max(1024, len(self.t_ns))
        self.t_ns.extend([0] * extra)
        self.device_used.extend([None] * extra)
        self.process_used.extend([None] * extra)

    def _run(self) -> None:
        period = int(self.interval_ms * 1e6)
        nxt = time.perf_counter_ns()
        last_proc: int | None = None
        nv = self.nvml
        read_device = nv.fast_device_used_reader()
        while not self._stop.is_set():
            i = self.n
            if i >= len(self.t_ns):
                self._grow()
            dev = read_device()
            if i % self.process_every == 0:
                last_proc = nv.process_used_bytes()
            self.t_ns[i] = time.perf_counter_ns()
            self.device_used[i] = dev
            self.process_used[i] = last_proc
            self.n = i + 1
            nxt += period
            now = time.perf_counter_ns()
            if nxt > now:
                time.sleep((nxt - now) / 1e9)
            else:
                nxt = now   # fell behind: do not burst to catch up

    def start(self) -> "NvmlSampler":
        self.t_start_ns = time.perf_counter_ns()
        if not self.available:
            return self
        self._old_switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._old_switch, self.interval_ms / 2000.0))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._old_switch is not None:
            sys.setswitchinterval(self._old_switch)
            self._old_switch = None
        self.t_stop_ns = time.perf_counter_ns()

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def mark(self, label: str) -> int:
        """Record a boundary (e.g. 'scale 3 end') on the sampler's clock; returns its timestamp."""
        t = time.perf_counter_ns()
        self.marks.append((t, str(label)))
        return t

    # ---- results ----------------------------------------------------------------------------------------
    def samples(self) -> list[tuple[int, int | None, int | None]]:
        """(t_ns, device_used, process_used) in time order."""
        n = self.n
        return list(zip(self.t_ns[:n], self.device_used[:n], self.process_used[:n]))

    def achieved_hz(self) -> float:
        """Sampling rate actually reached (first to last sample)."""
        n = self.n
        if n < 2:
            return 0.0
        span = self.t_ns[n - 1] - self.t_ns[0]
        return (n - 1) * 1e9 / span if span > 0 else 0.0

    def peak_device_used(self) -> int | None:
        vals = [v for v in self.device_used[:self.n] if v is not None]
        return max(vals) if vals else None

    def peak_process_used(self) -> int | None:
        vals = [v for v in self.process_used[:self.n] if v is not None]
        return max(vals) if vals else None


def _rss_bytes() -> int | None:
    """Resident set size now, from /proc/self/statm (Linux) or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _rss_peak_bytes() -> int | None:
    """Peak RSS of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class MemoryProbe:
    """Point-in-time memory figures for one device: allocator (CUDA) or RSS (CPU), plus NVML when present."""

    def __init__(self, device: Any = "cpu", nvml: Nvml | None = None):
        import torch
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        if nvml is None:
            nvml = Nvml(index=self.device.index) if self.is_cuda else _NO_NVML_CPU
        self.nvml = nvml

    @property
    def nvml_reason(self) -> str:
        return self.nvml.reason

    def snapshot(self) -> dict[str, int | None]:
        import torch
        snap: dict[str, int | None] = {"allocated_bytes": None, "peak_allocated_bytes": None,
                                       "reserved_bytes": None, "rss_bytes": None, "rss_peak_bytes": None}
        if self.is_cuda:
            snap["allocated_bytes"] = int(torch.cuda.memory_allocated(self.device))
            snap["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            snap["reserved_bytes"] = int(torch.cuda.memory_reserved(self.device))
        else:
            snap["rss_bytes"] = _rss_bytes()
            snap["rss_peak_bytes"] = _rss_peak_bytes()
        snap["nvml_device_used_bytes"] = self.nvml.device_used_bytes()
        snap["nvml_process_used_bytes"] = self.nvml.process_used_bytes()
        return snap


class _NoNvml(Nvml):
    """Stand-in for CPU runs: NVML figures are meaningless for a CPU device."""

    def __init__(self) -> None:  # noqa: D401 - no NVML init on purpose
        self.available = False
        self.reason = "NVML unavailable: device is CPU"
        self.pid = os.getpid()
        self.proc_func = None
        self.pids_visible = None


_NO_NVML_CPU = _NoNvml()
