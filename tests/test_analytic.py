"""The analytic cost model reproduces the reference numbers and agrees with real modules and its own invariants."""
import pytest
import torch

from model import spec
from model.schedule import DepthSchedule
from varbench.measuring import analytic

D30 = spec.SPECS["var-d30"]
FULL30 = DepthSchedule.full(D30)


@pytest.mark.parametrize("name,want", [("var-d16", 310_283_520), ("var-d20", 600_917_136),
                                       ("var-d24", 1_033_399_360), ("var-d30", 2_010_020_356),
                                       ("var-d36", 2_353_893_904)])
def test_params_equal_official_counts(name, want):
    assert analytic.params(spec.SPECS[name]) == want


def test_vae_params_equal_official_count():
    assert analytic.vae_params(spec.VQVAESpec()) == 108_948_355


def test_params_equal_real_modules(tiny_spec):
    """Formula == numel of the real VAR and VQ-VAE modules (tiny spec and a shared-AdaLN variant)."""
    pipeline = pytest.importorskip("model.pipeline")
    shared = spec.var_spec(3, name="t-shared", width=32, heads=2, patch_nums=(1, 2, 3), vae=spec.TINY_VAE,
                           num_classes=5, shared_aln=True)
    for s in (tiny_spec, shared):
        pipe = pipeline.VARPipeline.from_spec(s, seed=0)
        assert analytic.params(s) == sum(p.numel() for p in pipe.var.parameters()), s.name
        assert analytic.vae_params(s.vae, s.num_scales) == sum(p.numel() for p in pipe.vae.parameters()), s.name
        enc = sum(p.numel() for m in (pipe.vae.encoder, pipe.vae.quant_conv) for p in m.parameters())
        assert analytic.vae_encoder_params(s.vae) == enc, s.name


def test_vae_encoder_params_equal_official_modules():
    from model.vqvae import VQVAE
    with torch.device("meta"):
        vae = VQVAE(spec.VQVAESpec(), (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    enc = sum(p.numel() for m in (vae.encoder, vae.quant_conv) for p in m.parameters())
    assert analytic.vae_encoder_params(spec.VQVAESpec()) == enc == 44_117_120


def test_d30_full_kv_per_image_bf16():
    assert analytic.kv_peak_bytes(D30, FULL30, batch=1, dtype=torch.bfloat16) == 313_344_000
    # official cache: K in fp32, V in fp16 -> 1.5x the bf16 bytes; batch 64 = 28,688 MiB (ANCHORS)
    official = analytic.kv_peak_bytes(D30, FULL30, batch=64, dtype=torch.float16, k_dtype=torch.float32)
    assert round(official / 2**20) == 28_688


def test_d30_variant_kv_plan_matches_interfaces_doc():
    """docs/interfaces.md: 30x91 tokens during scales 0..5, 16x680 from scale 6; keep_skipped 14x91 + 16x680."""
    sch = DepthSchedule.variant(D30, 16, 6)
    per_tok = analytic.kv_bytes_per_token(D30, 1, torch.bfloat16)
    freed = analytic.kv_bytes_per_scale(D30, sch)
    assert freed == [30 * 91 * per_tok] * 6 + [16 * 680 * per_tok] * 4
    kept = analytic.kv_bytes_per_scale(D30, sch, keep_skipped=True)
    assert kept == [(14 * 91 + 16 * 680) * per_tok] * 10
    assert analytic.kv_bytes_final(D30, sch) == 16 * 680 * per_tok


@pytest.mark.parametrize("depth,kept,freed", [(16, 40.4, 46.7), (8, 63.5, 73.3), (4, None, 86.6), (2, 80.8, 86.6)])
def test_kv_reduction_matches_paper(depth, kept, freed):
    full = analytic.kv_peak_bytes(D30, FULL30)
    sch = DepthSchedule.variant(D30, depth, 6)
    if kept is not None:
        assert 100 * (1 - analytic.kv_peak_bytes(D30, sch, keep_skipped=True) / full) == pytest.approx(kept, abs=0.1)
    assert 100 * (1 - analytic.kv_peak_bytes(D30, sch) / full) == pytest.approx(freed, abs=0.1)


def test_d30_flops_per_image():
    assert analytic.flops(D30, FULL30) == pytest.approx(3.76e12, rel=0.02)
    assert analytic.flops(D30, FULL30, cfg=False) * 2 == pytest.approx(analytic.flops(D30, FULL30))
    assert analytic.flops(D30, FULL30, batch=4) == pytest.approx(4 * analytic.flops(D30, FULL30))


@pytest.mark.parametrize("depth,speedup", [(16, 1.68), (8, 2.74), (4, 4.00), (2, 5.20)])
def test_flop_speedups_match_anchors(depth, speedup):
    ratio = analytic.flops(D30, FULL30) / analytic.flops(D30, DepthSchedule.variant(D30, depth, 6))
    assert ratio == pytest.approx(speedup, abs=0.05)


def test_flops_attention_term_is_per_block_cache():
    """A block skipped at a scale neither computes there nor is attended to later: compare two explicit
    schedules that run the same number of block-scales but differ in which tokens a block has seen."""
    s = spec.var_spec(2, name="t2", width=32, heads=2, patch_nums=(1, 2, 3), vae=spec.TINY_VAE, num_classes=5)
    a = DepthSchedule([(0, 1), (0,), (0, 1)])      # block 1 skips scale 1: at scale 2 it sees 1 + 9 tokens
    b = DepthSchedule([(0, 1), (0, 1), (0,)])      # block 1 skips scale 2
    C = s.width
    fa, fb = analytic.flops_per_scale(s, a, cfg=False), analytic.flops_per_scale(s, b, cfg=False)
    # scale 2 of `a`: block 0 sees 14 tokens, block 1 sees 10; attention = 4·C·9·(14 + 10)
    lin = 2.0 * (4 * C * C + 2 * C * s.mlp_hidden)
    head, we = 2.0 * C * s.vae.vocab_size, 2.0 * s.vae.z_channels * C
    assert fa[2] == pytest.approx(2 * lin * 9 + 4 * C * 9 * (14 + 10) + (head + we) * 9)
    assert fb[2] == pytest.approx(lin * 9 + 4 * C * 9 * 14 + (head + we) * 9)


def test_ada_per_scale_only_adds():
    per_scale = analytic.flops(D30, FULL30, ada_per_scale=True)
    hoisted = analytic.flops(D30, FULL30)
    C = D30.width
    # 9 more scales of every block's ada_lin (12C²) and the head's (4C²), x2 for CFG
    assert per_scale - hoisted == pytest.approx(2 * 9 * (30 * 12 * C * C + 4 * C * C))


def test_summary_rows_fields_and_monotonic():
    rows = analytic.summary_rows(D30, [2, 4, 8, 16, 30], switch=6)
    assert [r["depth"] for r in rows] == [2, 4, 8, 16, 30]
    assert rows[-1]["kv_reduction"] == 0 and rows[-1]["flops_speedup"] == pytest.approx(1.0)
    assert rows[-1]["params"] == analytic.params(D30)
    assert rows[0]["layers"] == [0, 29]
    speedups = [r["flops_speedup"] for r in rows]
    assert speedups == sorted(speedups, reverse=True)
    for r in rows:
        assert r["kv_bytes"] <= r["kv_bytes_kept"] <= analytic.kv_peak_bytes(D30)
        assert r["params_loaded"] == analytic.params(D30)   # the bridge zone still runs every block


def test_registry_row_matches_functions():
    for s in spec.SPECS.values():
        row = analytic.registry_row(s)
        assert row["params"] == analytic.params(s) and row["tokens"] == s.L
        assert row["kv_bytes_per_image"] == analytic.kv_peak_bytes(s)
