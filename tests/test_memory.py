"""NVML wrapper and sampler against a fake pynvml: fallbacks, hidden PIDs, no driver, timeline ordering."""
from __future__ import annotations

import functools
import os
import sys
import time

import pytest

from tests import fake_pynvml
from varbench.measuring import memory
from varbench.measuring import samplers


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
    with samplers.NvmlSampler(nv, interval_ms=1.0) as s:   # a sampler without NVML records nothing, no error
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
    with samplers.NvmlSampler(nv, interval_ms=1.0, capacity=8, process_every=4) as s:   # tiny capacity: the buffer must grow
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
        samplers.NvmlSampler(memory.Nvml(), interval_ms=0)


def test_probe_cpu_reports_rss_and_null_nvml(fake):
    fake()                                                 # even with NVML present, a CPU probe does not use it
    snap = memory.MemoryProbe("cpu").snapshot()
    assert snap["rss_bytes"] and snap["rss_bytes"] > 1 << 20
    assert snap["rss_peak_bytes"] >= snap["rss_bytes"] // 2
    assert snap["allocated_bytes"] is None
    assert snap["nvml_device_used_bytes"] is None and snap["nvml_process_used_bytes"] is None
    assert memory.MemoryProbe("cpu").nvml_reason.startswith("NVML unavailable")


# ---- device identity (what a sampler child uses to open the parent's GPU) -------------------------------------
def test_device_ident_and_from_uuid(fake):
    fake()
    nv = memory.Nvml()
    assert nv.device_ident() == {"uuid": fake_pynvml.UUID, "nvml_index": 0}
    assert not nv.is_real                                  # an in-memory fake module, not the binding
    by_uuid = memory.Nvml.from_uuid(fake_pynvml.UUID, pid=4242)
    assert by_uuid.available and by_uuid.pid == 4242 and by_uuid.device_used_bytes() is not None
    assert memory.Nvml.from_uuid("GPU-unknown", nvml_index=0).available        # UUID lost: the index still works
    gone = memory.Nvml.from_uuid("GPU-unknown")
    assert not gone.available and gone.reason.startswith("NVML unavailable")
    none = memory.Nvml.from_uuid(None)
    assert not none.available and none.device_used_bytes() is None and none.process_used_bytes() is None


# ---- process sampler (a spawned child with a fake NVML through nvml_factory) ---------------------------------
def _factory(**kw):
    return functools.partial(fake_pynvml.nvml_factory, **kw)


def _shm_exists(name):
    return os.path.exists(f"/dev/shm/{name.lstrip('/')}")


def test_process_sampler_timeline_and_marks(fake):
    fake()
    nv = memory.Nvml()                                     # the parent's (fake) handle
    old = sys.getswitchinterval()
    s = samplers.NvmlProcessSampler(nv, interval_ms=1.0, process_every=4,
                                  nvml_factory=_factory(base_used=0, step=1))
    with s:
        assert s.n >= 1                                    # start() returned only after the first sample
        assert sys.getswitchinterval() == old              # no GIL tuning: the sampler has its own interpreter
        name = s.shm_name
        assert _shm_exists(name)
        time.sleep(0.05)
        s.mark("scale 0 end")
        time.sleep(0.05)
        s.mark("scale 1 end")
        time.sleep(0.05)
    assert s.kind == "process" and s.fallback_reason is None, s.fallback_reason
    assert not _shm_exists(name)                           # shared memory unlinked
    assert s._proc is None and s._shm is None
    samples = s.samples()
    assert len(samples) == s.n >= 30, len(samples)         # ~150 ms at 1 kHz, generous for a busy 2-core box
    ts = [t for t, _, _ in samples]
    dev = [d for _, d, _ in samples]
    assert all(a < b for a, b in zip(ts, ts[1:]))
    assert dev == list(range(dev[0], dev[0] + len(dev)))  # the child's fake counter, read once per sample
    procs = [p for _, _, p in samples]
    assert all(p is not None and p <= d for p, d in zip(procs, dev))   # the parent's PID, found by the child
    assert procs[1] == procs[0] and procs[4] > procs[3]  # per-process query every 4th sample, carried forward
    (t0, l0), (t1, l1) = s.marks
    assert (l0, l1) == ("scale 0 end", "scale 1 end")
    assert s.t_start_ns < ts[0] < t0 < t1 < ts[-1] < s.t_stop_ns   # one clock across the two processes
    assert 100 < s.achieved_hz() < 1300                    # paced by interval_ms, not a busy loop
    assert s.peak_device_used() == dev[-1] and s.peak_process_used() == max(procs)
    s.stop()                                               # a second stop is harmless and keeps the results
    assert s.samples() == samples


def test_process_sampler_without_nvml_records_nothing(fake):
    fake(mode="no_driver")
    nv = memory.Nvml()
    with samplers.NvmlProcessSampler(nv, interval_ms=1.0, nvml_factory=_factory()) as s:
        time.sleep(0.01)
    assert s.n == 0 and s.samples() == [] and s.peak_device_used() is None and s.achieved_hz() == 0.0
    assert s.shm_name is None                              # no child, no shared memory
    s.stop()


def test_process_sampler_falls_back_to_thread_when_child_has_no_nvml(fake):
    fake(base_used=0, step=1)
    nv = memory.Nvml()                                     # the parent sees NVML, the child does not
    with samplers.NvmlProcessSampler(nv, interval_ms=1.0, nvml_factory=_factory(mode="no_driver")) as s:
        time.sleep(0.03)
    assert s.kind == "thread" and "NVML unavailable" in s.fallback_reason
    assert s.n >= 5 and s.peak_device_used() is not None
    assert not _shm_exists(s.shm_name)


def test_process_sampler_falls_back_when_clocks_disagree(fake, monkeypatch):
    fake(base_used=0, step=1)
    monkeypatch.setattr(samplers, "_first_sample_ok", lambda *a: False)
    with samplers.NvmlProcessSampler(memory.Nvml(), interval_ms=1.0, nvml_factory=_factory()) as s:
        time.sleep(0.02)
    assert s.kind == "thread" and "clocks" in s.fallback_reason
    assert s.n >= 3 and not _shm_exists(s.shm_name)


def test_process_sampler_capacity_full(fake):
    fake()
    with samplers.NvmlProcessSampler(memory.Nvml(), interval_ms=1.0, capacity=5, nvml_factory=_factory()) as s:
        time.sleep(0.05)
        assert s.n == 5                                    # stopped sampling at capacity (no growth across processes)
    assert s.full and s.child_status == "capacity reached" and len(s.samples()) == 5


def test_process_sampler_rejects_bad_interval(fake):
    fake()
    with pytest.raises(ValueError):
        samplers.NvmlProcessSampler(memory.Nvml(), interval_ms=0)


def test_make_sampler_modes(fake):
    fake()
    nv = memory.Nvml()
    assert isinstance(samplers.make_sampler(nv, 1.0, "thread"), samplers.NvmlSampler)
    assert isinstance(samplers.make_sampler(nv, 1.0, "process"), samplers.NvmlProcessSampler)
    assert samplers.make_sampler(nv, 1.0).kind == "thread"                    # auto: a fake NVML stays in-thread
    assert samplers.make_sampler(nv, 1.0, nvml_factory=_factory()).kind == "process"
    assert samplers.make_sampler(memory.Nvml.from_uuid(None), 1.0).kind == "thread"   # no NVML: thread
    with pytest.raises(ValueError):
        samplers.make_sampler(nv, 1.0, "fork")


def test_process_sampler_cleans_up_when_interrupted(tmp_path):
    """Parent interrupted mid-sampling, stop() never called: the child ends and the shared memory is unlinked
    at exit without the resource tracker's leak warning."""
    import subprocess
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import functools, sys\n"
        "from tests import fake_pynvml\n"
        "from varbench.measuring import memory, samplers\n"
        "sys.modules['pynvml'] = fake_pynvml.make()\n"
        "s = samplers.NvmlProcessSampler(memory.Nvml(), nvml_factory=functools.partial(fake_pynvml.nvml_factory))\n"
        "s.start()\n"
        "assert s.kind == 'process', s.fallback_reason\n"
        "print(s.shm_name, s._proc.pid, flush=True)\n"
        "raise KeyboardInterrupt\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30, cwd=root,
                       env={**os.environ, "PYTHONPATH": root})
    assert "KeyboardInterrupt" in r.stderr and "leak" not in r.stderr, r.stderr
    name, pid = r.stdout.split()
    assert not _shm_exists(name)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"sampler child {pid} outlived its parent")
