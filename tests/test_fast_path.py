"""The fast paths compute the same function: bf16 vs fp32, fused kernels, chunked sampling, CUDA graphs."""
import pytest
import torch
import torch.nn.functional as F

from model import kernels, spec
from model.plan import InferencePlan
from model.pipeline import VARPipeline
from model.schedule import DepthSchedule

SPEC = spec.var_spec(4, name="fast", width=128, heads=2, patch_nums=(1, 2, 3, 4), vae=spec.TINY_VAE,
                     num_classes=10, init_adaln_gamma=1.0, init_head=1.0)   # blocks that matter, not near-identity


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_unit_norm_equals_f_normalize():
    x = torch.randn(3, 4, 7, 64) * 5
    assert torch.allclose(kernels.unit_norm(x), F.normalize(x, dim=-1), atol=1e-6)
    assert torch.allclose(kernels.unit_norm(torch.zeros(2, 64)), torch.zeros(2, 64))


def test_bf16_teacher_forcing_close_to_fp32():
    p32 = VARPipeline.from_spec(SPEC, seed=0)
    p16 = VARPipeline.from_spec(SPEC, seed=0, dtype=torch.bfloat16)
    assert torch.equal(p16.var.head.weight.float(), p32.var.head.weight.bfloat16().float())
    out = p32.generate([1, 2, 3, 4], seed=0, decode=False)
    sched = DepthSchedule.variant(SPEC, 2, 2)
    for s in (None, sched):
        assert rel_err(p16.teacher_forcing([1, 2, 3, 4], out.indices, s),
                       p32.teacher_forcing([1, 2, 3, 4], out.indices, s)) <= 2e-2


def greedy_agreement(spec_, batch=2, device="cpu", fast=False):
    """Identical weights: the fp32 reference holds the bf16 values, so only the arithmetic differs. ``fast``: the
    bf16 side runs the GPU fast path (compiled pieces, CUDA graphs, epilogue GELU, split head)."""
    p32 = VARPipeline.from_spec(spec_, seed=0, device=device)
    p16 = VARPipeline.from_spec(spec_, seed=0, device=device, dtype=torch.bfloat16).compile(fast)
    p32.var.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in p16.var.state_dict().items()})
    labels = list(range(batch))
    a = torch.cat(p32.generate(labels, top_k=1, decode=False).indices, 1)
    b = torch.cat(p16.generate(labels, top_k=1, decode=False, cuda_graphs=fast).indices, 1)
    return (a == b).float().mean().item()


# the greedy guard's own weights: AdaLN gamma and head at 1, so every block moves the tokens (with the official 1e-5
# gamma, zeroing a block's attention kept agreement at 1.0; tests/test_guards_see_blocks.py checks this one)
GREEDY_SPEC = spec.var_spec(8, width=128, heads=2, patch_nums=(1, 2, 3, 4, 5, 6), num_classes=10, init_adaln_gamma=1.0,
                           init_head=1.0)


def test_bf16_greedy_tokens_agree_small():
    assert greedy_agreement(GREEDY_SPEC, batch=8) >= 0.99      # 8 images: at 2, one block's attention hid in 1% of the tokens


@pytest.mark.slow
def test_bf16_greedy_tokens_agree_var_d16():
    assert greedy_agreement(spec.SPECS["var-d16"], batch=1) >= 0.99


# var-d16 keeps the official initialisation: it guards the full-size kernels' precision (tiles, split head), not
# the blocks (GREEDY_SPEC and SPEC do that). Greedy tokens cannot see blocks at this width: on the CPU, with AdaLN
# gamma and head at 0.3, zeroing block 7's attention left all greedy tokens unchanged, and at 1.0 bf16 itself
# agrees with fp32 on only 96% of the tokens.
@pytest.mark.gpu
def test_fast_path_greedy_tokens_agree_var_d16_gpu():
    assert greedy_agreement(spec.SPECS["var-d16"], batch=2, device="cuda", fast=True) >= 0.99


def test_chunked_sampling_is_exact():
    """With the chunk limit forcing several batch chunks, teacher forcing still equals cached generation."""
    p = VARPipeline.from_spec(SPEC, seed=0).set_plan(sample_chunk_logits=64 * 9)
    labels = torch.arange(5)
    out = p.generate(labels, top_k=20, top_p=0.9, seed=2, return_logits=True, decode=False)
    tf = p.teacher_forcing(labels, out.indices)
    assert rel_err(torch.cat(out.logits, 1), tf) <= 1e-5


@pytest.mark.gpu
def test_cuda_graphs_equal_eager():
    p = VARPipeline.from_spec(SPEC, device="cuda", seed=0)
    for sched in (None, DepthSchedule.variant(SPEC, 2, 2)):
        a = p.generate([1, 2], seed=3, schedule=sched, return_logits=True)
        b = p.generate([1, 2], seed=3, schedule=sched, return_logits=True, cuda_graphs=True)
        assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
        assert rel_err(torch.cat(b.logits, 1), torch.cat(a.logits, 1)) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["variant:depth=2,switch=2", "guidance-skip:from_scale=2",
                                    "scale-window:anchors=1,recent=2", "kv-fp8+variant:depth=2,switch=1"])
@pytest.mark.parametrize("keep_skipped", [False, True])
def test_graphed_lean_path_equals_eager_lean_path(method, dtype, keep_skipped):
    """Real CUDA graphs that free skipped blocks inside their captures: the eager step's tokens (same dtype,
    identical), and at every scale the eager cache's bytes, which are the analytic model's."""
    from model import methods
    from varbench.measuring import analytic
    p = VARPipeline.from_spec(SPEC, device="cuda", seed=0, dtype=dtype)
    conf = methods.parse(method, SPEC)
    plan, sched = p.plan.replace(**conf.plan_changes()), conf.schedule()
    runs = {}
    for graphs in (False, True, True):                        # the second graphed call replays the capture
        seen = []
        out = p.generate(list(range(5)), seed=11, schedule=sched, plan=plan.replace(cuda_graphs=graphs),
                         keep_skipped=keep_skipped, decode=False,
                         on_scale_end=lambda si, c: seen.append(c.nbytes()))
        runs.setdefault(graphs, []).append((out.indices, seen))
    (eager_idx, eager_bytes), = runs[False]
    want = analytic.kv_bytes_per_scale(SPEC, sched, 5, dtype, keep_skipped, plan=plan)
    assert eager_bytes == want
    for idx, seen in runs[True]:
        assert all(torch.equal(x, y) for x, y in zip(eager_idx, idx))
        assert seen == want


@pytest.mark.gpu
def test_compiled_kernels_equal_eager():
    p = VARPipeline.from_spec(SPEC, device="cuda", seed=0, dtype=torch.bfloat16)
    out = p.generate([1, 2], seed=0, decode=False)
    ref = p.teacher_forcing([1, 2], out.indices)
    fused = p.set_plan(compiled=True).teacher_forcing([1, 2], out.indices)
    assert rel_err(fused, ref) <= 2e-2


def test_chunked_mlp_is_exact():
    """At inference a large MLP input runs in row chunks (bounded transient memory): same numbers as one pass."""
    import model.var as var_mod
    from model import spec as specs

    torch.manual_seed(0)
    ffn = var_mod.FFN(specs.get("var-tiny")).eval()
    x = torch.randn(3, 7, ffn.fc1.in_features)
    small = kernels.kernels_for(InferencePlan(ffn_chunk_elems=5 * ffn.fc1.out_features))   # 21 rows -> chunks of 5
    with torch.no_grad():
        whole = ffn(x)
        chunked = ffn(x, small)
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, rtol=1e-6, atol=1e-6)      # GEMM blocking may differ per row count
    with torch.enable_grad():                                   # training never chunks (autograd keeps it simple)
        assert ffn(x).requires_grad


# ---- the fused pieces of the 2026-11-25 speed work: the same function as the plain ops ------------------------------

@pytest.mark.parametrize("n,size", [(1, 16), (2, 16), (3, 16), (5, 16), (10, 16), (13, 16), (4, 7), (6, 6)])
def test_bicubic_matmuls_equal_interpolate(n, size):
    from model.vqvae import bicubic_up
    x = torch.randn(3, 5, n, n)
    want = F.interpolate(x, size=(size, size), mode="bicubic")
    assert torch.allclose(bicubic_up(x, size), want, rtol=1e-5, atol=1e-5)


def test_bicubic_matmuls_ignore_autocast():
    from model.vqvae import bicubic_up
    x = torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bicubic_up(x, 16)
    assert y.dtype == torch.float32 and torch.allclose(y, F.interpolate(x, size=(16, 16), mode="bicubic"), atol=1e-5)


def test_residual_ln_modulate_equals_two_steps():
    x, h = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    g, s, b = torch.randn(2, 1, 32), torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    x2, y = kernels.residual_ln_modulate(x, h, g, s, b, 1e-6, torch.bfloat16)
    want_x = x + g * h
    assert torch.allclose(x2, want_x, atol=1e-6)
    assert y.dtype == torch.bfloat16
    want_y = F.layer_norm(want_x, (32,), eps=1e-6) * (1 + s) + b
    assert torch.allclose(y.float(), want_y, rtol=1e-2, atol=1e-2)


def test_cpu_fallbacks_of_cuda_fused_ops():
    """On CPU (and with autograd) the epilogue GELU and the split head take the plain path: tanh GELU (the CPU
    fused op would use erf) and a float32 head."""
    x, w, b = torch.randn(6, 16), torch.randn(24, 16), torch.randn(24)
    assert torch.allclose(kernels.linear_gelu(x, w, b), F.gelu(F.linear(x, w, b), approximate="tanh"), atol=1e-6)
    wb, bb = w.bfloat16(), b.bfloat16()
    assert torch.allclose(kernels.head_logits(x, wb, bb), F.linear(x, wb.float(), bb.float()), atol=1e-6)


def test_compile_is_a_noop_on_cpu():
    p = VARPipeline.from_spec(SPEC, seed=0)
    assert p.compile().compiled is False


def test_kernel_tables_follow_the_plan():
    """A compiled plan's table holds the compiled pieces (torch.compile wraps lazily: nothing compiles here), the
    plain plan's the eager ones; tables are built once per plan and building one changes no other."""
    plain = kernels.kernels_for(InferencePlan.plain())
    assert plain is kernels.PLAIN_KERNELS
    assert all(getattr(plain, n) is f for n, f in kernels.ELEMENTWISE.items())
    fused = kernels.kernels_for(InferencePlan(compiled=True))
    assert all(getattr(fused, n) is not f for n, f in kernels.ELEMENTWISE.items())
    assert all(getattr(plain, n) is f for n, f in kernels.ELEMENTWISE.items())
    assert kernels.kernels_for(InferencePlan(compiled=True)) is fused
    fast = kernels.kernels_for(InferencePlan(fused_gelu=True, split_head=True))
    assert fast.linear_gelu is kernels.linear_gelu_epilogue and plain.linear_gelu is kernels.linear_gelu
    assert fast.head_logits is not kernels.head_logits and plain.head_logits is kernels.head_logits


@pytest.mark.gpu
def test_split_head_matches_float32_head():
    h = torch.randn(300, 128, device="cuda") * 3
    w = (torch.randn(512, 128, device="cuda") * 0.05).bfloat16()
    b = torch.randn(512, device="cuda").bfloat16()
    ref = F.linear(h.double(), w.double(), b.double())
    with torch.no_grad():
        got = kernels.head_logits_split(h, w, b)
    # h = hi + lo to ~2^-17 relative: ~5e-6 expected; a bf16 head would be ~2e-3
    assert got.dtype == torch.float32 and rel_err(got.double(), ref) <= 2e-5


@pytest.mark.gpu
def test_epilogue_gelu_is_the_tanh_form():
    """Pre-activations near -3, where the tanh and erf forms differ by ~10% and bf16 rounds by ~0.4%."""
    x = torch.randn(64, 128, device="cuda").bfloat16()
    w = (torch.randn(256, 128, device="cuda") * 0.01).bfloat16()
    b = torch.full((256,), -3.0, device="cuda").bfloat16()
    with torch.no_grad():
        got = kernels.linear_gelu_epilogue(x, w, b).float()
    pre = F.linear(x.float(), w.float(), b.float())
    assert rel_err(got, F.gelu(pre, approximate="tanh")) <= 2e-2
    assert rel_err(got, F.gelu(pre)) >= 5e-2


@pytest.mark.gpu
def test_linear_gelu_under_autocast_takes_the_autocast_path():
    """Validation under autocast with fp32 weights: the matmul runs in the autocast dtype, not a fused fp32 one."""
    x, w, b = (torch.randn(8, 16, device="cuda"), torch.randn(32, 16, device="cuda"),
               torch.randn(32, device="cuda"))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert kernels.linear_gelu_epilogue(x, w, b).dtype == torch.bfloat16


@pytest.mark.gpu
def test_compiled_pipeline_computes_the_same_function():
    """pipe.compile(), eager and inside CUDA graphs: the logits of a generation equal the plain bf16 path's
    teacher-forcing logits on the same tokens (no cascade of flipped tokens to blur the comparison)."""
    p = VARPipeline.from_spec(SPEC, device="cuda", seed=0, dtype=torch.bfloat16).compile()
    labels = list(range(8))
    for graphs in (False, True):
        out = p.generate(labels, seed=0, decode=False, return_logits=True, cuda_graphs=graphs)
        ref = p.set_plan(compiled=False).teacher_forcing(labels, out.indices)
        p.set_plan(compiled=True)
        got = torch.cat(out.logits, 1)
        assert rel_err(got, ref) <= 2e-2
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.99


def test_cached_qkv_constants_follow_parameter_updates():
    """The inference cache of the qkv bias and head scale is refreshed in place (CUDA graphs captured it) when a
    parameter changes in place (an optimizer step, load_state_dict), and never used under autograd."""
    s = spec.var_spec(1, name="cst", width=32, heads=2, patch_nums=(1, 2), vae=spec.TINY_VAE, num_classes=4)
    attn = VARPipeline.from_spec(s, seed=0).var.blocks[0].attn
    with torch.no_grad():
        b0, m0 = attn._consts()
        assert attn._consts()[0] is b0                           # cached
        b0_vals, m0_vals = b0.clone(), m0.clone()
        attn.q_bias.add_(1.0)
        attn.scale_mul_1H11.sub_(0.5)
        b1, m1 = attn._consts()
    assert b1 is b0 and m1 is m0                                 # same memory, new values
    assert torch.equal(b1[:32], b0_vals[:32] + 1) and torch.allclose(m1, m0_vals * torch.exp(torch.tensor(-0.5)))
    b2, _ = attn._consts()
    assert b2.requires_grad and b2 is not b1                     # training: built in the graph, not cached


def test_compiled_qk_norm_into_writes_cache_views_like_eager():
    """torch.compile of the fused q/k norm + cache write (CPU inductor): the same values land in the slots of
    token-major buffers whose offsets and capacities vary, in a few compilations."""
    import torch._dynamo
    torch._dynamo.reset()
    fn = kernels._compiled()["qk_norm_into"]
    B, H, c = 2, 3, 8
    for cap in (14, 9):
        kb, vb = torch.zeros(B, cap, H, c), torch.zeros(B, cap, H, c)
        n0 = 0
        for L in (1, 4, 9):
            if n0 + L > cap:
                break
            qkv = torch.randn(B * L, 3, H, c)
            mul = torch.rand(1, H, 1) + 0.5
            q = fn(qkv, mul, kb[:, n0:n0 + L], vb[:, n0:n0 + L])
            k_ref, v_ref = torch.empty(B, L, H, c), torch.empty(B, L, H, c)
            q_ref = kernels.qk_norm_into(qkv, mul, k_ref, v_ref)
            assert torch.allclose(q, q_ref, atol=1e-6)
            assert torch.allclose(kb[:, n0:n0 + L], k_ref, atol=1e-6) and torch.equal(vb[:, n0:n0 + L], v_ref)
            n0 += L


@pytest.mark.gpu
def test_triton_qkv_kernel_matches_the_torch_form():
    """The Triton q/k-norm + cache-write kernel against the eager function, into token-major cache slots."""
    B, L, H, c, cap, n0 = 3, 9, 30, 64, 20, 5
    qkv = torch.randn(B * L, 3, H, c, device="cuda").bfloat16()
    mul = (torch.rand(1, H, 1, device="cuda") * 9 + 1).bfloat16()
    kb, vb = (torch.zeros(B, cap, H, c, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    kr, vr = torch.zeros(B, L, H, c, device="cuda"), torch.zeros(B, L, H, c, device="cuda")
    with torch.no_grad():
        assert kernels.InferencePlan.resolve("cuda", torch.bfloat16).triton_qkv, "Triton did not import here"
        q = kernels.qk_norm_into_triton(qkv, mul, kb[:, n0:n0 + L], vb[:, n0:n0 + L])
        qr = kernels.qk_norm_into(qkv.float(), mul.float(), kr, vr)
    assert rel_err(q.float(), qr) < 4e-3 and rel_err(kb[:, n0:n0 + L].float(), kr) < 4e-3
    assert torch.equal(vb[:, n0:n0 + L], vr.bfloat16())
    assert kb[:, :n0].abs().max() == 0 and kb[:, n0 + L:].abs().max() == 0 and vb[:, n0 + L:].abs().max() == 0


@pytest.mark.gpu
def test_small_attention_backend_matches_default_sdpa():
    """Attention over <= plan.small_attn_max_keys keys (the memory-efficient kernel) equals the default SDPA."""
    from model import kv_cache
    q = torch.randn(8, 30, 16, 64, device="cuda").bfloat16()
    k, v = (torch.randn(8, 30, 30, 64, device="cuda").bfloat16() for _ in range(2))
    plan = InferencePlan.resolve("cuda", torch.bfloat16).replace(tiny_attn_max_keys=0)
    assert plan.small_attn_max_keys >= 30
    with torch.no_grad():
        got = kv_cache.cached_attention(q, k, v, 1.0, plan).float()
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=1.0)
    assert rel_err(got, ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("L,n", [(4, 5), (36, 91), (64, 128), (1, 2)])
def test_tiny_attention_kernel_matches_sdpa(L, n):
    """The Triton attention for the first scales against float32 SDPA, on the cache's token-major views; the
    output is a (B, H, L, c) view of (B, L, H, c) memory."""
    from model import kv_cache
    B, H, c = 6, 30, 64
    q = torch.randn(B, L, H, c, device="cuda").bfloat16().transpose(1, 2)
    kb, vb = (torch.randn(B, 150, H, c, device="cuda").bfloat16().transpose(1, 2) for _ in range(2))
    k, v = kb[:, :, :n], vb[:, :, :n]
    plan = InferencePlan.resolve("cuda", torch.bfloat16)
    assert plan.tiny_attn_max_keys >= n, "Triton did not import on this GPU machine"
    with torch.no_grad():
        got = kv_cache.cached_attention(q, k, v, 0.9, plan)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.9)
    assert got.transpose(1, 2).is_contiguous() and rel_err(got.float(), ref) < 1e-2


def test_split_hi_lo_rows_and_head_weight_give_the_linear_head():
    """[h_hi | h_lo | 1 0..] @ [W | W | b 0..]ᵀ equals h·Wᵀ + b (computed here in float64 on CPU), and the head
    weight is refreshed in place when the weight changes."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 16, generator=g) * 3
    w = (torch.randn(12, 16, generator=g) * 0.1).bfloat16()
    b = torch.randn(12, generator=g).bfloat16()
    a = kernels.split_hi_lo(h)
    assert a.shape == (5, 40) and a.dtype == torch.bfloat16
    w2 = kernels.head_weight(w, b)
    got = a.double() @ w2.double().t()
    ref = h.double() @ w.double().t() + b.double()
    assert ((got - ref).norm() / ref.norm()).item() < 2e-5
    with torch.no_grad():
        w.mul_(2)
    w3 = kernels.head_weight(w, b)
    assert w3 is w2 and torch.equal(w3[:, :16], w) and torch.equal(w3[:, 16:32], w)


def test_compiled_split_hi_lo_keeps_the_low_part():
    """torch.compile fuses away intermediate down-casts by default; the split must survive that (a round-trip
    hi/lo split compiled to lo == 0, a bf16 head)."""
    import torch._dynamo
    torch._dynamo.reset()
    h = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)) * 3
    a = torch.compile(kernels.split_hi_lo)(h)
    lo = a[:, 32:64]
    rec = a[:, :32].double() + lo.double()
    assert (lo != 0).float().mean() > 0.9
    assert ((rec - h.double()).norm() / h.double().norm()).item() < 1e-5


def test_compiled_pieces_keep_each_model_width_static():
    """Two model widths (a drafter and a refiner): each width has its own compiled code, so the second width never
    turns the first's into width-symbolic kernels (Dynamo's automatic dynamic would, with one compiled function:
    the code method's drafted scales ran ~3x slower). CPU inductor."""
    import torch._dynamo
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    torch._dynamo.reset()
    pw = kernels.PerWidth(kernels.ln_modulate)

    def call(C, L):
        x, s, b = torch.randn(4, L, C), torch.randn(4, 1, C), torch.randn(4, 1, C)
        assert torch.allclose(pw(x, s, b, 1e-6), kernels.ln_modulate(x, s, b, 1e-6), atol=1e-5)

    for L in (1, 4, 9):
        call(64, L)
    wide = pw.variants[(64,)]
    n_wide = len(_debug_get_cache_entry_list(wide._torchdynamo_orig_callable.__code__))
    for L in (1, 4):
        call(32, L)
    for L in (1, 4, 9, 16):
        call(64, L)                                                  # served by its own (token-dynamic) entry
    assert set(pw.variants) == {(64,), (32,)}
    assert len(_debug_get_cache_entry_list(wide._torchdynamo_orig_callable.__code__)) == n_wide
    narrow = pw.variants[(32,)]._torchdynamo_orig_callable.__code__
    assert narrow is not wide._torchdynamo_orig_callable.__code__ and narrow.co_name != "ln_modulate"
    assert kernels.width_of(torch.zeros(5, 3, 2, 8)) == (2, 8) and kernels.width_of(torch.zeros(5, 7)) == (7,)


def test_residual_in_place_is_bitwise_the_copying_stream():
    """``plan.residual_in_place`` (the default: the stream updated where it lies, the caller's input overwritten)
    computes exactly what the copying stream does: sampled tokens, logits and teacher forcing, full depth and a
    VARiant schedule, on SPEC (whose blocks all matter, tests/test_guards_see_blocks.py)."""
    from model.var import prefix_attention
    p = VARPipeline.from_spec(SPEC, seed=0)
    assert p.plan.residual_in_place
    copying = p.plan.replace(residual_in_place=False)
    labels = torch.tensor([1, 2, 3])
    for sched in (None, DepthSchedule.variant(SPEC, 2, 2)):
        a = p.generate(labels, seed=3, schedule=sched, decode=False, return_logits=True)
        b = p.generate(labels, seed=3, schedule=sched, decode=False, return_logits=True, plan=copying)
        assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits))
        assert torch.equal(a.f_hat, b.f_hat)
        tf_in = p.teacher_forcing(labels, a.indices, sched)
        tf_copy = p.set_plan(residual_in_place=False).teacher_forcing(labels, a.indices, sched)
        p.set_plan(residual_in_place=True)
        assert torch.equal(tf_in, tf_copy)
    with torch.enable_grad():                      # training keeps its input: autograd needs the old stream
        blk, x = p.var.blocks[0], torch.randn(2, 5, SPEC.width, requires_grad=True)
        mod = blk.modulation(p.var.cond_for_blocks(p.var.class_emb(torch.tensor([0, 1]))))
        x0 = x.detach().clone()
        blk(x, None, prefix_attention([5]), mod).sum().backward()
        assert torch.equal(x.detach(), x0) and x.grad is not None
