"""sensitivity --method / --schedule: plan-aware teacher forcing against generate, rows of modes method and
schedule (keys, analytic costs, resume), and the CLI's one-line errors. var-tiny with live gains (as in
test_sensitivity.py) so that methods move the distributions."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from model import spec as spec_mod
from model.pipeline import VARPipeline
from model.schedule import DepthSchedule
from varbench import results
from varbench.cli import app
from varbench.errors import UsageError
from varbench.measuring import analytic
from varbench.quality import sensitivity as sens

TINY = spec_mod.SPECS["var-tiny"]
LIVE = dataclasses.replace(TINY, init_adaln_gamma=1.0, init_head=1.0)


def _cfg(**kw) -> sens.SensitivityConfig:
    base = dict(model=LIVE, samples=2, batch=2, allow_random=True, device="cpu")
    base.update(kw)
    return sens.SensitivityConfig(**base)


@pytest.fixture(scope="module")
def pipe():
    return VARPipeline.from_spec(LIVE, seed=3)


@pytest.mark.parametrize("kl", ["guided", "conditional"])
def test_plan_logits_equal_teacher_forcing_under_the_pipelines_plan(pipe, kl):
    labels = torch.tensor([1, 2])
    out = pipe.generate(labels, seed=5)
    sched = DepthSchedule.variant(LIVE, 2, switch=2)
    cfg = _cfg(kl=kl)
    want = sens.next_scale_logits(pipe, labels, out.indices, sched, cfg)
    got = sens.plan_logits(pipe, labels, out.indices, sched, cfg, pipe.plan)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("changes", [{"kv_fp8": True}, {"kv_window": (1, 1)}, {"cfg_until": 2},
                                     {"kv_window": (1, 2), "cfg_until": 3}])
def test_plan_logits_are_the_logits_generate_saw_under_the_plan(pipe, changes):
    """Fed generate's own tokens under a plan, the plan-aware teacher forcing returns the conditional logits that
    generation computed: the loop really runs the plan (a plain teacher forcing would not match)."""
    labels = torch.tensor([0, 3])
    plan = pipe.plan.replace(**changes)
    out = pipe.generate(labels, seed=7, plan=plan, return_logits=True)
    got = sens.plan_logits(pipe, labels, out.indices, DepthSchedule.full(LIVE), _cfg(kl="conditional"), plan)
    torch.testing.assert_close(got, torch.cat(out.logits, dim=1), atol=1e-5, rtol=1e-5)
    if "cfg_until" not in changes:       # a KV policy changes the conditional logits themselves
        plain = sens.next_scale_logits(pipe, labels, out.indices, DepthSchedule.full(LIVE), _cfg(kl="conditional"))
        assert (got - plain).abs().max() > 1e-4


def test_guidance_skip_changes_only_the_guided_distribution(pipe):
    labels = torch.tensor([1, 4])
    idx = pipe.generate(labels, seed=1).indices
    full = DepthSchedule.full(LIVE)
    plan = pipe.plan.replace(cfg_until=2)
    cond = sens.plan_logits(pipe, labels, idx, full, _cfg(kl="conditional"), plan)
    guided = sens.plan_logits(pipe, labels, idx, full, _cfg(kl="guided"), plan)
    ref_guided = sens.next_scale_logits(pipe, labels, idx, full, _cfg(kl="guided"))
    b = LIVE.begin_ends[2][0]
    torch.testing.assert_close(guided[:, b:], cond[:, b:])                     # no guidance from scale 2 on
    torch.testing.assert_close(guided[:, :b], ref_guided[:, :b], atol=2e-4, rtol=2e-4)   # guided before
    assert (guided[:, b:] - ref_guided[:, b:]).abs().max() > 1e-3


def test_method_rows_keys_costs_and_resume(tmp_path, monkeypatch):
    methods = ["variant:depth=4", "guidance-skip:from_scale=2", "kv-fp8", "scale-window:anchors=1,recent=1", "code"]
    sched = {"depths": [4, 4, 2, 2], "select": "isometric", "plan": "p.json", "predicted_loss": 0.5,
             "plan_metric": "kl"}
    rows = sens.run_sensitivity(_cfg(methods=methods, schedules=[sched]), tmp_path)
    by = {(r["method"], r["metric"]): r for r in rows if r["mode"] in sens.CANDIDATE_MODES}
    assert {m for m, _ in by} == {"variant:depth=4,switch=3,select=isometric", "guidance-skip:from_scale=2",
                                  "kv-fp8", "scale-window:anchors=1,recent=1", "code:refiner=var-tiny,from_scale=3",
                                  "schedule:depths=4/4/2/2,select=isometric"}
    full = by[("variant:depth=4,switch=3,select=isometric", "kl")]
    assert full["value"] == pytest.approx(0.0, abs=1e-9) and full["mode"] == "method"
    assert by[("variant:depth=4,switch=3,select=isometric", "token_agreement")]["value"] == 1.0
    assert by[("guidance-skip:from_scale=2", "kl")]["value"] > 1e-4       # guided KL sees the skipped guidance
    fp8 = by[("kv-fp8", "kl")]
    assert fp8["method_params"] == {"kv-fp8": {}}
    from model.plan import InferencePlan
    assert fp8["kv_bytes"] == analytic.kv_peak_bytes(LIVE, None, 1, torch.bfloat16,
                                                     plan=InferencePlan(kv_fp8=True))
    s = by[("schedule:depths=4/4/2/2,select=isometric", "kl")]
    assert s["mode"] == "schedule" and s["predicted_loss"] == 0.5 and s["plan_file"] == "p.json"
    assert s["method_params"] == {"schedule": {"depths": [4, 4, 2, 2], "select": "isometric"}}
    for r in rows:
        assert "ci_low" in r and r["n"] == 2
    keys = {results.row_key(r, sens.KEY_FIELDS) for r in rows}
    assert len(keys) == len(rows)                                       # no two configurations share a key
    assert (tmp_path / "sensitivity_candidates.csv").exists()
    # resume: nothing is evaluated again
    calls = []
    monkeypatch.setattr(sens, "evaluate_configuration", lambda *a, **k: calls.append(1))
    again = sens.run_sensitivity(_cfg(methods=methods, schedules=[sched]), tmp_path)
    assert not calls and len(again) == len(rows)


def test_bad_method_and_schedule_are_usage_errors():
    with pytest.raises(UsageError, match="--method: unknown method"):
        sens.plan_cells(_cfg(methods=["nope"]), LIVE)
    with pytest.raises(UsageError, match="outside"):
        sens.plan_cells(_cfg(methods=["variant:depth=9"]), LIVE)
    with pytest.raises(UsageError, match="schedule"):
        sens.plan_cells(_cfg(schedules=[{"depths": [4, 4, 2]}]), LIVE)
    with pytest.raises(UsageError, match="--groups"):
        sens.plan_cells(_cfg(methods=["kv-fp8"], groups=[(0, 1)]), LIVE)
    with pytest.raises(UsageError, match="--depths, --scales do"):
        sens.plan_cells(_cfg(methods=["kv-fp8"], depths=[2], scales="0,1"), LIVE)
    assert sens.plan_cells(_cfg(methods=["schedule:depths=4/4/2/2"]), LIVE)[0].mode == "schedule"


def test_cli_schedule_from_plan_json_and_errors(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"depths": [4, 4, 2, 2], "select": "isometric", "model": "var-tiny",
                                "predicted_loss": 0.1, "metric": "kl"}))
    base = ["sensitivity", "--model", "var-tiny", "--allow-random", "--samples", "2", "--batch", "2", "--device",
            "cpu", "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(app, [*base, "--schedule", str(plan), "--method", "kv-fp8", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["mode"] for r in rows} == {"schedule", "method"}
    for bad in (["--method", "variant:depth=x"], ["--schedule", str(tmp_path / "missing.json")],
                ["--method", "code:refiner=var-d30"]):
        res = CliRunner().invoke(app, [*base, *bad])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
