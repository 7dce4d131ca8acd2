"""Efficiency methods as configurations: parsing and composition, the same function where they must compute it,
and the analytic model equal to the real cache and FLOPs for every method."""
import json

import pytest
import torch
from typer.testing import CliRunner

from model import methods, spec
from model.pipeline import VARPipeline
from model.plan import InferencePlan
from model.schedule import DepthSchedule
from varbench.cli import app
from varbench.measuring import analytic

SPEC = spec.var_spec(4, name="meth", width=64, heads=2, patch_nums=(1, 2, 3, 4), vae=spec.TINY_VAE,
                     num_classes=10, init_adaln_gamma=1.0, init_head=1.0)   # blocks that matter, not near-identity


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_parse_canonical_and_composition():
    c = methods.parse("kv-fp8+variant:depth=2", SPEC)
    assert c.canonical() == "variant:depth=2,switch=3,select=isometric+kv-fp8"
    assert methods.parse(c.canonical(), SPEC) == c                     # canonical strings round-trip
    assert c.plan_changes() == {"kv_fp8": True}
    assert c.schedule() == DepthSchedule.variant(SPEC, 2, 3)
    ee = methods.parse("early-exit:blocks=1,from_scale=2", SPEC).schedule()
    assert ee.layers == ((0, 1, 2, 3), (0, 1, 2, 3), (0,), (0,))
    assert methods.parse("guidance-skip:from_scale=2", SPEC).plan_changes() == {"cfg_until": 2}
    assert methods.parse("kv-fp8", SPEC).schedule() == DepthSchedule.full(SPEC)


@pytest.mark.parametrize("bad,msg", [("foo", "unknown method"), ("variant:depth=9", "outside 2..4"),
                                     ("variant+early-exit", "both set the depth schedule"),
                                     ("variant:x=1", "unknown parameter"), ("kv-fp8+kv-fp8", "twice"),
                                     ("variant:depth=a", "is not int"), ("variant:select=zz", "is not one of"),
                                     ("guidance-skip:from_scale=0", "outside"), ("variant:depth", "key=value"),
                                     ("", "empty")])
def test_bad_configurations_are_method_errors(bad, msg):
    with pytest.raises(methods.MethodError, match=msg):
        methods.parse(bad, SPEC)


def _gen(p, plan, schedule=None, **kw):
    seen = []
    out = p.generate([1, 2, 3], seed=5, schedule=schedule, plan=plan, decode=False, return_logits=True,
                     on_scale_end=lambda si, c: seen.append(c.nbytes()), **kw)
    return out, seen


@pytest.mark.parametrize("keep", [False, True])
def test_guidance_skip_is_cached_generation_of_the_conditional_rows(keep):
    """From cfg_until on only the conditional rows run: their logits still equal teacher forcing (they never saw
    the unconditional rows), the earlier scales' tokens equal plain CFG's, and the cache holds one row per image
    from there on (unless buffers are kept) exactly as the analytic model says."""
    p = VARPipeline.from_spec(SPEC, seed=0)
    plain, _ = _gen(p, InferencePlan.plain(), keep_skipped=keep)
    plan = InferencePlan(cfg_until=2)
    out, seen = _gen(p, plan, keep_skipped=keep)
    tf = p.teacher_forcing([1, 2, 3], out.indices)
    assert rel_err(torch.cat(out.logits, 1), tf) <= 1e-5
    assert all(torch.equal(a, b) for a, b in zip(plain.indices[:2], out.indices[:2]))
    assert not all(torch.equal(a, b) for a, b in zip(plain.indices[2:], out.indices[2:]))   # guidance mattered
    want = analytic.kv_bytes_per_scale(SPEC, None, 3, torch.float32, keep, plan=plan)
    assert seen == want
    full = analytic.kv_bytes_per_scale(SPEC, None, 3, torch.float32, keep)
    if keep:                                              # kept buffers: one allocation, never shrunk
        assert want == full
    else:                                                 # a segment ends before the skip; then one row per image
        assert want[:2] < full[:2] and [2 * w for w in want[2:]] == full[2:]


def test_guidance_skip_flops_halve_the_late_scales():
    plan = InferencePlan(cfg_until=2)
    per = analytic.flops_per_scale(SPEC, None, 3, plan=plan)
    ref = analytic.flops_per_scale(SPEC, None, 3)
    assert per[:2] == ref[:2] and [2 * f for f in per[2:]] == ref[2:]


def test_kv_fp8_stores_a_byte_per_value_and_stays_close():
    """fp8 K/V: half the bf16 bytes (a quarter of fp32), equal to the analytic model at every scale, logits close
    to the exact ones (e4m3 has 3 mantissa bits: ~3% per value), greedy tokens mostly unchanged."""
    p = VARPipeline.from_spec(SPEC, seed=0)
    sched = DepthSchedule.variant(SPEC, 2, 2)
    exact, seen_exact = _gen(p, InferencePlan.plain(), sched, top_k=1)
    plan = InferencePlan(kv_fp8=True)
    out, seen = _gen(p, plan, sched, top_k=1)
    assert seen == analytic.kv_bytes_per_scale(SPEC, sched, 3, torch.float32, plan=plan)
    assert all(4 * s == e for s, e in zip(seen, seen_exact))
    assert rel_err(torch.cat(out.logits, 1), torch.cat(exact.logits, 1)) < 0.1
    agree = (torch.cat(out.indices, 1) == torch.cat(exact.indices, 1)).float().mean().item()
    assert agree >= 0.8


def test_kv_fp8_scale_is_per_block_and_head_and_never_overflows():
    from model.kv_cache import FP8_MAX, KVCache
    sched = DepthSchedule.full(SPEC)
    cache = KVCache(SPEC, sched, 1, torch.float32, "cpu", plan=InferencePlan(kv_fp8=True))
    cache.begin_scale(0)
    k = torch.randn(2, 2, 1, 32)
    k[:, 1] *= 100                                        # head 1 is 100x larger: its own scale
    cache.append(0, k, k.clone())
    assert cache.k_scale[0].shape == (1, 2, 1, 1) and cache.k_scale[0][0, 1] > 50 * cache.k_scale[0][0, 0]
    cache.begin_scale(1)
    big = torch.full((2, 2, 4, 32), 1e6)                  # far past the first write's range: clamped, finite
    k_all, _ = cache.append(0, big, big)
    assert torch.isfinite(k_all).all() and (k_all[:, :, 1:] <= FP8_MAX * cache.k_scale[0] * 1.001).all()


def test_methods_cli_and_sweep_rows(tmp_path):
    r = CliRunner().invoke(app, ["methods", "--model", "var-tiny", "--json"])
    assert r.exit_code == 0
    names = [m["name"] for m in json.loads(r.stdout)]
    assert names == [m.name for m in methods.REGISTRY]
    bad = CliRunner().invoke(app, ["sweep", "--model", "var-tiny", "--device", "cpu", "--method", "variant:depth=9",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "outside 2..4" in bad.stderr and not (tmp_path / "bad" / "sweep.jsonl").exists()
    from varbench.measuring.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(model="var-tiny", batches=[1], dtype="fp32", device="cpu", repeats=1, min_seconds=0.0,
                      warmup=0, nvml_pass=False, threads=1,
                      methods=["guidance-skip:from_scale=2", "early-exit:blocks=1,from_scale=2",
                               "variant:depth=2+kv-fp8", "scale-window:anchors=1,recent=1",
                               "code:refiner=var-tiny,from_scale=2+kv-fp8"])
    rows = run_sweep(cfg, tmp_path / "ok", progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 5, [r.get("error") for r in rows]
    code = rows[-1]
    assert code["refiner_weights"] == "random" and code["plan"]["refine_from"] == 2
    assert code["flops"] > rows[0]["flops"]                 # the refiner re-runs the drafted scales
    assert all(r["kv_bytes"] == r["kv_bytes_analytic"] for r in rows)
    by = {r["method"]: r for r in rows}
    assert by["guidance-skip:from_scale=2"]["plan"]["cfg_until"] == 2
    assert by["early-exit:blocks=1,from_scale=2"]["depth"] == 1 and by["early-exit:blocks=1,from_scale=2"][
        "method_params"] == {"early-exit": {"blocks": 1, "from_scale": 2}}
    assert by["variant:depth=2,switch=3,select=isometric+kv-fp8"]["plan"]["kv_fp8"] is True


@pytest.mark.gpu
@pytest.mark.parametrize("text", ["guidance-skip:from_scale=2", "kv-fp8", "early-exit:blocks=1,from_scale=2",
                                  "scale-window:anchors=1,recent=2", "scale-window:anchors=0,recent=2"])
def test_methods_under_cuda_graphs_equal_eager(text):
    """The static-shape methods run under per-scale CUDA graphs and give the eager path's tokens and logits."""
    p = VARPipeline.from_spec(SPEC, device="cuda", seed=0, dtype=torch.bfloat16)
    conf = methods.parse(text, SPEC)
    plan = p.plan.replace(**conf.plan_changes())
    a, _ = _gen(p, plan, conf.schedule())
    b, _ = _gen(p, plan.replace(cuda_graphs=True), conf.schedule())
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert rel_err(torch.cat(b.logits, 1), torch.cat(a.logits, 1)) <= 1e-3


def _windowed_teacher_forcing(p, labels, indices, window):
    """The reference: every block attends over its scale's prefix restricted to the window, by an explicit mask."""
    import torch.nn.functional as F
    var, s = p.var, p.spec
    anchors, recent = window
    with torch.no_grad():
        x_BLCv = p.vae.quantize.idx_to_var_input(indices)
        cond_BD = var.class_emb(p._labels(labels))
        lvl_pos = var.lvl_pos()
        sos = cond_BD.float().unsqueeze(1) + var.pos_start.float() + lvl_pos[:, :1]
        x = torch.cat((sos, var.embed_words(x_BLCv) + lvl_pos[:, 1:]), dim=1)
        lvl = torch.tensor(s.level_of_token)
        q_lvl, k_lvl = lvl[:, None], lvl[None, :]
        mask = (k_lvl <= q_lvl) & ((k_lvl < anchors) | (k_lvl > q_lvl - recent))
        attend = lambda q, k, v, scale: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # noqa
        cond = var.cond_for_blocks(cond_BD)
        for blk in var.blocks:
            x = blk(x, cond, attend)
        return var.get_logits(x, cond_BD)


@pytest.mark.parametrize("window", [(1, 1), (0, 2), (2, 1)])
def test_scale_window_equals_windowed_teacher_forcing(window):
    """Cached generation with the window (scales dropped and moved down in static buffers) computes exactly the
    block-causal attention restricted to anchor + recent scales."""
    p = VARPipeline.from_spec(SPEC, seed=0)
    out, _ = _gen(p, InferencePlan(kv_window=window))
    ref = _windowed_teacher_forcing(p, [1, 2, 3], out.indices, window)
    assert rel_err(torch.cat(out.logits, 1), ref) <= 1e-5
    full = p.teacher_forcing([1, 2, 3], out.indices)
    assert rel_err(ref, full) > 1e-3                    # the window changed the function


def test_scale_window_covering_everything_is_the_plain_cache():
    p = VARPipeline.from_spec(SPEC, seed=0)
    a, _ = _gen(p, InferencePlan.plain())
    b, _ = _gen(p, InferencePlan(kv_window=(0, SPEC.num_scales)))
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert torch.equal(torch.cat(a.logits, 1), torch.cat(b.logits, 1))


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("text", ["scale-window:anchors=1,recent=1", "scale-window:anchors=0,recent=2+kv-fp8",
                                  "variant:depth=2,switch=2+scale-window:anchors=1,recent=2",
                                  "early-exit:blocks=1,from_scale=1+guidance-skip:from_scale=2+scale-window"])
def test_analytic_kv_equals_the_cache_for_every_method(text, keep):
    p = VARPipeline.from_spec(SPEC, seed=0)
    conf = methods.parse(text, SPEC)
    plan = InferencePlan(**conf.plan_changes())
    _, seen = _gen(p, plan, conf.schedule(), keep_skipped=keep)
    assert seen == analytic.kv_bytes_per_scale(SPEC, conf.schedule(), 3, torch.float32, keep, plan=plan)


def test_scale_window_flops_count_only_the_window():
    plan = InferencePlan(kv_window=(1, 1))
    full, win = analytic.flops_per_scale(SPEC, None, 1), analytic.flops_per_scale(SPEC, None, 1, plan=plan)
    C = SPEC.width
    # scale 2 (9 queries): keys of scales 0 and 2 only (1 + 9) instead of 0..2 (1 + 4 + 9), per block, with CFG
    assert full[2] - win[2] == pytest.approx(2 * SPEC.depth * 4.0 * C * 9 * 4)
    assert win[:2] == full[:2]


def test_trace_runs_a_method_and_its_analytic_kv_matches_every_scale(tmp_path):
    from varbench.measuring.trace import TraceConfig, run_trace
    cfg = TraceConfig(model="var-tiny", dtype="fp32", device="cpu", batch=2, overhead_repeats=0, sampler="thread",
                      method="scale-window:anchors=1,recent=1+guidance-skip:from_scale=2")
    summary = run_trace(cfg, tmp_path)
    assert summary["analytic_equals_cache"] is True
    assert summary["method"] == "guidance-skip:from_scale=2+scale-window:anchors=1,recent=1"
    assert list(summary["plan"]["kv_window"]) == [1, 1] and summary["plan"]["cfg_until"] == 2


REFINER = spec.var_spec(2, name="meth-ref", width=32, heads=2, patch_nums=SPEC.patch_nums, vae=spec.TINY_VAE,
                        num_classes=10, init_adaln_gamma=1.0, init_head=1.0)


def test_code_with_the_drafter_as_refiner_is_plain_generation():
    """The refiner's cache prefilled over the drafted scales is exactly the cache it would have built itself: with
    a copy of the drafter as refiner, collaborative decoding is plain generation."""
    import copy
    p = VARPipeline.from_spec(SPEC, seed=0)
    plain, _ = _gen(p, InferencePlan.plain())
    p.set_refiner(copy.deepcopy(p.var))
    code, _ = _gen(p, InferencePlan(refine_from=2))
    assert all(torch.equal(a, b) for a, b in zip(plain.indices, code.indices))
    assert rel_err(torch.cat(code.logits, 1), torch.cat(plain.logits, 1)) <= 1e-5


def test_code_refiner_logits_equal_its_teacher_forcing_and_kv_matches_the_analytic_model():
    p = VARPipeline.from_spec(SPEC, seed=0)
    ref_pipe = VARPipeline.from_spec(REFINER, seed=3)
    ref_pipe.vae = p.vae                                   # one VQ-VAE: the refiner reads the drafter's latents
    p.set_refiner(ref_pipe.var)
    plan = InferencePlan(refine_from=2)
    out, seen = _gen(p, plan)
    L2 = SPEC.begin_ends[2][0]                             # first token of the refiner's scales
    got = torch.cat(out.logits, 1)
    assert rel_err(got[:, L2:], ref_pipe.teacher_forcing([1, 2, 3], out.indices)[:, L2:]) <= 1e-5
    assert rel_err(got[:, :L2], p.teacher_forcing([1, 2, 3], out.indices)[:, :L2]) <= 1e-5
    assert seen == analytic.code_kv_bytes_per_scale(SPEC, REFINER, 3, torch.float32, plan=plan)
    with pytest.raises(ValueError, match="does not share"):
        p.set_refiner(VARPipeline.from_spec("var-toy").var)
    with pytest.raises(ValueError, match="needs a refiner"):
        VARPipeline.from_spec(SPEC, seed=0).generate([1], plan=plan)
