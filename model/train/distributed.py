"""Multi-process training under ``torchrun``: process group, DDP/FSDP wrapping, rank-0 helpers.

One process per device; WORLD_SIZE/RANK/LOCAL_RANK come from torchrun. NCCL on GPU, gloo on CPU. The global batch is
split across ranks (``data.rank_batches``) and gradients are averaged, so W processes compute the same update as one
process with the same global batch.

Unused parameters: with switch N >= 1 every block runs in the bridge zone, so every parameter gets a gradient in
every step, subnet steps included; only a schedule that leaves a block idle at every scale (switch 0) does not.
``needs_find_unused`` checks the candidate schedules and turns ``find_unused_parameters`` on only then, because it
costs an extra graph traversal per step. Multi-pass steps (sandwich, distillation) run the earlier passes under
``no_sync`` and the full pass last, so the synchronised backward sees every parameter.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..schedule import DepthSchedule
from ..spec import VARSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto", force: bool = False) -> DistEnv:
    """Start the process group when torchrun launched several processes (or ``force``, for FSDP on one GPU)."""
    from varbench.target import resolve_device     # the one device resolution; a bare cuda -> cuda:LOCAL_RANK

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(resolve_device(device, local_rank))
    if force and "MASTER_ADDR" not in os.environ:
        raise ValueError("--fsdp needs a process group: launch with torchrun (even --nproc-per-node 1)")
    if (world > 1 or force) and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        log.info("process group %s: rank %d of %d on %s", backend, rank, world, dev)
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev)


def cleanup(env: DistEnv) -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def needs_find_unused(spec: VARSpec, schedules: Iterable[DepthSchedule | None]) -> bool:
    """True when some candidate schedule leaves a block idle at every scale (its parameters get no gradient)."""
    for sched in schedules:
        if sched is not None and len(sched.used_blocks()) < spec.depth:
            return True
    return False


def wrap_model(model: nn.Module, env: DistEnv, *, find_unused: bool, fsdp: bool = False,
               block_cls: type[nn.Module] | None = None) -> nn.Module:
    """DDP (default) or FSDP sharded per transformer block (``--fsdp``, for d30-size models)."""
    if not env.distributed and not fsdp:
        return model
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        if not dist.is_initialized():
            raise RuntimeError("--fsdp needs torchrun (a process group)")
        policy = ModuleWrapPolicy({block_cls}) if block_cls is not None else None
        return FSDP(model, auto_wrap_policy=policy, use_orig_params=True,
                    device_id=env.device if env.device.type == "cuda" else None)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    kw: dict = {}
    if "init_sync" in inspect.signature(DDP.__init__).parameters and same_on_all_ranks(model, env):
        kw["init_sync"] = False         # identical by construction (seeded init / the same file), checked above
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused, broadcast_buffers=False, **kw)


def same_on_all_ranks(model: nn.Module, env: DistEnv) -> bool:
    """Whether every rank holds the same parameters and buffers, by one all-reduce of per-tensor checksums.

    Ranks build their model from the same seed or file, so DDP's start-up broadcast of every tensor is redundant;
    on the 2xH100 machine a 2-process DDP start never reached its first step while FSDP (no start-up broadcast)
    trained, so the broadcast is skipped when the checksums agree (DDP's own sync runs otherwise)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if not tensors:
        return True
    firsts, seconds = [], []
    for t in tensors:                 # one float64 copy at a time (all at once would double d30's memory)
        f = t.detach().double().nan_to_num(posinf=1e300, neginf=-1e300)
        firsts.append(f.sum())
        seconds.append(f.square().sum())
    sums = torch.stack(firsts + seconds)
    lo, hi = sums.clone(), sums.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    same = bool(torch.equal(lo, hi))
    if not same:
        log.warning("ranks hold different weights: DDP broadcasts rank 0's at start-up")
    return same


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Accumulate gradients locally (DDP/FSDP ``no_sync``) for all but the last pass of a step."""
    if skip and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_mean(values: list[float], env: DistEnv) -> list[float]:
    """Average a few scalars over ranks (for logging); identity for one process."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / env.world).tolist()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
