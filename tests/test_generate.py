"""Exactness of the supernet: teacher forcing == cached generation under any schedule; subnet == standalone."""
import itertools

import pytest
import torch

from model import spec
from model.pipeline import VARPipeline
from model.schedule import DepthSchedule, subnet_layers
from model.var import VAR

# 5 scales, 4 blocks, width 64: small enough for seconds, enough scales for every switch. AdaLN gamma and head
# at scale 1 (not the official 1e-5 / 0.02) so that every block changes the logits: with the official init the
# blocks start as near-identities and a broken KV cache would still pass these comparisons.
SPEC = spec.var_spec(4, name="t5", width=64, heads=2, patch_nums=(1, 2, 3, 4, 5), vae=spec.TINY_VAE,
                     num_classes=10, init_adaln_gamma=1.0, init_head=1.0)


@pytest.fixture(scope="module")
def pipe():
    return VARPipeline.from_spec(SPEC, seed=0)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def check_tf_equals_cached(pipe, schedule, top_k=0, top_p=0.0, seed=1):
    labels = torch.tensor([3, 7])
    out = pipe.generate(labels, cfg=2.0, top_k=top_k, top_p=top_p, seed=seed, schedule=schedule,
                        return_logits=True, decode=False)
    tf = pipe.teacher_forcing(labels, out.indices, schedule)
    cached = torch.cat(out.logits, dim=1)
    assert tf.shape == cached.shape == (2, SPEC.L, SPEC.vae.vocab_size)
    assert rel_err(cached, tf) <= 1e-5
    # the unconditional half too: label = num_classes
    uncond = pipe.teacher_forcing(torch.full((2,), SPEC.num_classes), out.indices, schedule)
    assert uncond.shape == tf.shape


def schedules():
    yield "full", DepthSchedule.full(SPEC)
    for switch, depth, select in itertools.product(range(1, SPEC.num_scales), (2, 3), ("isometric", "nested")):
        yield f"variant-{depth}-{switch}-{select}", DepthSchedule.variant(SPEC, depth, switch, select)
    # skip block 1 at scale 1 only: it attends later to scales it processed (0, 2, 3, 4)
    layers = [tuple(range(4))] * 5
    layers[1] = (0, 2, 3)
    yield "skip-early", DepthSchedule(layers)
    yield "per-scale", DepthSchedule.per_scale(SPEC, [4, 3, 2, 3, 4])


@pytest.mark.parametrize("name,schedule", list(schedules()), ids=lambda x: x if isinstance(x, str) else "")
def test_teacher_forcing_equals_cached_generation(pipe, name, schedule):
    check_tf_equals_cached(pipe, schedule)


def test_with_top_k_top_p_sampling(pipe):
    check_tf_equals_cached(pipe, DepthSchedule.variant(SPEC, 2, 2), top_k=20, top_p=0.9)


def test_subnet_equals_standalone_model(pipe):
    layers = subnet_layers(4, 2, "isometric")
    schedule = DepthSchedule([layers] * SPEC.num_scales)
    sub_spec = SPEC.with_depth(2)
    sd = pipe.var.state_dict()
    sub_sd = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            if int(i) in layers:
                sub_sd[f"blocks.{layers.index(int(i))}.{rest}"] = v
        else:
            sub_sd[k] = v
    sub = VAR(sub_spec)
    sub.load_state_dict(sub_sd, strict=True)
    sub.eval()
    labels = torch.tensor([1, 4])
    out = pipe.generate(labels, top_k=0, top_p=0, seed=3, schedule=schedule, decode=False)
    x = pipe.vae.quantize.idx_to_var_input(out.indices)
    with torch.no_grad():
        ref = sub(labels, x)
    assert rel_err(pipe.teacher_forcing(labels, out.indices, schedule), ref) <= 1e-5


def test_seeds_and_greedy(pipe):
    labels = [0, 5, 9]
    a = pipe.generate(labels, seed=11, top_k=30, top_p=0.95)
    b = pipe.generate(labels, seed=11, top_k=30, top_p=0.95)
    c = pipe.generate(labels, seed=12, top_k=30, top_p=0.95)
    assert torch.equal(a.images, b.images)
    assert not all(torch.equal(x, y) for x, y in zip(a.indices, c.indices))
    g1 = pipe.generate(labels, seed=1, top_k=1)
    g2 = pipe.generate(labels, seed=2, top_k=1)
    assert all(torch.equal(x, y) for x, y in zip(g1.indices, g2.indices))
    assert a.images.shape == (3, 3, SPEC.image_size, SPEC.image_size)
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    assert torch.allclose(a.images, pipe.vae.idx_to_img(a.indices), atol=1e-6)
    assert [i.shape for i in a.indices] == [(3, pn * pn) for pn in SPEC.patch_nums]


def test_switching_schedules_costs_nothing(pipe):
    ptrs = {k: p.data_ptr() for k, p in pipe.var.named_parameters()}
    n_modules = len(list(pipe.var.modules()))
    for d in (2, 3, 4):
        pipe.generate([1], seed=0, schedule=DepthSchedule.variant(SPEC, d, 2), decode=False)
    assert ptrs == {k: p.data_ptr() for k, p in pipe.var.named_parameters()}
    assert n_modules == len(list(pipe.var.modules()))


def test_coupled_sampling_identical_distributions_agree(pipe):
    full = DepthSchedule.full(SPEC)
    explicit = DepthSchedule([tuple(range(4))] * SPEC.num_scales)
    a = pipe.generate([2, 3], seed=5, schedule=full, top_k=40, top_p=0.9)
    b = pipe.generate([2, 3], seed=5, schedule=explicit, top_k=40, top_p=0.9)
    assert torch.equal(a.images, b.images)


def test_class_dropout_only_in_training():
    p = VARPipeline.from_spec(SPEC, seed=0)
    idx = p.generate([1, 2, 3, 4] * 8, seed=0, decode=False).indices
    x = p.vae.quantize.idx_to_var_input(idx)
    labels = torch.tensor([1, 2, 3, 4] * 8)
    p.var.eval()
    with torch.no_grad():
        assert torch.equal(p.var(labels, x), p.var(labels, x))
    p.var.train()
    torch.manual_seed(0)
    with torch.no_grad():
        trained = p.var(labels, x)
    p.var.eval()
    with torch.no_grad():
        assert not torch.allclose(trained, p.var(labels, x))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    s = spec.var_spec(3, width=64, heads=2, patch_nums=(1, 2, 3), vae=spec.TINY_VAE, num_classes=10,
                      init_adaln_gamma=1.0)
    var = VAR(s).train()
    x = torch.randn(2, s.L - 1, s.vae.z_channels)
    labels = torch.tensor([1, 2])
    grads = []
    for ckpt in (False, True):
        var.zero_grad()
        torch.manual_seed(1)                     # same class-dropout and drop-path draws
        sched = DepthSchedule.variant(s, 2, 1)
        var(labels, x, sched, checkpoint_blocks=ckpt).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in var.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_cfg_follows_the_official_linear_ramp(pipe):
    """Greedy tokens = argmax of (1+t)·cond − t·uncond with t = cfg·si/(S−1), both halves teacher-forced."""
    labels, cfg = torch.tensor([2, 6, 9]), 3.0
    out = pipe.generate(labels, cfg=cfg, top_k=1, seed=0, decode=False)
    cond = pipe.teacher_forcing(labels, out.indices)
    uncond = pipe.teacher_forcing(torch.full_like(labels, SPEC.num_classes), out.indices)
    S = SPEC.num_scales
    for si, (b0, b1) in enumerate(SPEC.begin_ends):
        t = cfg * si / (S - 1)
        guided = (1 + t) * cond[:, b0:b1] - t * uncond[:, b0:b1]
        assert torch.equal(guided.argmax(-1), out.indices[si]), si
    # and guidance matters here: without it some tokens differ
    plain = pipe.generate(labels, cfg=0.0, top_k=1, seed=0, decode=False)
    assert not all(torch.equal(a, b) for a, b in zip(plain.indices, out.indices))


@pytest.mark.parametrize("name,schedule", [s for s in schedules() if s[0] in
                                           ("full", "variant-2-3-isometric", "skip-early", "per-scale")],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_training_attention_equals_inference_attention(pipe, name, schedule, monkeypatch):
    """With gradients on, teacher forcing takes one masked SDPA (fast backward); without, per-scale prefix SDPA.
    Same logits and the same gradients."""
    import model.var as var_mod

    var = pipe.var.eval()
    idx = pipe.generate([3, 7], seed=2, schedule=schedule, decode=False).indices
    with torch.no_grad():
        x = pipe.vae.quantize.idx_to_var_input(idx)
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        ref = var(labels, x, schedule)
    outs, grads = [], []
    for force_prefix in (False, True):
        if force_prefix:
            monkeypatch.setattr(var_mod, "block_causal", lambda ends, device: var_mod.prefix_attention(ends))
        var.zero_grad()
        out = var(labels, x, schedule)
        out.logsumexp(-1).mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in var.parameters() if p.grad is not None]))
    var.zero_grad()
    assert rel_err(outs[0], ref) <= 1e-5 and rel_err(outs[1], ref) <= 1e-5
    assert rel_err(grads[0], grads[1]) <= 1e-5


def test_masked_attention_mask_is_block_causal():
    from model.var import masked_attention

    attend = masked_attention([1, 5, 14], torch.device("cpu"))
    mask = attend.__closure__[0].cell_contents[0, 0]          # the cached boolean mask
    lvl = torch.tensor([0] + [1] * 4 + [2] * 9)
    assert torch.equal(mask, lvl.view(-1, 1) >= lvl.view(1, -1))


def test_compiled_blocks_share_graphs_across_drop_path_rates():
    """Each block has its own drop-path rate; passed as a tensor it must not make every block recompile."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from model.var import compile_blocks

    torch._dynamo.reset()
    counters.clear()
    s = spec.var_spec(6, width=64, heads=2, patch_nums=(1, 2, 3), vae=spec.TINY_VAE, num_classes=10)
    assert s.drop_path_rate > 0
    var = VAR(s).train()
    compile_blocks(var, backend="eager")
    x = torch.randn(2, s.L - 1, s.vae.z_channels)
    for _ in range(2):
        var(torch.tensor([1, 2]), x).mean().backward()
    # block 0 has rate 0 (no drop path), blocks 1-5 one graph: at most 2 distinct graphs, whatever the depth
    assert 1 <= counters["stats"]["unique_graphs"] <= 2
    torch._dynamo.reset()


def test_teacher_indices_feed_the_given_tokens(pipe):
    """Forced with its own samples, a generation repeats itself (tokens and logits); forced with other tokens
    the later scales' logits follow those tokens; the guided kind is the CFG ramp the sampler drew from."""
    labels = [1, 2, 3]
    ref = pipe.generate(labels, seed=4, decode=False, return_logits=True)
    again = pipe.generate(labels, seed=99, decode=False, return_logits=True, teacher_indices=ref.indices)
    assert all(torch.equal(a, b) for a, b in zip(ref.indices, again.indices))
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, again.logits))
    other = [torch.randint_like(i, SPEC.vae.vocab_size) for i in ref.indices]
    moved = pipe.generate(labels, decode=False, return_logits=True, teacher_indices=other)
    assert torch.equal(moved.logits[0], ref.logits[0]) and not torch.allclose(moved.logits[-1], ref.logits[-1])
    guided = pipe.generate(labels, decode=False, return_logits=True, teacher_indices=ref.indices,
                           logits_kind="guided")
    assert torch.equal(guided.logits[0], ref.logits[0])          # t = 0 at the first scale: the conditional
    assert not torch.allclose(guided.logits[-1], ref.logits[-1])
    with pytest.raises(ValueError, match="logits_kind"):
        pipe.generate(labels, decode=False, logits_kind="sampled")


def test_on_phase_brackets_every_phase_of_every_scale(pipe):
    events = []
    out = pipe.generate([1, 2], seed=3, decode=False, on_phase=lambda n, si, e: events.append((n, si, e)))
    ref = pipe.generate([1, 2], seed=3, decode=False)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, ref.indices))       # the hook observes only
    for si in range(SPEC.num_scales):
        mine = [(n, e) for n, s, e in events if s == si]
        assert mine == [("blocks", "begin"), ("blocks", "end"), ("sampling", "begin"), ("head", "begin"),
                        ("head", "end"), ("sampling", "end"), ("next_input", "begin"), ("next_input", "end")]
