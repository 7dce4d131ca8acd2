"""The transformer's state dict equals the official layout (VAR_REFERENCE §5.1-5.2), built on the meta device."""
import pytest
import torch

from model import spec
from model.var import VAR

OFFICIAL_PARAMS = {"var-d16": 310_283_520, "var-d20": 600_917_136, "var-d24": 1_033_399_360,
                   "var-d30": 2_010_020_356, "var-d36": 2_353_893_904}
OFFICIAL_KEYS = {"var-d16": 220, "var-d20": 272, "var-d24": 324, "var-d30": 402, "var-d36": 446}


def meta_var(name):
    with torch.device("meta"):
        return VAR(spec.SPECS[name])


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_official_key_count_and_params(name):
    var = meta_var(name)
    assert len(var.state_dict()) == OFFICIAL_KEYS[name]
    assert sum(p.numel() for p in var.parameters()) == OFFICIAL_PARAMS[name]


def test_d16_shapes_match_reference_table():
    sd = meta_var("var-d16").state_dict()
    expect = {
        "pos_start": (1, 1, 1024), "pos_1LC": (1, 680, 1024), "lvl_1L": (1, 680),
        "attn_bias_for_masking": (1, 1, 680, 680), "word_embed.weight": (1024, 32), "word_embed.bias": (1024,),
        "class_emb.weight": (1001, 1024), "lvl_embed.weight": (10, 1024),
        "blocks.0.attn.scale_mul_1H11": (1, 16, 1, 1), "blocks.0.attn.q_bias": (1024,),
        "blocks.0.attn.v_bias": (1024,), "blocks.0.attn.zero_k_bias": (1024,),
        "blocks.15.attn.mat_qkv.weight": (3072, 1024), "blocks.3.attn.proj.weight": (1024, 1024),
        "blocks.3.attn.proj.bias": (1024,), "blocks.3.ffn.fc1.weight": (4096, 1024),
        "blocks.3.ffn.fc1.bias": (4096,), "blocks.3.ffn.fc2.weight": (1024, 4096), "blocks.3.ffn.fc2.bias": (1024,),
        "blocks.3.ada_lin.1.weight": (6144, 1024), "blocks.3.ada_lin.1.bias": (6144,),
        "head_nm.ada_lin.1.weight": (2048, 1024), "head_nm.ada_lin.1.bias": (2048,),
        "head.weight": (4096, 1024), "head.bias": (4096,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert sd["lvl_1L"].dtype == torch.int64
    assert "blocks.0.attn.mat_qkv.bias" not in sd


def test_d36_shared_adaln_layout():
    sd = meta_var("var-d36").state_dict()
    assert tuple(sd["blocks.7.ada_gss"].shape) == (1, 1, 6, 2304)
    assert tuple(sd["shared_ada_lin.1.weight"].shape) == (6 * 2304, 2304)
    assert tuple(sd["pos_1LC"].shape) == (1, 2240, 2304)
    assert not any(k.startswith("blocks.0.ada_lin") for k in sd)


def test_random_init_matches_reference_statistics():
    torch.manual_seed(0)
    s = spec.var_spec(4, width=256, heads=4, patch_nums=(1, 2, 3))
    var = VAR(s)
    std = s.init_std
    assert abs(var.class_emb.weight.std().item() - std) < 0.1 * std
    assert abs(var.head.weight.std().item() - std * 0.02) < 0.1 * std * 0.02
    assert abs(var.blocks[0].attn.proj.weight.std().item() - std / (2 * 4) ** 0.5) < 0.1 * std
    w = var.blocks[0].ada_lin[1].weight
    assert w[: 2 * 256].std().item() < 1e-5 * std * 2
    assert abs(w[2 * 256:].std().item() - 0.5 * std) < 0.1 * std
    assert torch.allclose(var.blocks[0].attn.scale_mul_1H11, torch.full((1, 4, 1, 1), 1.3862944))
    assert all(torch.isfinite(p).all() for p in var.parameters())
