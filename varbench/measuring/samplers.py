"""NVML memory timelines at >= 1 kHz with scale-boundary marks (DESIGN "Measurement rules": memory).

Two samplers share one interface: ``NvmlProcessSampler`` (a spawned child process, so the 1 kHz loop never takes
the measured thread's GIL) and ``NvmlSampler`` (a thread; the fallback where a child cannot run). ``make_sampler``
picks one. Both read through ``varbench.measuring.memory.Nvml``.

``channels`` picks what the two value columns hold: "memory" (device used bytes, process used bytes: the
default, and the names of the accessors) or "power" (board power in mW, SM clock in MHz, read every sample:
``varbench.measuring.energy``).
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import struct
import sys
import threading
import time
import types
import weakref
from multiprocessing import shared_memory
from typing import Any, Callable

from varbench.measuring.memory import Nvml

log = logging.getLogger(__name__)


CHANNELS = ("memory", "power")


def _readers(nv: Any, channels: str) -> tuple[Callable[[], int | None], Callable[[], int | None]]:
    """The two per-sample reads of ``channels``: (device used, process used) or (power mW, SM clock MHz)."""
    if channels == "power":
        from varbench.measuring import energy
        return energy.power_reader(nv), energy.sm_clock_reader(nv)
    return nv.fast_device_used_reader(), nv.process_used_bytes


class _SamplerBase:
    """What both samplers share: the context manager, boundary marks and the results over ``_series()``."""

    marks: list[tuple[int, str]]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def mark(self, label: str) -> int:
        """Record a boundary (e.g. 'scale 3 end') on the sampler's clock (perf_counter_ns); returns it."""
        t = time.perf_counter_ns()
        self.marks.append((t, str(label)))
        return t

    def _series(self) -> tuple[list[int], list[int | None], list[int | None]]:
        raise NotImplementedError

    def samples(self) -> list[tuple[int, int | None, int | None]]:
        """(t_ns, device_used, process_used) in time order."""
        return list(zip(*self._series()))

    def achieved_hz(self) -> float:
        """Sampling rate actually reached (first to last sample)."""
        t = self._series()[0]
        if len(t) < 2:
            return 0.0
        span = t[-1] - t[0]
        return (len(t) - 1) * 1e9 / span if span > 0 else 0.0

    def peak_device_used(self) -> int | None:
        vals = [v for v in self._series()[1] if v is not None]
        return max(vals) if vals else None

    def peak_process_used(self) -> int | None:
        vals = [v for v in self._series()[2] if v is not None]
        return max(vals) if vals else None


class NvmlSampler(_SamplerBase):
    """Background thread reading NVML every ``interval_ms`` into preallocated lists; ``mark`` stamps boundaries.

    Timestamps are ``time.perf_counter_ns`` (the same clock ``mark`` uses). While sampling, the interpreter's
    GIL switch interval is lowered to half the sampling interval, else a busy main thread would starve the
    sampler to ~200 Hz. The per-process figure (a heavier NVML call) is read every ``process_every`` samples and
    carried forward in between; device used is read every sample. The sampler must not run during latency
    measurements (DESIGN); its overhead is measured by trace.
    """

    kind = "thread"

    def __init__(self, nvml: Nvml | None = None, interval_ms: float = 1.0, capacity: int = 600_000,
                 process_every: int = 10, channels: str = "memory"):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        if channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
        self.channels = channels
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
        read_device, read_process = _readers(self.nvml, self.channels)
        while not self._stop.is_set():
            i = self.n
            if i >= len(self.t_ns):
                self._grow()
            dev = read_device()
            if i % self.process_every == 0:
                last_proc = read_process()
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

    def _series(self) -> tuple[list[int], list[int | None], list[int | None]]:
        n = self.n
        return self.t_ns[:n], self.device_used[:n], self.process_used[:n]


# ---- process sampler ----------------------------------------------------------------------------------------
# Shared-memory layout, all int64: a header of _HDR slots, then 3 per sample (t_ns, device_used, process_used),
# -1 standing for None. The child is the only writer except _STOP (the parent's stop request).
_N, _STATUS, _FIRST_T, _STOP, _CHILD_PID = 0, 1, 2, 3, 4
_HDR = 8
_RUNNING, _FULL, _NO_NVML, _ERROR, _ORPHANED = 1, 2, 3, 4, 5
_STATUS_TEXT = {0: "not started", _RUNNING: "running", _FULL: "capacity reached", _NO_NVML: "NVML unavailable in child",
                _ERROR: "child error", _ORPHANED: "parent gone"}
_Q = struct.Struct("q")
_QQQ = struct.Struct("qqq")

NvmlFactory = Callable[[int], Any]
"""Called in the sampler child with the parent's PID; returns an Nvml-like object (tests: a fake NVML)."""


def _child_nvml(ident: dict[str, Any] | None, pid: int, factory: NvmlFactory | None) -> Any:
    if factory is not None:
        return factory(pid)
    ident = ident or {}
    return Nvml.from_uuid(ident.get("uuid"), pid=pid, nvml_index=ident.get("nvml_index"))


def _sampler_child(shm_name: str, capacity: int, period_ns: int, process_every: int, ident: dict[str, Any] | None,
                   pid: int, parent_pid: int, factory: NvmlFactory | None, ready: Any,
                   channels: str = "memory") -> None:
    """Child main: sample NVML into shared memory until the parent sets _STOP, the buffer fills or the parent dies.

    Same pacing as the thread sampler: an absolute schedule, no burst to catch up after falling behind."""
    shm = shared_memory.SharedMemory(name=shm_name)
    buf = shm.buf
    nv = None
    try:
        _Q.pack_into(buf, 8 * _CHILD_PID, os.getpid())
        nv = _child_nvml(ident, pid, factory)
        if not nv.available:
            _Q.pack_into(buf, 8 * _STATUS, _NO_NVML)
            return
        read_device, read_process = _readers(nv, channels)
        perf = time.perf_counter_ns
        sleep = time.sleep
        pack3, pack1, unpack1 = _QQQ.pack_into, _Q.pack_into, _Q.unpack_from
        last_proc = -1
        status = _RUNNING
        _Q.pack_into(buf, 8 * _STATUS, _RUNNING)
        i = 0
        nxt = perf()
        while True:
            if i >= capacity:
                status = _FULL
                break
            dev = read_device()
            if i % process_every == 0:
                p = read_process()
                last_proc = -1 if p is None else p
            t = perf()
            pack3(buf, 8 * (_HDR + 3 * i), t, -1 if dev is None else dev, last_proc)
            i += 1
            pack1(buf, 8 * _N, i)
            if i == 1:
                pack1(buf, 8 * _FIRST_T, t)
                ready.set()
            if unpack1(buf, 8 * _STOP)[0]:
                break
            if (i & 255) == 0 and os.getppid() != parent_pid:
                status = _ORPHANED
                break
            nxt += period_ns
            now = perf()
            if nxt > now:
                sleep((nxt - now) / 1e9)
            else:
                nxt = now
        _Q.pack_into(buf, 8 * _STATUS, status)
    except BaseException:
        _Q.pack_into(buf, 8 * _STATUS, _ERROR)
        raise
    finally:
        ready.set()          # never leave the parent waiting
        if nv is not None:
            try:
                nv.close()
            except Exception:  # noqa: BLE001
                pass
        del buf
        shm.close()


def _release(res: dict[str, Any]) -> None:
    """Stop the child (if still alive) and unlink the shared memory in ``res``; idempotent, also a finalizer."""
    proc, shm = res.pop("proc", None), res.pop("shm", None)
    if proc is not None and proc.is_alive():
        proc.terminate()
        proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    if shm is not None:
        try:
            shm.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def _main_hidden():
    """Hide ``__main__`` while a spawn child starts: spawn re-imports the parent's main module in the child, which
    re-runs an unguarded script (a second benchmark on the GPU) or imports torch for nothing. The sampler child
    needs nothing from it (its target and arguments live in importable modules)."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")    # no __spec__ / __file__: spawn skips the fix-up
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _first_sample_ok(t_first: int, t_before: int, t_after: int) -> bool:
    """The child's first stamp must fall inside the parent's start() window: else the clocks are not shared."""
    return t_before <= t_first <= t_after


class NvmlProcessSampler(_SamplerBase):
    """NVML sampler in a spawned child process: same interface and output as ``NvmlSampler``.

    Why a process: a sampling thread needs the GIL ~1000 times a second, which preempts the measured main
    thread (the thread sampler even lowers the switch interval to get its rate); a child has its own
    interpreter and GIL. The child opens the same GPU by NVML UUID (``Nvml.device_ident``), reads the parent's
    PID, and writes samples into shared memory (int64, -1 for None) of fixed ``capacity`` (default: 10 min at
    1 kHz; when full it stops sampling and ``full`` says so). Timestamps are ``time.perf_counter_ns`` in the
    child; on Linux that is CLOCK_MONOTONIC, one system-wide clock, so they compare with the parent's ``mark``
    stamps. ``start`` checks this (the first sample must fall inside its own window) and blocks until the first
    sample is taken, so process start-up never falls inside a timed region. If the child cannot start, cannot
    open the device, or the clock check fails, it logs a warning and falls back to the thread sampler
    (``kind`` becomes "thread", ``fallback_reason`` says why). Always "spawn", never fork (CUDA is initialised
    in the parent). ``nvml_factory``: a picklable top-level callable the child calls with the parent's PID
    instead of building a real Nvml (tests pass a fake); it must live in an importable module, not ``__main__``
    (the child does not re-import the parent's main module).
    """

    kind = "process"

    def __init__(self, nvml: Nvml | None = None, interval_ms: float = 1.0, capacity: int = 600_000,
                 process_every: int = 10, nvml_factory: NvmlFactory | None = None, start_timeout_s: float = 60.0,
                 channels: str = "memory"):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        if channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
        self.channels = channels
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.nvml = nvml if nvml is not None else (nvml_factory(os.getpid()) if nvml_factory else Nvml())
        self.interval_ms = float(interval_ms)
        self.capacity = int(capacity)
        self.process_every = max(1, int(process_every))
        self.nvml_factory = nvml_factory
        self.start_timeout_s = float(start_timeout_s)
        self.t_ns: list[int] = []
        self.device_used: list[int | None] = []
        self.process_used: list[int | None] = []
        self.marks: list[tuple[int, str]] = []
        self.t_start_ns = 0
        self.t_stop_ns = 0
        self.startup_ms: float | None = None     # spawn to first sample (outside any timed window)
        self.full = False                        # the buffer filled: sampling ended early
        self.child_status = ""
        self.fallback_reason: str | None = None
        self.shm_name: str | None = None         # name of the shared-memory block while (last) sampling
        self._n = 0
        self._proc: Any = None
        self._shm: shared_memory.SharedMemory | None = None
        self._finalizer: weakref.finalize | None = None
        self._thread: NvmlSampler | None = None

    @property
    def available(self) -> bool:
        return self.nvml.available

    @property
    def n(self) -> int:
        """Samples taken so far (live while running)."""
        if self._thread is not None:
            return self._thread.n
        if self._shm is not None:
            return min(self._hdr(_N), self.capacity)
        return self._n

    def _hdr(self, slot: int) -> int:
        return _Q.unpack_from(self._shm.buf, 8 * slot)[0]

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> "NvmlProcessSampler":
        self.t_start_ns = time.perf_counter_ns()
        if not self.available or self._proc is not None or self._thread is not None:
            return self
        ident = None
        if self.nvml_factory is None:
            ident = self.nvml.device_ident() if hasattr(self.nvml, "device_ident") else None
            if ident is None:
                return self._fall_back("no NVML UUID or index to open the device in a child")
        self.t_ns, self.device_used, self.process_used, self._n = [], [], [], 0
        self.full, self.child_status = False, ""
        try:
            ctx = mp.get_context("spawn")
            res: dict[str, Any] = {}
            self._finalizer = weakref.finalize(self, _release, res)    # unlinks even if stop() never runs
            self._shm = res["shm"] = shm = shared_memory.SharedMemory(create=True,
                                                                      size=8 * (_HDR + 3 * self.capacity))
            shm.buf[:8 * _HDR] = bytes(8 * _HDR)
            ready = ctx.Event()
            proc = ctx.Process(target=_sampler_child, name="nvml-sampler", daemon=True,
                               args=(shm.name, self.capacity, max(1, int(self.interval_ms * 1e6)), self.process_every,
                                     ident, int(self.nvml.pid), os.getpid(), self.nvml_factory, ready,
                                     self.channels))
            t_before = time.perf_counter_ns()
            with _main_hidden():
                proc.start()
            self._proc = res["proc"] = proc
            deadline = time.monotonic() + self.start_timeout_s
            while not ready.wait(0.05):
                if not proc.is_alive() or time.monotonic() > deadline:
                    break
            t_after = time.perf_counter_ns()
        except Exception as e:  # noqa: BLE001 - no /dev/shm, no spawn, ...
            self._teardown()
            return self._fall_back(f"could not start the sampler process ({e})")
        except BaseException:   # KeyboardInterrupt while waiting: __exit__ will not run, clean up here
            self._teardown()
            raise
        self.shm_name = self._shm.name
        n, status, t_first = self._hdr(_N), self._hdr(_STATUS), self._hdr(_FIRST_T)
        if n < 1:
            why = _STATUS_TEXT.get(status, str(status)) if status else f"no sample within {self.start_timeout_s:g} s"
            self._teardown()
            return self._fall_back(f"sampler process took no sample ({why})")
        if not _first_sample_ok(t_first, t_before, t_after):
            self._teardown()
            return self._fall_back(f"child perf_counter_ns {t_first} outside the parent's start window "
                                   f"[{t_before}, {t_after}]: clocks not shared")
        self.startup_ms = (t_after - t_before) / 1e6
        return self

    def _fall_back(self, why: str) -> "NvmlProcessSampler":
        self.fallback_reason = why
        self.kind = "thread"
        log.warning("NVML process sampler: %s; using the thread sampler", why)
        self._thread = NvmlSampler(self.nvml, interval_ms=self.interval_ms, capacity=self.capacity,
                                   process_every=self.process_every, channels=self.channels)
        self._thread.start()
        return self

    def _copy_out(self) -> None:
        """Samples from shared memory into t_ns / device_used / process_used."""
        n = min(self._hdr(_N), self.capacity)
        with memoryview(self._shm.buf) as m, m.cast("q") as q, q[_HDR:_HDR + 3 * n] as s:
            flat = s.tolist()
        self.t_ns = flat[0::3]
        self.device_used = [None if v < 0 else v for v in flat[1::3]]
        self.process_used = [None if v < 0 else v for v in flat[2::3]]
        self._n = n

    def _teardown(self) -> None:
        """Terminate the child if needed, unlink the shared memory (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()            # runs _release once
            self._finalizer = None
        self._proc, self._shm = None, None

    def stop(self) -> None:
        """Ask the child to stop, join it (then terminate if it hangs), copy samples out, free shared memory."""
        if self._thread is not None:
            self._thread.stop()
        if self._shm is not None:
            try:
                _Q.pack_into(self._shm.buf, 8 * _STOP, 1)
                if self._proc is not None:
                    self._proc.join(max(2.0, 20 * self.interval_ms / 1000))
                status = self._hdr(_STATUS)
                self.child_status = _STATUS_TEXT.get(status, str(status))
                self.full = status == _FULL
                self._copy_out()
            finally:
                self._teardown()
            if self.full:
                log.warning("NVML process sampler: buffer full after %d samples (capacity %d); sampling stopped "
                            "early", self._n, self.capacity)
            elif status in (_ERROR, _ORPHANED):
                log.warning("NVML process sampler: child ended with %s", self.child_status)
        self.t_stop_ns = time.perf_counter_ns()

    # ---- results ----------------------------------------------------------------------------------------
    def _series(self) -> tuple[list[int], list[int | None], list[int | None]]:
        """The samples so far (a live copy while running), or the fallback thread sampler's."""
        if self._thread is not None:
            return self._thread._series()
        if self._shm is not None:
            self._copy_out()
        return self.t_ns, self.device_used, self.process_used


def make_sampler(nvml: Nvml | None = None, interval_ms: float = 1.0, mode: str = "auto", *,
                 capacity: int = 600_000, process_every: int = 10,
                 nvml_factory: NvmlFactory | None = None,
                 channels: str = "memory") -> NvmlSampler | NvmlProcessSampler:
    """A sampler: "process" (``NvmlProcessSampler``), "thread" (``NvmlSampler``) or "auto" = process when NVML is
    available and real (or ``nvml_factory`` provides the child's), else thread (nothing to gain from a child).
    ``channels``: "memory" or "power" (what each sample reads; see the module docstring)."""
    if mode not in ("auto", "process", "thread"):
        raise ValueError(f"mode must be auto, process or thread, got {mode!r}")
    if nvml is None:
        nvml = nvml_factory(os.getpid()) if nvml_factory is not None else Nvml()
    if mode == "auto":
        real = nvml.available and (nvml_factory is not None or getattr(nvml, "is_real", False))
        mode = "process" if real else "thread"
    if mode == "thread":
        return NvmlSampler(nvml, interval_ms=interval_ms, capacity=capacity, process_every=process_every,
                           channels=channels)
    return NvmlProcessSampler(nvml, interval_ms=interval_ms, capacity=capacity, process_every=process_every,
                              nvml_factory=nvml_factory, channels=channels)
