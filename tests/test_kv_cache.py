"""Analytic KV bytes (varbench.measuring.analytic) equal the real cache's bytes at every scale boundary."""
import pytest
import torch

from model import spec
from model.kv_cache import KVCache
from model.pipeline import VARPipeline
from model.plan import InferencePlan
from model.schedule import DepthSchedule
from varbench.measuring import analytic

SPEC = spec.var_spec(6, name="t6", width=64, heads=2, patch_nums=(1, 2, 3, 4, 5), vae=spec.TINY_VAE,
                     num_classes=10)


@pytest.fixture(scope="module")
def pipe():
    return VARPipeline.from_spec(SPEC, seed=0)


CASES = [DepthSchedule.full(SPEC), DepthSchedule.variant(SPEC, 2, 2), DepthSchedule.variant(SPEC, 3, 3, "nested"),
         DepthSchedule([(0, 1, 2, 3, 4, 5), (0, 2, 3, 4, 5), (0, 3, 5), (0, 1, 3, 5), (0, 5)])]


@pytest.mark.parametrize("schedule", CASES, ids=lambda s: s.describe())
@pytest.mark.parametrize("keep_skipped", [False, True])
@pytest.mark.parametrize("k_dtype", [None, torch.float64])
def test_analytic_equals_cache_bytes(pipe, schedule, keep_skipped, k_dtype):
    seen = []
    pipe.generate([1, 2, 3], seed=0, schedule=schedule, keep_skipped=keep_skipped, k_dtype=k_dtype, decode=False,
                  on_scale_end=lambda si, cache: seen.append(cache.nbytes()))
    want = analytic.kv_bytes_per_scale(SPEC, schedule, batch=3, dtype=torch.float32, keep_skipped=keep_skipped,
                                       k_dtype=k_dtype)
    assert seen == want


def test_freeing_really_frees():
    """After the switch the skipped blocks' buffers are gone: fewer bytes held than with keep_skipped."""
    sched = DepthSchedule.variant(SPEC, 2, 2)
    freed = KVCache(SPEC, sched, 2, torch.float32, "cpu")
    kept = KVCache(SPEC, sched, 2, torch.float32, "cpu", keep_skipped=True)
    for c in (freed, kept):
        c.begin_scale(0)
    before = freed.nbytes()
    freed.begin_scale(2)
    kept.begin_scale(2)
    assert all(freed.k[b] is None for b in (1, 2, 3, 4))
    assert freed.nbytes() < kept.nbytes()
    assert freed.nbytes() != before


def test_full_schedule_is_one_static_allocation():
    c = KVCache(SPEC, DepthSchedule.full(SPEC), 2, torch.float32, "cpu")
    c.begin_scale(0)
    ptrs = [t.data_ptr() for t in c.k]
    for si in range(1, SPEC.num_scales):
        c.begin_scale(si)
    assert ptrs == [t.data_ptr() for t in c.k]
    assert c.nbytes() == 6 * SPEC.L * 4 * 2 * 64 * 4   # blocks × tokens × rows (2B, B=2) × (K,V) × C × fp32


def test_d30_full_kv_per_image_bf16():
    s = spec.SPECS["var-d30"]
    assert analytic.kv_peak_bytes(s, DepthSchedule.full(s), batch=1, dtype=torch.bfloat16) == 313_344_000


def test_token_major_layout_is_the_same_cache():
    """kv_layout="token" (the default; the fused q/k-norm cache writes) against "head" (appends by copy): same
    bytes, same samples, logits equal to float32 rounding."""
    s = spec.var_spec(4, name="kvl", width=64, heads=2, patch_nums=(1, 2, 3), vae=spec.TINY_VAE, num_classes=10)
    p = VARPipeline.from_spec(s, seed=0)
    sched = DepthSchedule.variant(s, 2, 1)
    assert p.plan.kv_layout == "token"
    a = p.generate([1, 2], seed=4, schedule=sched, return_logits=True, decode=False,
                   plan=p.plan.replace(kv_layout="head"))
    seen = []
    b = p.generate([1, 2], seed=4, schedule=sched, return_logits=True, decode=False,
                   on_scale_end=lambda si, c: seen.append((c.layout, c.nbytes(), c.k[0].stride())))
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert torch.allclose(torch.cat(a.logits, 1), torch.cat(b.logits, 1), rtol=1e-5, atol=1e-6)
    assert a.kv_peak_bytes == b.kv_peak_bytes and all(lay == "token" for lay, _, _ in seen)
    H, c = 2, 32
    assert seen[-1][2][1:] == (c, H * c, 1)                     # (rows, cap, H, c) memory behind the view
    with pytest.raises(ValueError, match="layout"):
        InferencePlan(kv_layout="rows")


def test_token_layout_writes_unit_k_and_v_straight_into_the_cache():
    """The fused form (token layout): the cached k is unit-norm and v is the projection, as the unfused path
    caches them, and the block output equals the head-layout block's."""
    import model.kv_cache as kv_mod
    s = spec.var_spec(2, name="kvf", width=64, heads=2, patch_nums=(1, 2, 3), vae=spec.TINY_VAE, num_classes=10)
    p = VARPipeline.from_spec(s, seed=1)
    blk = p.var.blocks[0]
    sched = DepthSchedule.full(s)
    outs, caches = [], []
    with torch.no_grad():
        x = torch.randn(4, 4, 64)
        cond = torch.randn(4, 64)
        for layout in ("head", "token"):
            cache = KVCache(s, sched, 2, torch.float32, "cpu", plan=InferencePlan(kv_layout=layout))
            cache.begin_scale(0)
            cache.filled[0] = 1                                   # one earlier token, as after scale 0
            cache.k[0][:, :, :1] = torch.nn.functional.normalize(torch.randn(4, 2, 1, 32), dim=-1)
            cache.v[0][:, :, :1] = 0.5
            if caches:
                cache.k[0][:, :, :1], cache.v[0][:, :, :1] = caches[0].k[0][:, :, :1], caches[0].v[0][:, :, :1]
            attend = cache.attend_fn(0)
            assert attend.fuses_qkv() == (layout == "token")
            outs.append(blk(x.clone(), cond, attend))     # inference overwrites its input
            caches.append(cache)
    assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    k_tok = caches[1].k[0][:, :, 1:5]
    assert torch.allclose(k_tok.norm(dim=-1), torch.ones(4, 2, 4), atol=1e-5)
    assert torch.allclose(caches[0].k[0][:, :, :5], caches[1].k[0][:, :, :5], atol=1e-6)
    assert torch.allclose(caches[0].v[0][:, :, :5], caches[1].v[0][:, :, :5], atol=1e-6)
    assert caches[1].filled[0] == 5 and caches[1].k[0].stride()[1:] == (32, 64, 1)
    kv_mod.CachedAttend(caches[1], 0)         # the class is public: the pipeline's graphs hold instances


def test_cached_attention_one_key_is_the_value():
    """One key: softmax over one score is 1, the output is that key's value (no kernel), and equals SDPA."""
    import torch.nn.functional as F
    import model.kv_cache as kv_mod
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 1, 16, generator=g) for _ in range(3))
    plain = InferencePlan.plain()
    one = kv_mod.cached_attention(q, k, v, 1.0, plain)
    assert torch.equal(one, v)
    assert torch.allclose(one, F.scaled_dot_product_attention(q, k, v, scale=1.0), atol=1e-6)
    q4 = torch.randn(3, 2, 4, 16, generator=g)
    assert torch.allclose(kv_mod.cached_attention(q4, k, v, 0.3, plain), F.scaled_dot_product_attention(q4, k, v, scale=0.3),
                          atol=1e-6)
