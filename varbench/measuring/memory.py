"""Memory instruments: NVML (device and per-process used bytes) and snapshots of the torch allocator (GPU) or
process RSS (CPU). DESIGN "Measurement rules": memory. The >= 1 kHz NVML timeline samplers are in
``varbench.measuring.samplers``.

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


def _select_handle(pynvml: Any, index: int | None, uuid: str | None, nvml_index: int | None) -> Any:
    """Handle by UUID, else by NVML index, else by torch ordinal (``_nvml_index_for_torch_device``)."""
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:  # noqa: BLE001
            if nvml_index is None:
                raise
            log.info("NVML UUID %s not found; using NVML index %d", uuid, nvml_index)
    if nvml_index is not None:
        return pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
    return _nvml_index_for_torch_device(pynvml, index)


class Nvml:
    """One NVML device handle with tolerant queries. ``available`` False means every query returns None."""

    def __init__(self, index: int | None = None, pid: int | None = None, uuid: str | None = None,
                 nvml_index: int | None = None):
        """``index``: torch's CUDA ordinal (mapped to NVML's). ``uuid`` / ``nvml_index`` pick the device by NVML's
        own identifiers instead (UUID first, index as fallback), without importing torch: a sampler child uses
        this to open the parent's GPU. ``pid``: whose process figure to read (default: this process)."""
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
            self._h = _select_handle(pynvml, index, uuid, nvml_index)
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

    @classmethod
    def from_uuid(cls, uuid: str | None, pid: int | None = None, nvml_index: int | None = None) -> "Nvml":
        """The device with this NVML UUID ("GPU-..." / "MIG-..."), else NVML index ``nvml_index``; unavailable
        (never raising) when neither resolves."""
        if uuid is None and nvml_index is None:
            nv = cls.__new__(cls)
            nv.available, nv.reason = False, "NVML unavailable: no device UUID or index given"
            nv.pid = os.getpid() if pid is None else pid
            nv.proc_func, nv.pids_visible, nv._nv, nv._h = None, None, None, None
            return nv
        return cls(pid=pid, uuid=uuid, nvml_index=nvml_index)

    @property
    def is_real(self) -> bool:
        """True for the nvidia-ml-py binding loaded from a file (a test's in-memory fake module is not)."""
        return self.available and getattr(self._nv, "__file__", None) is not None

    def device_uuid(self) -> str | None:
        """NVML UUID of this device (identifies the same GPU from another process), or None."""
        if not self.available:
            return None
        try:
            u = self._nv.nvmlDeviceGetUUID(self._h)
            return u.decode() if isinstance(u, bytes) else str(u)
        except Exception:  # noqa: BLE001
            return None

    def device_nvml_index(self) -> int | None:
        """NVML's index of this device (not renumbered by CUDA_VISIBLE_DEVICES), or None."""
        if not self.available:
            return None
        try:
            return int(self._nv.nvmlDeviceGetIndex(self._h))
        except Exception:  # noqa: BLE001
            return None

    def device_ident(self) -> dict[str, Any] | None:
        """Picklable identifiers for ``from_uuid``: {"uuid", "nvml_index"}; None if neither is known."""
        u, i = self.device_uuid(), self.device_nvml_index()
        return None if u is None and i is None else {"uuid": u, "nvml_index": i}

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
