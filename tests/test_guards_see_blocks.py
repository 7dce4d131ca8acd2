"""The equivalence guards run on weights where every block matters (issue 19, point 5).

With the official initialisation (AdaLN gamma 1e-5) every block starts as a near-identity: removing a block, or
zeroing its attention, leaves greedy agreement at 1.0, so a guard on such weights only sees the embeddings, the
head and the residual precision. Here each guard's spec is taken as the guard uses it, one block's attention output
(``attn.proj``) or MLP output (``ffn.fc2``) is zeroed, and the very quantity the guard compares must move by far
more than the guard's tolerance.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch

from model.pipeline import VARPipeline
from model.schedule import DepthSchedule
from tests import test_fast_path, test_generate, test_plan

PARTS = {"attn": lambda blk: blk.attn.proj, "mlp": lambda blk: blk.ffn.fc2}


@contextlib.contextmanager
def _ablated(pipe: VARPipeline, block: int, part: str) -> Iterator[VARPipeline]:
    """The pipeline with one block's attention or MLP output zeroed (the block adds nothing there), restored after."""
    lin = PARTS[part](pipe.var.blocks[block])
    saved = lin.weight.detach().clone(), lin.bias.detach().clone()
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    try:
        yield pipe
    finally:
        with torch.no_grad():
            lin.weight.copy_(saved[0])
            lin.bias.copy_(saved[1])


def _logits(pipe: VARPipeline, idx: list[torch.Tensor], labels: torch.Tensor,
            schedule: DepthSchedule | None = None) -> torch.Tensor:
    return pipe.teacher_forcing(labels, idx, schedule)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("guard", [test_generate, test_fast_path, test_plan], ids=lambda m: m.__name__)
@pytest.mark.parametrize("part", sorted(PARTS))
def test_zeroing_any_block_moves_the_guarded_logits(guard, part):
    """Cached == teacher-forced (tolerance 1e-5 relative) and eager == graphed (atol 1e-5): each block's attention
    and MLP output changes the logits those guards compare by >= 1e-3, a hundred times their tolerance."""
    pipe = VARPipeline.from_spec(guard.SPEC, seed=0)
    labels = torch.tensor([3, 7])
    idx = pipe.generate(labels, cfg=2.0, top_k=0, top_p=0.0, seed=1, decode=False).indices
    ref = _logits(pipe, idx, labels)
    for b in range(guard.SPEC.depth):
        with _ablated(pipe, b, part) as p:
            moved = _rel(_logits(p, idx, labels), ref)
        assert moved >= 1e-3, f"{guard.__name__}: zeroing block {b}'s {part} moves the logits by only {moved:.2e}"


@pytest.mark.parametrize("part", sorted(PARTS))
def test_zeroing_any_block_breaks_greedy_agreement(part):
    """The bf16 greedy-agreement guard (>= 99% tokens equal) would fail if any block's attention or MLP output went
    missing: on its weights the ablated network agrees with the intact one on < 99% of the greedy tokens."""
    spec_ = test_fast_path.GREEDY_SPEC
    pipe = VARPipeline.from_spec(spec_, seed=0)
    labels = list(range(8))                            # as the guard: greedy_agreement(GREEDY_SPEC, batch=8)
    ref = torch.cat(pipe.generate(labels, top_k=1, decode=False).indices, 1)
    for b in range(spec_.depth):
        with _ablated(pipe, b, part) as p:
            got = torch.cat(p.generate(labels, top_k=1, decode=False).indices, 1)
        agree = (got == ref).float().mean().item()
        assert agree < 0.99, f"zeroing block {b}'s {part} keeps greedy agreement at {agree:.3f}"
