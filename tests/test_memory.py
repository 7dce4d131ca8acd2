"""NVML wrapper and sampler against a fake pynvml: fallbacks, hidden PIDs, no driver, timeline ordering."""
from __future__ import annotations

import os
import sys
import time

import pytest

from tests import fake_pynvml
from varbench import memory


@pytest.fixture
def fake(monkeypatch):
    """Install a fake pynvml built with the given options; returns the module."""
    def install(**kw):
        mod = fake_pynvml.make(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod
    return install


def test_no_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)   # import pynvml -> ImportError
    nv = memory.Nvml()
    assert not nv.available
    assert nv.reason.startswith("NVML unavailable")
    assert nv.device_used_bytes() is None and nv.process_used_bytes() is None


def test_no_driver(fake):
    mod = fake(mode="no_driver")
    nv = memory.Nvml()
    assert not nv.available
    assert nv.reason.startswith("NVML unavailable") and "Driver Not Loaded" in nv.reason
    assert nv.device_used_bytes() is None and nv.process_used_bytes() is None
    assert mod.calls.get("nvmlDeviceGetMemoryInfo", 0) == 0
    with memory.NvmlSampler(nv, interval_ms=1.0) as s:   # a sampler without NVML records nothing, no error
        time.sleep(0.01)
    assert s.n == 0 and s.samples() == [] and s.peak_device_used() is None


def test_device_used_reads_counter(fake):
    fake(base_used=100, step=10)
    nv = memory.Nvml()
    assert nv.available, nv.reason
    a, b = nv.device_used_bytes(), nv.device_used_bytes()
    assert a > 100 and b - a == 10                         # each read is a fresh NVML query


@pytest.mark.parametrize("missing, not_supported, expect", [
    ((), (), "nvmlDeviceGetComputeRunningProcesses_v3"),
    (("v3",), (), "nvmlDeviceGetComputeRunningProcesses_v2"),
    (("v3", "v2"), (), "nvmlDeviceGetComputeRunningProcesses"),
    ((), ("v3",), "nvmlDeviceGetComputeRunningProcesses_v2"),          # binding has v3, driver does not
    (("v3",), ("v2",), "nvmlDeviceGetComputeRunningProcesses"),
])
def test_process_info_fallback(fake, missing, not_supported, expect):
    mod = fake(missing=missing, not_supported=not_supported, base_used=0, step=1 << 20)
    nv = memory.Nvml()
    used = nv.process_used_bytes()
    assert nv.proc_func == expect
    assert used == mod.calls["nvmlDeviceGetMemoryInfo"] * (1 << 20)   # our PID's figure, not the foreign one
    # the working variant is remembered: a second query does not retry the failing ones
    before = dict(mod.calls)
    nv.process_used_bytes()
    tag = {"nvmlDeviceGetComputeRunningProcesses_v3": "v3", "nvmlDeviceGetComputeRunningProcesses_v2": "v2",
           "nvmlDeviceGetComputeRunningProcesses": "v1"}[expect]
    assert {k for k in ("v3", "v2", "v1") if mod.calls.get(k, 0) != before.get(k, 0)} == {tag}


def test_no_process_function_at_all(fake):
    fake(missing=("v3", "v2", "v1"))
    nv = memory.Nvml()
    assert nv.available and nv.device_used_bytes() is not None
    assert nv.process_used_bytes() is None


def test_hidden_pids(fake):
    fake(hide_pids=True)
    nv = memory.Nvml()
    assert nv.process_used_bytes() is None
    assert nv.pids_visible is False
    assert nv.device_used_bytes() is not None
    assert nv.process_used_bytes(os.getpid() + 100_000) == 7 << 20   # foreign PID still readable


def test_sampler_timeline_ordering_and_marks(fake):
    mod = fake(base_used=0, step=1)
    nv = memory.Nvml()
    old = sys.getswitchinterval()
    with memory.NvmlSampler(nv, interval_ms=1.0, capacity=8, process_every=4) as s:   # tiny capacity: the buffer must grow
        time.sleep(0.03)
        s.mark("scale 0 end")
        time.sleep(0.03)
        s.mark("scale 1 end")
        time.sleep(0.03)
    assert sys.getswitchinterval() == old                  # restored after sampling
    samples = s.samples()
    assert len(samples) >= 20, len(samples)                # ~90 ms at 1 kHz, generous for a busy 2-core box
    ts = [t for t, _, _ in samples]
    dev = [d for _, d, _ in samples]
    assert all(a < b for a, b in zip(ts, ts[1:]))
    assert all(a < b for a, b in zip(dev, dev[1:]))        # counter values come back in sampling order
    assert all(p is not None and p <= d for _, d, p in samples)
    (t0, l0), (t1, l1) = s.marks
    assert (l0, l1) == ("scale 0 end", "scale 1 end")
    assert ts[0] < t0 < t1 < ts[-1]
    assert s.achieved_hz() < 1300                          # paced by interval_ms, not a busy loop
    assert s.peak_device_used() == dev[-1]
    # the heavier per-process query runs every 4th sample only, its value carried forward in between
    assert mod.calls["v3"] <= len(samples) // 4 + 2
    procs = [p for _, _, p in samples]
    assert procs[1] == procs[0] and procs[4] > procs[3]


def test_sampler_rejects_bad_interval(fake):
    fake()
    with pytest.raises(ValueError):
        memory.NvmlSampler(memory.Nvml(), interval_ms=0)


def test_probe_cpu_reports_rss_and_null_nvml(fake):
    fake()                                                 # even with NVML present, a CPU probe does not use it
    snap = memory.MemoryProbe("cpu").snapshot()
    assert snap["rss_bytes"] and snap["rss_bytes"] > 1 << 20
    assert snap["rss_peak_bytes"] >= snap["rss_bytes"] // 2
    assert snap["allocated_bytes"] is None
    assert snap["nvml_device_used_bytes"] is None and snap["nvml_process_used_bytes"] is None
    assert memory.MemoryProbe("cpu").nvml_reason.startswith("NVML unavailable")
