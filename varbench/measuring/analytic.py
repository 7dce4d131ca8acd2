"""Analytic cost model: pure functions of (spec, schedule, batch, dtype) — parameters, KV bytes, FLOPs.

Formulas follow VAR_REFERENCE §5.2 (parameters) and docs/interfaces.md (KV allocation plan). The KV model is an
independent re-derivation of ``model.kv_cache.KVCache``'s plan, so tests can hold the two against each other.
FLOPs count a multiply-add as 2; CFG (``cfg=True``) doubles every term (conditional + unconditional rows).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from model.plan import InferencePlan
from model.schedule import DepthSchedule
from model.spec import VARSpec, VQVAESpec

# ---------------------------------------------------------------------------------------------------- parameters


def block_params(spec: VARSpec) -> int:
    """One AdaLN block: qkv 3C², q/v bias 2C, scale_mul H, proj C²+C, fc1/fc2 2·C·Hm+Hm+C, ada_lin 6C²+6C.

    With shared AdaLN the per-block ada_lin is replaced by ada_gss (6C); the shared Linear is counted outside.
    """
    C, Hm = spec.width, spec.mlp_hidden
    attn = 3 * C * C + 2 * C + spec.heads + C * C + C
    ffn = C * Hm + Hm + Hm * C + C
    ada = 6 * C if spec.shared_aln else 6 * C * C + 6 * C
    return attn + ffn + ada


def outer_params(spec: VARSpec) -> int:
    """Everything outside the blocks: word_embed, class_emb, pos_start, pos_1LC, lvl_embed, head_nm, head
    (+ shared_ada_lin when AdaLN is shared). Buffers (lvl_1L, mask, zero_k_bias) are excluded."""
    C, V, Cvae = spec.width, spec.vae.vocab_size, spec.vae.z_channels
    word_embed = Cvae * C + C
    class_emb = (spec.num_classes + 1) * C
    pos = spec.first_l * C + spec.L * C
    lvl = spec.num_scales * C
    head_nm = 2 * C * C + 2 * C
    head = V * C + V
    shared = 6 * C * C + 6 * C if spec.shared_aln else 0
    return word_embed + class_emb + pos + lvl + head_nm + head + shared


def params(spec: VARSpec) -> int:
    """Parameters of the VAR transformer (VQ-VAE excluded), e.g. var-d30 = 2,010,020,356."""
    return spec.depth * block_params(spec) + outer_params(spec)


def active_params(spec: VARSpec, schedule: DepthSchedule) -> int:
    """Parameters a schedule touches: the blocks that run at some scale + everything outside the blocks."""
    return len(schedule.used_blocks()) * block_params(spec) + outer_params(spec)


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _resnet(cin: int, cout: int) -> int:
    shortcut = _conv(cin, cout, 1) if cin != cout else 0
    return 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3) + shortcut


def _attn(c: int) -> int:
    return 2 * c + _conv(c, 3 * c, 1) + _conv(c, c, 1)


def _vae_mid(vspec: VQVAESpec) -> int:
    c = vspec.ch * vspec.ch_mult[-1]
    return 2 * _resnet(c, c) + (_attn(c) if vspec.using_mid_sa else 0)


def vae_encoder_params(vspec: VQVAESpec) -> int:
    """The encoder side of the VQ-VAE (encoder + quant_conv): what generation never runs, so a pipeline leaves
    it off the GPU (``VQVAE.place``). Official vae_ch160v4096z32: 44,117,120 of 108,948,355 (168 MiB in float32)."""
    chs = [vspec.ch * m for m in vspec.ch_mult]
    last, z = len(chs) - 1, vspec.z_channels
    # conv_in, per level num_res_blocks resnets (+attn at the last level), downsample except last, mid, norm, out
    enc, cin = _conv(vspec.in_channels, vspec.ch, 3), vspec.ch
    for i, cout in enumerate(chs):
        for _ in range(vspec.num_res_blocks):
            enc += _resnet(cin, cout) + (_attn(cout) if vspec.using_sa and i == last else 0)
            cin = cout
        if i != last:
            enc += _conv(cout, cout, 3)
    return enc + _vae_mid(vspec) + 2 * chs[-1] + _conv(chs[-1], z, 3) + _conv(z, z, 3)


def vae_params(vspec: VQVAESpec, num_scales: int = 10) -> int:
    """VQ-VAE parameters from its layout (VAR_REFERENCE §4.2): official vae_ch160v4096z32 = 108,948,355.

    ``num_scales`` only matters when ``share_quant_resi == 0`` (one Phi per scale).
    """
    chs = [vspec.ch * m for m in vspec.ch_mult]
    last, z = len(chs) - 1, vspec.z_channels
    # decoder: conv_in, mid, levels from last to 0 with num_res_blocks+1 resnets, upsample except level 0
    dec, cin = _conv(z, chs[-1], 3) + _vae_mid(vspec), chs[-1]
    for i in reversed(range(len(chs))):
        for _ in range(vspec.num_res_blocks + 1):
            dec += _resnet(cin, chs[i]) + (_attn(chs[i]) if vspec.using_sa and i == last else 0)
            cin = chs[i]
        if i != 0:
            dec += _conv(cin, cin, 3)
    dec += 2 * chs[0] + _conv(chs[0], vspec.in_channels, 3)
    n_phi = {0: num_scales, 1: 1}.get(vspec.share_quant_resi, vspec.share_quant_resi)
    quant = vspec.vocab_size * z + n_phi * _conv(z, z, 3)
    return vae_encoder_params(vspec) + dec + quant + _conv(z, z, 3)


# ---------------------------------------------------------------------------------------------------- KV cache


def _schedule(spec: VARSpec, schedule: DepthSchedule | None) -> DepthSchedule:
    return (schedule or DepthSchedule.full(spec)).validate(spec)


def kv_segments(spec: VARSpec, schedule: DepthSchedule | None = None, keep_skipped: bool = False,
                cfg_until: int | None = None) -> list[tuple[int, int]]:
    """Scale ranges [start, end] between release scales (docs/interfaces.md). One segment if keep_skipped.
    ``cfg_until`` (guidance-skip) starts a segment there: the buffers shrink to one row per image."""
    sch = _schedule(spec, schedule)
    S = spec.num_scales
    used = sch.used_blocks()
    release = set() if keep_skipped else {sch.last_active(b) for b in used if sch.last_active(b) < S - 1}
    if not keep_skipped and cfg_until is not None and 0 < cfg_until < S:
        release.add(cfg_until - 1)
    ends = sorted(release) + [S - 1]
    return [(prev + 1, end) for prev, end in zip([-1] + ends[:-1], ends)]


def kv_bytes_per_token(spec: VARSpec, batch: int = 1, dtype: torch.dtype = torch.bfloat16,
                       k_dtype: torch.dtype | None = None, cfg: bool = True, plan: InferencePlan | None = None) -> int:
    """Bytes one block caches for one token position: rows (2·B with CFG) × width × (K bytes + V bytes); fp8 KV
    (``plan.kv_fp8``): one byte each."""
    rows = 2 * batch if cfg else batch
    if plan is not None and plan.kv_fp8:
        return rows * spec.width * 2
    k_size = (k_dtype or dtype).itemsize
    return rows * spec.width * (k_size + dtype.itemsize)


def _block_capacity(spec: VARSpec, active: tuple[int, ...], upto: int, window: tuple[int, int] | None) -> int:
    """Token slots one block is allocated for scales <= upto: all it processes, or its largest window."""
    if window is None:
        return sum(spec.tokens[si] for si in active if si <= upto)
    return max((sum(spec.tokens[s] for s in active if s <= si and (s < window[0] or s > si - window[1]))
                for si in active if si <= upto), default=0)


def kv_tokens_per_scale(spec: VARSpec, schedule: DepthSchedule | None = None,
                        keep_skipped: bool = False, cfg_until: int | None = None,
                        window: tuple[int, int] | None = None) -> list[int]:
    """Token-slots (summed over blocks) held during each scale, following the allocation plan."""
    sch = _schedule(spec, schedule)
    used = sch.used_blocks()
    held = [0] * spec.num_scales
    for start, end in kv_segments(spec, sch, keep_skipped, cfg_until):
        alive = used if keep_skipped else [b for b in used if sch.last_active(b) >= start]
        capacity = sum(_block_capacity(spec, sch.active_scales(b), end, window) for b in alive)
        for si in range(start, end + 1):
            held[si] = capacity
    return held


def kv_bytes_per_scale(spec: VARSpec, schedule: DepthSchedule | None = None, batch: int = 1,
                       dtype: torch.dtype = torch.bfloat16, keep_skipped: bool = False,
                       k_dtype: torch.dtype | None = None, cfg: bool = True,
                       plan: InferencePlan | None = None) -> list[int]:
    """KV bytes held during each scale (what ``KVCache.nbytes()`` reports after ``begin_scale(si)``). With
    ``plan.cfg_until`` the scales from there on hold one row per image (unless buffers are kept)."""
    cfg_until = plan.cfg_until if plan is not None and cfg else None
    full = kv_bytes_per_token(spec, batch, dtype, k_dtype, cfg, plan)
    half = kv_bytes_per_token(spec, batch, dtype, k_dtype, False, plan)
    tokens = kv_tokens_per_scale(spec, schedule, keep_skipped, cfg_until, plan.kv_window if plan else None)
    return [t * (half if cfg_until is not None and si >= cfg_until and not keep_skipped else full)
            for si, t in enumerate(tokens)]


def kv_peak_bytes(spec: VARSpec, schedule: DepthSchedule | None = None, batch: int = 1,
                  dtype: torch.dtype = torch.bfloat16, keep_skipped: bool = False,
                  k_dtype: torch.dtype | None = None, cfg: bool = True, plan: InferencePlan | None = None) -> int:
    """Peak KV bytes over the generation."""
    return max(kv_bytes_per_scale(spec, schedule, batch, dtype, keep_skipped, k_dtype, cfg, plan))


def kv_bytes_final(spec: VARSpec, schedule: DepthSchedule | None = None, batch: int = 1,
                   dtype: torch.dtype = torch.bfloat16, keep_skipped: bool = False,
                   k_dtype: torch.dtype | None = None, cfg: bool = True, plan: InferencePlan | None = None) -> int:
    """KV bytes held during the last scale (the cache's size when generation ends)."""
    return kv_bytes_per_scale(spec, schedule, batch, dtype, keep_skipped, k_dtype, cfg, plan)[-1]


def kv_keys_per_scale(spec: VARSpec, schedule: DepthSchedule | None = None,
                      plan: InferencePlan | None = None) -> list[int]:
    """The most keys one block attends to at each scale: its cached tokens once it has written the scale (with
    ``plan.kv_window``, those in the window); 0 at a scale that runs no block. What sizes per-block transients
    over the cache (the fp8 path's dequantised K/V copies)."""
    sch = _schedule(spec, schedule)
    window = plan.kv_window if plan is not None else None
    out = []
    for si, blocks in enumerate(sch.layers):
        out.append(max((sum(spec.tokens[s] for s in sch.active_scales(b) if s <= si
                            and (window is None or s < window[0] or s > si - window[1])) for b in blocks),
                       default=0))
    return out


# ---------------------------------------------------------------------------------------------------- FLOPs


def flops_per_scale(spec: VARSpec, schedule: DepthSchedule | None = None, batch: int = 1,
                    cfg: bool = True, ada_per_scale: bool = False, plan: InferencePlan | None = None) -> list[float]:
    """Forward FLOPs of the transformer per scale (VQ-VAE excluded), for ``batch`` images.

    Per token and active block: 2·(4C² + 2·C·Hm) = 24C² for mlp_ratio 4 (qkv, proj, fc1, fc2).
    Attention: 4·C per query-key pair (QKᵀ and AV); a block at scale si attends to the tokens it processed at
    scales <= si (skipped scales are not in its cache; with ``plan.kv_window`` only those in the window).
    Head: 2·C·V per token. word_embed: 2·Cvae·C per token at scales >= 1 (scale 0 is the class token).
    AdaLN: ada_lin maps the class condition, which is the same at every scale, so it runs once per sample:
    12C² per block (charged at the block's first active scale; one shared Linear if AdaLN is shared) and 4C² for
    head_nm (charged at scale 0). ``ada_per_scale=True`` charges them at every active scale instead, as the
    official loop recomputes them (+0.7% for var-d30). CFG doubles everything, on the scales below
    ``plan.cfg_until`` only when that is set (guidance-skip).
    """
    cfg_until = plan.cfg_until if plan is not None else None
    window = plan.kv_window if plan is not None else None
    done: list[list[int]] = [[] for _ in range(spec.depth)]   # scales each block has processed
    sch = _schedule(spec, schedule)
    C, Hm, V, Cvae = spec.width, spec.mlp_hidden, spec.vae.vocab_size, spec.vae.z_channels
    lin_per_tok = 2.0 * (4 * C * C + 2 * C * Hm)
    ada_block, ada_head = 12.0 * C * C, 4.0 * C * C
    seen = [0] * spec.depth                      # tokens each block has cached so far
    out = []
    for si, blocks in enumerate(sch.layers):
        n, first = spec.tokens[si], si == 0
        f = 0.0
        for b in blocks:
            charge_ada = ada_per_scale or seen[b] == 0
            seen[b] += n
            done[b].append(si)
            keys = seen[b] if window is None else sum(spec.tokens[s] for s in done[b]
                                                      if s < window[0] or s > si - window[1])
            f += lin_per_tok * n + 4.0 * C * n * keys
            f += ada_block if charge_ada and not spec.shared_aln else 0.0
        if spec.shared_aln and blocks and (ada_per_scale or first):
            f += ada_block
        f += 2.0 * C * V * n + (ada_head if ada_per_scale or first else 0.0)
        f += 2.0 * Cvae * C * n if si > 0 else 0.0
        guided = cfg and (cfg_until is None or si < cfg_until)
        out.append(f * batch * (2 if guided else 1))
    return out


def flops(spec: VARSpec, schedule: DepthSchedule | None = None, batch: int = 1, cfg: bool = True,
          ada_per_scale: bool = False, plan: InferencePlan | None = None) -> float:
    """Total forward FLOPs of one generation of ``batch`` images (var-d30 with CFG: 3.77 TFLOP per image)."""
    return float(sum(flops_per_scale(spec, schedule, batch, cfg, ada_per_scale, plan)))


# ---------------------------------------------------------------------------------------------------- tables


def registry_row(spec: VARSpec) -> dict[str, Any]:
    """One row of the model-zoo table (per image, bf16 KV, CFG on)."""
    return {
        "name": spec.name, "depth": spec.depth, "width": spec.width, "heads": spec.heads,
        "scales": spec.num_scales, "tokens": spec.L, "image_size": spec.image_size,
        "params": params(spec), "vae_params": vae_params(spec.vae, spec.num_scales),
        "kv_bytes_per_image": kv_peak_bytes(spec), "flops_per_image": flops(spec),
        "official": spec.official,
    }


def summary_rows(spec: VARSpec, depths: Sequence[int], switch: int = 6,
                 select: str = "isometric") -> list[dict[str, Any]]:
    """Rows of ``varbench models --model``: one VARiant(d, switch) per depth against the full network.

    ``params`` counts the blocks of the last scale's subnet + everything outside the blocks (the standalone
    model of that depth); ``params_loaded`` every block the schedule runs anywhere (what must sit in memory).
    kv_bytes is the peak per image with skipped blocks freed (bf16 K and V, CFG); kv_bytes_kept keeps them.
    """
    full = DepthSchedule.full(spec)
    kv_full, fl_full = kv_peak_bytes(spec, full), flops(spec, full)
    rows = []
    for d in depths:
        sch = DepthSchedule.variant(spec, d, switch, select)
        kv, kv_kept = kv_peak_bytes(spec, sch), kv_peak_bytes(spec, sch, keep_skipped=True)
        fl = flops(spec, sch)
        rows.append({
            "kind": "models", "model": spec.name, "depth": d, "switch": switch, "select": select,
            "layers": list(sch.layers[-1]), "schedule": sch.describe(),
            "params": len(sch.layers[-1]) * block_params(spec) + outer_params(spec),
            "params_loaded": active_params(spec, sch), "kv_bytes": kv, "kv_bytes_kept": kv_kept,
            "kv_reduction": 1.0 - kv / kv_full, "kv_reduction_kept": 1.0 - kv_kept / kv_full,
            "flops": fl, "flops_speedup": fl_full / fl,
        })
    return rows


# ---------------------------------------------------------------------------------------------------- code


def code_kv_bytes_per_scale(drafter: VARSpec, refiner: VARSpec, batch: int = 1, dtype: torch.dtype = torch.bfloat16,
                            keep_skipped: bool = False, k_dtype: torch.dtype | None = None, cfg: bool = True,
                            plan: InferencePlan | None = None) -> list[int]:
    """KV bytes per scale of collaborative decoding (``plan.refine_from`` = N): the drafter's cache below N, freed
    at the hand-over; from N the refiner's, allocated whole when its prefill starts."""
    N = plan.refine_from
    d = kv_bytes_per_scale(drafter, DepthSchedule.prefix(drafter, N), batch, dtype, keep_skipped, k_dtype, cfg, plan)
    r = kv_bytes_per_scale(refiner, None, batch, dtype, keep_skipped, k_dtype, cfg, plan)
    return [d[si] if si < N else r[si] for si in range(drafter.num_scales)]


def code_flops(drafter: VARSpec, refiner: VARSpec, batch: int = 1, cfg: bool = True,
               plan: InferencePlan | None = None) -> float:
    """Forward FLOPs of collaborative decoding: the drafter's scales below N, and the refiner over every scale
    (its prefill of the drafted scales runs the blocks, not the head: 2·C·V per token less there)."""
    N = plan.refine_from
    d = flops_per_scale(drafter, DepthSchedule.prefix(drafter, N), batch, cfg, plan=plan)[:N]
    r = flops_per_scale(refiner, None, batch, cfg, plan=plan)
    cfg_until = plan.cfg_until
    head = [2.0 * refiner.width * refiner.vae.vocab_size * refiner.tokens[si] * batch
            * (2 if cfg and (cfg_until is None or si < cfg_until) else 1) for si in range(N)]
    return float(sum(d) + sum(r) - sum(head))
