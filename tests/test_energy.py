"""Energy per image (issue 21) on CPU through a fake NVML: the counter path, the power-integral fallback, the
null path, the per-image arithmetic, the power channels of both samplers and the sweep worker's energy pass."""
from __future__ import annotations

import functools
import sys
import time

import pytest

from tests import fake_pynvml
from varbench.measuring import energy, memory, samplers, sweep_worker


def _nvml(monkeypatch, **kw):
    mod = fake_pynvml.make(**kw)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return mod, memory.Nvml()


def _work(mod, mj_per_call: int, seconds: float = 0.01):
    def fn():
        time.sleep(seconds)
        mod.advance_energy(mj_per_call)         # the board spent exactly this much during the call
    return fn


def test_counter_path_energy_per_image_is_delta_over_images(monkeypatch):
    mod, nv = _nvml(monkeypatch, power_mw=250_000, sm_clock_mhz=1500)
    out = energy.measure_energy(_work(mod, 3000), images_per_call=4, nvml=nv, min_repeats=5, min_seconds=0.0,
                                interval_ms=1.0)
    assert out["energy_method"] == "nvml_total_energy" and out["energy_null_reason"] is None
    assert out["energy_images"] == 20                          # 5 calls x 4 images
    assert out["energy_j"] == pytest.approx(15.0)              # 5 x 3000 mJ
    assert out["energy_j_per_image"] == pytest.approx(0.75)
    assert out["images_per_kwh"] == pytest.approx(3.6e6 / 0.75)
    assert out["avg_power_w"] == pytest.approx(15.0 / out["energy_window_s"])
    assert out["peak_power_w"] == pytest.approx(250.0) and out["sm_clock_mhz"] == 1500
    assert out["energy_power_samples"] > 0 and out["energy_sampler"] == "thread"
    assert set(out) == set(energy.FIELDS)


def test_window_meets_both_count_and_duration(monkeypatch):
    mod, nv = _nvml(monkeypatch)
    out = energy.measure_energy(_work(mod, 1000, 0.005), images_per_call=2, nvml=nv, min_repeats=2,
                                min_seconds=0.06, interval_ms=2.0)
    assert out["energy_window_s"] >= 0.06 and out["energy_images"] >= 2 * 2
    assert out["energy_j"] == pytest.approx(out["energy_images"] / 2 * 1.0)   # 1 J per call, whatever the count


@pytest.mark.parametrize("mode", ["not_supported", "missing"])
def test_fallback_integrates_power_samples_and_says_so(monkeypatch, mode):
    mod, nv = _nvml(monkeypatch, energy=mode, power_mw=200_000)
    out = energy.measure_energy(_work(mod, 0), images_per_call=2, nvml=nv, min_repeats=5, min_seconds=0.0,
                                interval_ms=1.0)
    assert out["energy_method"] == "power_integral"
    assert ("Not Supported" if mode == "not_supported" else "no nvmlDeviceGetTotalEnergyConsumption") \
        in out["energy_note"]
    assert out["energy_j"] == pytest.approx(200.0 * out["energy_window_s"], rel=1e-6)   # constant 200 W
    assert out["avg_power_w"] == pytest.approx(200.0)
    assert out["energy_j_per_image"] == pytest.approx(out["energy_j"] / 10)


def test_integrate_power_known_curves():
    s = 1_000_000_000
    ramp = [(0, 0.0), (s, 100.0)]                              # 0 -> 100 W over one second
    assert energy.integrate_power(ramp, 0, s) == pytest.approx(50.0)
    assert energy.integrate_power(ramp, 0, 2 * s) == pytest.approx(150.0)       # held at 100 W past the last
    assert energy.integrate_power(ramp, s // 2, s) == pytest.approx(37.5)       # interpolated at the start
    assert energy.integrate_power([], 0, s) is None and energy.integrate_power(ramp, s, s) is None


def test_null_without_nvml_and_per_image_guards(monkeypatch):
    _, nv = _nvml(monkeypatch, mode="no_driver")
    out = energy.measure_energy(lambda: None, 1, nv, min_seconds=0.0)
    assert out["energy_method"] is None and out["energy_j_per_image"] is None
    assert out["energy_null_reason"].startswith("NVML unavailable")
    assert energy.per_image(None, 4)["energy_j_per_image"] is None
    assert energy.per_image(5.0, 0)["images_per_kwh"] is None
    with pytest.raises(ValueError):
        energy.measure_energy(lambda: None, 0, nv)


def test_cpu_point_has_null_energy_with_a_reason():
    out = energy.null_fields("device is CPU")
    assert set(out) == set(energy.FIELDS) and out["energy_null_reason"] == "device is CPU"
    assert all(v is None for k, v in out.items() if k != "energy_null_reason")


def test_process_sampler_power_channels(monkeypatch):
    _nvml(monkeypatch)
    factory = functools.partial(fake_pynvml.nvml_factory, power_mw=123_000, sm_clock_mhz=1755)
    with samplers.make_sampler(interval_ms=2.0, mode="process", nvml_factory=factory, channels="power") as s:
        time.sleep(0.05)
    assert s.kind == "process" and s.n > 3
    assert {(p, c) for _, p, c in s.samples()} == {(123_000, 1755)}
    with pytest.raises(ValueError):
        samplers.make_sampler(interval_ms=1.0, mode="thread", channels="volts")


class _FakePipe:
    """generate() records its decode flag and makes the fake board spend 500 mJ per image."""

    def __init__(self, mod):
        self.mod, self.decodes = mod, []

    def generate(self, labels_B, decode, **kw):
        self.decodes.append(decode)
        self.mod.advance_energy(500 * len(labels_B))


def test_worker_energy_pass_counts_generate_and_decode(monkeypatch):
    import torch

    mod, nv = _nvml(monkeypatch)
    pipe = _FakePipe(mod)
    out = sweep_worker._energy_pass(pipe, {"labels_B": [0, 1, 2], "decode": False}, torch.device("cpu"), 3,
                                    {"repeats": 4, "energy_seconds": 1e-9}, nvml=nv)
    assert pipe.decodes == [True] * 5                          # decoded too; one lead-in call before the window
    assert out["energy_images"] == 12 and out["energy_j_per_image"] == pytest.approx(0.5)   # lead-in not counted
    off = sweep_worker._energy_pass(pipe, {"labels_B": [0]}, torch.device("cpu"), 1, {"energy_seconds": 0}, nvml=nv)
    assert off["energy_j_per_image"] is None and "disabled" in off["energy_null_reason"]


def test_energy_is_a_pareto_axis_only_where_measured(tmp_path):
    import json
    import re

    from tests.test_report import write_results
    from varbench.reporting.report import build_report

    plain = build_report([write_results(tmp_path / "cpu")], tmp_path / "cpu.html").read_text()
    assert '"label":"energy"' not in plain and "Energy per image vs throughput" not in plain
    res = write_results(tmp_path / "gpu")
    rows = [json.loads(ln) for ln in (res / "sweep.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        if r["status"] == "ok":
            r.update(device="cuda", energy_j_per_image=2.0 + i, energy_method="nvml_total_energy")
    (res / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = build_report([res], tmp_path / "gpu.html").read_text()
    titles = re.findall(r'<div class="figure" data-title="([^"]*)"', page)
    assert "Energy per image vs throughput" in titles
    assert '"label":"energy"' in page and "energy per image (J" in page
    assert "energy: 2.000 J\\u002fimg" in page                              # in the hover text (JSON-escaped)
