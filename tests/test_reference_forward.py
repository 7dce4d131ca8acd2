"""An independent, naive transformer forward written straight from VAR_REFERENCE §1.3-§2 (additive block-causal
mask buffer, explicit softmax attention, modulation split γ1 γ2 s1 s2 b1 b2) reading the state dict by key name.
Our module (prefix attention, fused kernels) must give the same logits."""
import math

import torch
import torch.nn.functional as F

from model import spec
from model.pipeline import VARPipeline

SPEC = spec.var_spec(3, name="ref", width=64, heads=2, patch_nums=(1, 2, 3), vae=spec.TINY_VAE, num_classes=5,
                     init_adaln_gamma=1.0, init_head=1.0)


def naive_logits(sd, s, label_B, x_BLCv):
    C, H, L = s.width, s.heads, s.L
    ln = lambda x: F.layer_norm(x, (C,), eps=1e-6)  # noqa: E731
    lin = lambda x, p: x @ sd[p + ".weight"].T + sd[p + ".bias"]  # noqa: E731
    cond = sd["class_emb.weight"][label_B]
    x = torch.cat([cond[:, None] + sd["pos_start"], lin(x_BLCv, "word_embed")], 1)
    x = x + sd["lvl_embed.weight"][sd["lvl_1L"][0]][None] + sd["pos_1LC"]
    mask = sd["attn_bias_for_masking"][0, 0]
    for i in range(s.depth):
        p = f"blocks.{i}."
        ada = lin(F.silu(cond), p + "ada_lin.1").view(-1, 1, 6, C)
        g1, g2, s1, s2, b1, b2 = [ada[:, :, j] for j in range(6)]
        h = ln(x) * (1 + s1) + b1
        bias = torch.cat([sd[p + "attn.q_bias"], sd[p + "attn.zero_k_bias"], sd[p + "attn.v_bias"]])
        qkv = (h @ sd[p + "attn.mat_qkv.weight"].T + bias).view(x.shape[0], L, 3, H, C // H)
        q, k, v = [qkv[:, :, j].transpose(1, 2) for j in range(3)]
        mul = torch.exp(torch.clamp(sd[p + "attn.scale_mul_1H11"], max=math.log(100)))
        q = q / q.norm(dim=-1, keepdim=True) * mul
        k = k / k.norm(dim=-1, keepdim=True)
        att = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(x.shape[0], L, C)
        x = x + lin(o, p + "attn.proj") * g1
        h = ln(x) * (1 + s2) + b2
        x = x + lin(F.gelu(lin(h, p + "ffn.fc1"), approximate="tanh"), p + "ffn.fc2") * g2
    sc, sh = lin(F.silu(cond), "head_nm.ada_lin.1").view(-1, 1, 2, C).unbind(2)
    return lin(ln(x) * (1 + sc) + sh, "head")


def test_module_matches_naive_reference_forward():
    pipe = VARPipeline.from_spec(SPEC, seed=0)
    with torch.no_grad():
        for blk in pipe.var.blocks:       # non-trivial per-head scales
            blk.attn.scale_mul_1H11.uniform_(0.5, 5.0)
            blk.attn.q_bias.normal_()
            blk.attn.v_bias.normal_()
    labels = torch.tensor([0, 3, 4])
    idx = pipe.generate(labels, seed=0, decode=False).indices
    x = pipe.vae.quantize.idx_to_var_input(idx)
    sd = {k: v.double() if v.is_floating_point() else v for k, v in pipe.var.state_dict().items()}
    ref = naive_logits(sd, SPEC, labels, x.double())
    ours = pipe.teacher_forcing(labels, idx)
    assert ((ours.double() - ref).norm() / ref.norm()).item() < 1e-5
