"""The inference plan: resolved once from the device, passed down explicitly, the CUDA-graph key as a whole, and one
generation loop whose hooks fire the same way on the eager and the graphed step."""
import dataclasses
import pathlib
import re

import pytest
import torch

from model import spec
from model.pipeline import VARPipeline
from model.plan import InferencePlan
from model.cuda_graphs import GraphedScales
from model.schedule import DepthSchedule

SPEC = spec.var_spec(4, name="plan", width=64, heads=2, patch_nums=(1, 2, 3, 4), vae=spec.TINY_VAE,
                     num_classes=10, init_adaln_gamma=1.0, init_head=1.0)   # blocks that matter, not near-identity
ROOT = pathlib.Path(__file__).resolve().parent.parent


class FakeGraphed(GraphedScales):
    """The real graphed step's static-buffer program without CUDA graphs (``capture=False``): one instance per
    key, the hooks' ``CapturedCache`` view and the static input/output views. Counts its captures."""

    captures: list = []

    def __init__(self, var, schedule, batch, dtype, device, plan, k_dtype=None, keep_skipped=False):
        super().__init__(var, schedule, batch, dtype, device, plan, k_dtype, keep_skipped, capture=False)
        FakeGraphed.captures.append(plan)


def _other_value(f: dataclasses.Field, value):
    if value is None:
        return (1, 1) if f.name == "kv_window" else 1
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if f.name == "kv_layout":
        return "head" if value == "token" else "token"
    if f.name == "decode_dtype":
        return "bf16" if value == "fp32" else "fp32"
    raise AssertionError(f"no other value for plan field {f.name}: extend this test")


def test_plan_resolves_to_plain_on_cpu_and_drops_cuda_only_choices():
    plan = InferencePlan.resolve("cpu", torch.bfloat16, compiled=True, cuda_graphs=True, kv_layout="head")
    assert plan == InferencePlan.plain().replace(kv_layout="head")
    assert plan.execution == "eager" and InferencePlan(cuda_graphs=True).execution == "graphs"
    with pytest.raises(ValueError, match="unknown inference-plan field"):
        InferencePlan.resolve("cpu", torch.float32, tiny_attn=3)
    with pytest.raises(ValueError, match="must be >= 1"):
        InferencePlan(ffn_chunk_elems=0)
    with pytest.raises(ValueError, match="decode_cudnn_benchmark_limit must be >= 0"):
        InferencePlan(decode_cudnn_benchmark_limit=-1)
    assert InferencePlan.resolve("cpu").decode_cudnn_benchmark_limit is None       # torch's own default stays
    assert InferencePlan(**plan.as_dict()) == plan and hash(plan) == hash(InferencePlan(**plan.as_dict()))


def test_pipeline_choices_survive_a_move():
    p = VARPipeline.from_spec(SPEC, seed=0).set_plan(sample_chunk_logits=123, kv_layout="head")
    p.to("cpu", torch.float32)
    assert p.plan.sample_chunk_logits == 123 and p.plan.kv_layout == "head"
    p.set_plan(InferencePlan.plain())
    assert p.plan == InferencePlan.plain()


def test_every_plan_field_changes_the_graph_key():
    """A capture made under one plan is never replayed under another: every field, whatever it is, is in the key."""
    p = VARPipeline.from_spec(SPEC, seed=0)
    sched = DepthSchedule.full(SPEC)
    base = InferencePlan(cuda_graphs=True)
    for f in dataclasses.fields(InferencePlan):
        other = base.replace(**{f.name: _other_value(f, getattr(base, f.name))})
        assert p.graph_key(other, sched, 2, None) != p.graph_key(base, sched, 2, None), f.name


def test_a_capture_is_never_replayed_under_another_plan():
    p = VARPipeline.from_spec(SPEC, seed=0)
    p.graph_factory = FakeGraphed
    FakeGraphed.captures = []
    a, b = InferencePlan(cuda_graphs=True), InferencePlan(cuda_graphs=True, sample_chunk_logits=64 * 9)
    first = p.generate([1, 2], seed=1, plan=a, decode=False)
    p.generate([1, 2], seed=1, plan=a, decode=False)
    assert FakeGraphed.captures == [a]                      # same key: replayed
    p.generate([1, 2], seed=1, plan=b, decode=False)
    again = p.generate([1, 2], seed=1, plan=a, decode=False)
    assert FakeGraphed.captures == [a, b, a]                # other plan: captured anew, never reused
    assert all(torch.equal(x, y) for x, y in zip(first.indices, again.indices))
    p.generate([1, 2], seed=1, plan=a, decode=False, schedule=DepthSchedule.variant(SPEC, 2, 2))
    assert len(FakeGraphed.captures) == 4                   # the schedule is in the key too


def _hooked(p, plan, schedule):
    events = []
    out = p.generate([3, 4, 5], seed=7, schedule=schedule, plan=plan, decode=False, return_logits=True,
                     on_scale_begin=lambda si, c: events.append(("begin", si, c.nbytes())),
                     on_scale_end=lambda si, c: events.append(("end", si, c.nbytes())))
    return out, events


@pytest.mark.parametrize("variant", [False, True])
def test_hooks_fire_identically_on_the_eager_and_the_graphed_step(variant):
    p = VARPipeline.from_spec(SPEC, seed=0)
    p.graph_factory = FakeGraphed
    sched = DepthSchedule.variant(SPEC, 2, 2) if variant else DepthSchedule.full(SPEC)
    eager, ev_e = _hooked(p, InferencePlan.plain(), sched)
    graphed, ev_g = _hooked(p, InferencePlan(cuda_graphs=True), sched)
    S = SPEC.num_scales
    assert [e[:2] for e in ev_e] == [e[:2] for e in ev_g] == [(k, si) for si in range(S) for k in ("begin", "end")]
    assert all(torch.equal(x, y) for x, y in zip(eager.indices, graphed.indices))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(eager.logits, graphed.logits))
    assert [e[2] for e in ev_e] == [e[2] for e in ev_g]       # the graphed step frees what eager frees
    assert graphed.plan.cuda_graphs and not eager.plan.cuda_graphs


@pytest.mark.parametrize("head_in_graph", [True, False])
@pytest.mark.parametrize("method", ["variant:depth=2,switch=2", "guidance-skip:from_scale=2",
                                    "scale-window:anchors=1,recent=2", "kv-fp8+variant:depth=2,switch=1"])
def test_graphed_program_matches_eager_under_every_static_method(method, head_in_graph):
    """The graphed step's program (static input/output views, the allocation step inside each scale, rows that
    shrink without guidance) gives the eager step's tokens and, scale by scale, its cache bytes."""
    from model import methods
    p = VARPipeline.from_spec(SPEC, seed=0)
    p.graph_factory = FakeGraphed
    conf = methods.parse(method, SPEC)
    plain = InferencePlan.plain().replace(**conf.plan_changes())
    if not head_in_graph:      # logits above the chunk bound: the graph ends at the hidden state, the head is eager
        plain = plain.replace(sample_chunk_logits=SPEC.vae.vocab_size)
    eager, ev_e = _hooked(p, plain, conf.schedule())
    graphed, ev_g = _hooked(p, plain.replace(cuda_graphs=True), conf.schedule())
    step = next(iter(p._graphed.values()))
    assert step.head_in_graph is head_in_graph
    assert all(torch.equal(x, y) for x, y in zip(eager.indices, graphed.indices))
    assert [e[2] for e in ev_e] == [e[2] for e in ev_g]


@pytest.mark.gpu
def test_hooks_fire_identically_with_real_cuda_graphs():
    p = VARPipeline.from_spec(SPEC, device="cuda", seed=0)
    sched = DepthSchedule.variant(SPEC, 2, 2)
    eager, ev_e = _hooked(p, p.plan, sched)
    graphed, ev_g = _hooked(p, p.plan.replace(cuda_graphs=True), sched)
    assert [e[:2] for e in ev_e] == [e[:2] for e in ev_g]
    assert all(torch.equal(x, y) for x, y in zip(eager.indices, graphed.indices))


def test_teacher_forcing_runs_the_pipeline_plan():
    """teacher_forcing passes the plan's kernels down: a plan with a tiny FFN chunk gives the same logits."""
    p = VARPipeline.from_spec(SPEC, seed=0)
    out = p.generate([1, 2], seed=0, decode=False)
    ref = p.teacher_forcing([1, 2], out.indices)
    got = p.set_plan(ffn_chunk_elems=SPEC.mlp_hidden * 3).teacher_forcing([1, 2], out.indices)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


INFERENCE_MODULES = ("pipeline", "kernels", "kv_cache", "var", "sampling", "cuda_graphs", "scale_step", "plan",
                     "triton_kernels", "vqvae", "vqvae_blocks")


@pytest.mark.parametrize("name", INFERENCE_MODULES)
def test_no_module_level_switch_steers_generation(name):
    """What runs is the plan's: no environment variable, no global rebinding, no attribute swapped on a module."""
    src = (ROOT / "model" / f"{name}.py").read_text()
    assert "os.environ" not in src and "getenv" not in src
    assert not re.search(r"^\s+global\s", src, re.M)
    assert not re.search(r"setattr\((K|kernels|kv_cache|var)\b", src)


def test_sweep_rows_record_the_plan_they_ran_under(tmp_path):
    """A point's explicit plan fields reach its worker, the row records the whole plan, and a typo in a field is a
    usage error before any worker starts."""
    from varbench.errors import UsageError
    from varbench.measuring.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(model="var-tiny", depths=[2], batches=[1], switches=[2], dtype="fp32", device="cpu",
                      repeats=1, min_seconds=0.0, warmup=0, nvml_pass=False, threads=1,
                      plan_overrides={"sample_chunk_logits": 999, "kv_layout": "head"})
    (row,) = run_sweep(cfg, tmp_path, progress=False)
    assert row["status"] == "ok", row.get("error")
    want = InferencePlan.plain().replace(sample_chunk_logits=999, kv_layout="head")
    assert row["plan"] == want.as_dict() and row["execution"] == "eager"
    assert row["plan_overrides"] == {"sample_chunk_logits": 999, "kv_layout": "head"}
    with pytest.raises(UsageError, match="unknown inference-plan field"):
        run_sweep(SweepConfig(model="var-tiny", device="cpu", plan_overrides={"tiny": 1}), tmp_path / "x")
