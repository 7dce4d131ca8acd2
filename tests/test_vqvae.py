"""VQ-VAE: official key set / shapes / parameter count, Phi selection, and the token <-> latent round trips."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from model.spec import PATCH_NUMS_256, TINY_VAE, VQVAESpec
from model.vqvae import VQVAE, phi_index_map

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "VAR_REFERENCE.md"
TINY_PN = (1, 2, 3, 4)  # var-tiny: 16x16 images, 4x4 latent


@pytest.fixture(scope="module")
def official_meta() -> VQVAE:
    with torch.device("meta"):
        return VQVAE(VQVAESpec(), PATCH_NUMS_256)


@pytest.fixture()
def tiny() -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(TINY_VAE, TINY_PN).eval()


def _rand_idx(vae: VQVAE, B: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(vae.vspec.vocab_size, (B, pn * pn), generator=g) for pn in vae.patch_nums]


def _images(B: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, size, size, generator=g) * 2 - 1


# ---- official layout ------------------------------------------------------------------------------------------
def test_official_keys_count_and_params(official_meta: VQVAE) -> None:
    sd = official_meta.state_dict()
    assert len(sd) == 324
    assert sum(p.numel() for p in official_meta.parameters()) == 108_948_355
    parts = {n: sum(p.numel() for p in getattr(official_meta, n).parameters())
             for n in ("encoder", "decoder", "quantize")}
    assert parts == {"encoder": 44_107_872, "decoder": 64_653_923, "quantize": 168_064}
    hard = {
        "encoder.conv_in.weight": (160, 3, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (320, 160, 1, 1),
        "encoder.down.4.attn.1.qkv.weight": (1920, 640, 1, 1),
        "encoder.down.3.downsample.conv.weight": (320, 320, 3, 3),
        "encoder.conv_out.weight": (32, 640, 3, 3),
        "decoder.conv_in.weight": (640, 32, 3, 3),
        "decoder.up.1.block.0.conv1.weight": (160, 320, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (320, 640, 1, 1),
        "decoder.up.4.attn.2.proj_out.weight": (640, 640, 1, 1),
        "decoder.up.4.upsample.conv.weight": (640, 640, 3, 3),
        "decoder.conv_out.weight": (3, 160, 3, 3),
        "quantize.ema_vocab_hit_SV": (10, 4096),
        "quantize.quant_resi.qresi_ls.3.weight": (32, 32, 3, 3),
        "quantize.embedding.weight": (4096, 32),
        "post_quant_conv.bias": (32,),
    }
    assert {k: tuple(sd[k].shape) for k in hard} == hard
    assert "decoder.up.0.upsample.conv.weight" not in sd and "encoder.down.4.downsample.conv.weight" not in sd


def _appendix_b() -> dict[str, tuple[int, ...]]:
    text = REFERENCE.read_text()
    section = text[text.index("## Appendix B"):]
    rows = re.findall(r"^\| ([\w.]+) \| \(([\d, ]+)\) \|$", section, re.M)
    return {k: tuple(int(x) for x in s.replace(" ", "").split(",") if x) for k, s in rows}


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/VAR_REFERENCE.md not present")
def test_official_keys_match_appendix_b(official_meta: VQVAE) -> None:
    ref = _appendix_b()
    assert len(ref) == 324
    got = {k: tuple(v.shape) for k, v in official_meta.state_dict().items()}
    assert got == ref
    assert list(got) == list(ref)  # same state_dict order too


def test_load_keeps_ema_for_other_scale_count() -> None:
    a = VQVAE(TINY_VAE, TINY_PN)
    b = VQVAE(TINY_VAE, (1, 2, 4))
    a.quantize.ema_vocab_hit_SV.fill_(1.0)
    b.load_state_dict(a.state_dict(), strict=True)  # ema (4, V) vs (3, V): replaced, the rest loads strictly
    assert torch.equal(b.quantize.ema_vocab_hit_SV, torch.zeros(3, TINY_VAE.vocab_size))
    assert torch.equal(b.quantize.embedding.weight, a.quantize.embedding.weight)


def test_meta_to_empty_then_load_reproduces_model() -> None:
    """The from_pretrained path: build on meta, materialise, load strictly -> the same decoder output."""
    torch.manual_seed(0)
    ref = VQVAE(TINY_VAE, TINY_PN).eval()
    with torch.device("meta"):
        vae = VQVAE(TINY_VAE, TINY_PN)
    vae = vae.to_empty(device="cpu")
    vae.load_state_dict(ref.state_dict(), strict=True)
    idx = _rand_idx(ref, 2)
    assert torch.equal(vae.eval().idx_to_img(idx), ref.idx_to_img(idx))


# ---- Phi selection --------------------------------------------------------------------------------------------
def test_phi_index_map() -> None:
    assert phi_index_map(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_index_map(14, 4) == (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3)
    assert phi_index_map(1, 4) == (3,)
    assert phi_index_map(3, 1) == (0, 0, 0)
    assert phi_index_map(6, 6) == tuple(range(6))  # non-shared: one Phi per scale


def test_phi_is_half_residual() -> None:
    vae = VQVAE(TINY_VAE, TINY_PN)
    phi = vae.quantize.phi(0)
    h = torch.randn(2, TINY_VAE.z_channels, 4, 4)
    conv = torch.nn.functional.conv2d(h, phi.weight, phi.bias, padding=1)
    torch.testing.assert_close(phi(h), 0.5 * h + 0.5 * conv)


# ---- tiny model: shapes, ranges, round trips ------------------------------------------------------------------
def test_random_init_finite() -> None:
    torch.manual_seed(0)
    vae = VQVAE(TINY_VAE, TINY_PN)
    for name, t in vae.state_dict().items():
        assert torch.isfinite(t).all(), name
    assert vae.quantize.embedding.weight.std() > 0.1  # not a degenerate codebook


def test_img_to_idx_shapes(tiny: VQVAE) -> None:
    idx = tiny.img_to_idx(_images(3, tiny.image_size))
    assert [tuple(t.shape) for t in idx] == [(3, pn * pn) for pn in TINY_PN]
    assert all(t.dtype == torch.int64 for t in idx)
    assert all(int(t.min()) >= 0 and int(t.max()) < TINY_VAE.vocab_size for t in idx)
    with pytest.raises(ValueError):
        tiny.img_to_idx(_images(1, 8))


def test_encode_fhat_equals_idx_to_fhat(tiny: VQVAE) -> None:
    f = tiny.encode(_images(2, tiny.image_size)).detach()
    idx, f_hat = tiny.quantize.f_to_idx(f, return_fhat=True)
    torch.testing.assert_close(tiny.quantize.idx_to_fhat(idx), f_hat, rtol=1e-5, atol=1e-5)


def test_idx_to_img_range(tiny: VQVAE) -> None:
    img = tiny.idx_to_img(_rand_idx(tiny, 2))
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    assert img.std() > 0  # not a constant image


def test_embed_idx_layout_single_scale_recovers_indices() -> None:
    """With Phi off and one scale, quantising an embedded index map must return the same indices (row-major)."""
    from dataclasses import replace

    vae = VQVAE(replace(TINY_VAE, quant_resi=0.0), (4,))
    idx = _rand_idx(vae, 2, seed=3)
    f = vae.quantize.embed_idx(idx[0], 4)
    assert f.shape == (2, TINY_VAE.z_channels, 4, 4)
    assert torch.equal(f[1, :, 2, 3], vae.quantize.embedding.weight[idx[0][1, 2 * 4 + 3]])
    assert torch.equal(vae.quantize.f_to_idx(f.detach())[0], idx[0])


def test_next_input_loop_matches_teacher_forcing(tiny: VQVAE) -> None:
    q = tiny.quantize
    idx = _rand_idx(tiny, 2, seed=1)
    with torch.no_grad():
        var_in = q.idx_to_var_input(idx)
        L = sum(pn * pn for pn in TINY_PN)
        assert var_in.shape == (2, L - 1, TINY_VAE.z_channels) and var_in.dtype == torch.float32
        f_hat = torch.zeros(2, TINY_VAE.z_channels, TINY_PN[-1], TINY_PN[-1])
        nexts = []
        for si, pn in enumerate(TINY_PN):
            f_hat, nxt = q.next_input(si, f_hat, q.embed_idx(idx[si], pn))
            assert (nxt is None) == (si == len(TINY_PN) - 1)
            if nxt is not None:
                assert nxt.shape == (2, TINY_PN[si + 1] ** 2, TINY_VAE.z_channels)
                nexts.append(nxt)
        torch.testing.assert_close(f_hat, q.idx_to_fhat(idx), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.cat(nexts, 1), var_in, rtol=1e-6, atol=1e-6)
        assert f_hat.dtype == torch.float32


def test_next_input_float32_with_bf16_weights(tiny: VQVAE) -> None:
    q = tiny.quantize.to(torch.bfloat16)
    idx = _rand_idx(tiny, 1)
    f_hat = torch.zeros(1, TINY_VAE.z_channels, 4, 4)
    f_hat, nxt = q.next_input(0, f_hat, q.embed_idx(idx[0], 1))
    assert f_hat.dtype == torch.float32 and nxt.dtype == torch.float32


# ---- training path --------------------------------------------------------------------------------------------
def test_training_forward_loss_and_grads() -> None:
    torch.manual_seed(0)
    vae = VQVAE(TINY_VAE, TINY_PN).train()
    img = _images(4, vae.image_size)
    recon, vq_loss, info = vae(img)
    assert recon.shape == img.shape and vq_loss.dim() == 0 and torch.isfinite(vq_loss)
    assert info["usage_S"].shape == (4,) and info["perplexity_S"].shape == (4,)
    assert (info["perplexity_S"] >= 1).all() and (info["usage_S"] > 0).all()
    (torch.nn.functional.mse_loss(recon, img) + vq_loss).backward()
    for name in ("encoder.conv_in.weight", "quantize.embedding.weight", "decoder.conv_in.weight",
                 "quantize.quant_resi.qresi_ls.0.weight", "quant_conv.weight"):
        g = dict(vae.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    ema = vae.quantize.ema_vocab_hit_SV
    assert torch.allclose(ema.sum(1), torch.tensor([4.0 * pn * pn for pn in TINY_PN]))  # first step: copy of hits
    vae.eval()
    before = ema.clone()
    vae(img)
    assert torch.equal(vae.quantize.ema_vocab_hit_SV, before)  # eval does not touch the EMA


def test_straight_through_value_equals_quantised_latent() -> None:
    torch.manual_seed(0)
    vae = VQVAE(TINY_VAE, TINY_PN).eval()
    f = vae.encode(_images(2, vae.image_size)).detach()
    f_st, _, _ = vae.quantize(f)
    _, f_hat = vae.quantize.f_to_idx(f, return_fhat=True)
    torch.testing.assert_close(f_st, f_hat, rtol=1e-5, atol=1e-5)


def test_restart_dead_codes_changes_only_dead_entries() -> None:
    torch.manual_seed(0)
    vae = VQVAE(TINY_VAE, TINY_PN).train()
    img = _images(2, vae.image_size)
    with torch.no_grad():
        vae(img)
    usage_V = vae.quantize.ema_vocab_hit_SV.sum(0)
    dead = usage_V < 1e-3
    assert dead.any() and (~dead).any()
    before = vae.quantize.embedding.weight.detach().clone()
    z = vae.encode(img).detach()
    n = vae.restart_dead_codes(z, generator=torch.Generator().manual_seed(0))
    after = vae.quantize.embedding.weight.detach()
    assert n == int(dead.sum())
    assert torch.equal(after[~dead], before[~dead])
    assert not torch.isclose(after[dead], before[dead]).all(dim=1).any()
    rows = z.permute(0, 2, 3, 1).reshape(-1, TINY_VAE.z_channels)
    assert all((rows == r).all(1).any() for r in after[dead])  # each restarted entry is an encoder output
    assert (vae.quantize.ema_vocab_hit_SV.sum(0) >= 1e-3).all()


def test_place_leaves_the_encoder_behind_until_it_encodes():
    """Generation never encodes: ``place`` moves the quantizer and decoder only, and the encoder follows the
    images on the first ``encode`` there (var-d30: 168 MiB that a GPU does not hold through generation)."""
    from model import spec as spec_mod
    from model.vqvae import VQVAE
    vae = VQVAE(spec_mod.TINY_VAE, (1, 2, 3, 4)).place("meta")
    assert vae.decoder.conv_in.weight.is_meta and vae.post_quant_conv.weight.is_meta
    assert vae.quantize.embedding.weight.is_meta
    assert not any(p.is_meta for m in (vae.encoder, vae.quant_conv) for p in m.parameters())
    f = vae.encode(torch.zeros(2, 3, vae.image_size, vae.image_size, device="meta"))
    assert f.is_meta and all(p.is_meta for p in vae.encoder.parameters()) and vae.quant_conv.weight.is_meta
