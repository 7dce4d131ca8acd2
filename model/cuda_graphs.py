"""Per-scale CUDA graphs for small-batch generation (launch-bound: ~7,500 kernels per d30 image).

One graph per scale holds that scale's blocks and the head, replayed against a KV cache allocated once for the
(schedule, batch) pair. Graph replays need fixed addresses, so this cache never frees a block's buffers (the
``keep_skipped`` accounting); sampling and the VQ-VAE next-scale input stay eager, outside the graphs. The
``ScaleStep`` of ``model.scale_step`` for plans with ``cuda_graphs``.
"""
from __future__ import annotations

import torch

from .kernels import kernels_for
from .kv_cache import KVCache
from .plan import InferencePlan
from .scale_step import FullLogits
from .schedule import DepthSchedule


class GraphedScales:
    """Captured transformer steps for one (plan, schedule, batch, dtype, k_dtype); inputs and outputs are static.
    Everything the captured kernels depend on is in that key, so the pipeline never replays a capture under
    another plan."""

    def __init__(self, var, schedule: DepthSchedule, batch: int, dtype: torch.dtype, device: torch.device,
                 plan: InferencePlan, k_dtype: torch.dtype | None = None):
        spec = var.spec
        self.var, self.schedule, self.spec = var, schedule, spec
        self.plan, self.kernels = plan, kernels_for(plan)
        rows, C = 2 * batch, spec.width
        self.batch = batch
        self.cond_BD = torch.zeros(rows, C, dtype=dtype, device=device)
        self.blocks = schedule.used_blocks()
        self.cache = KVCache(spec, schedule, batch, dtype, device, keep_skipped=True, k_dtype=k_dtype, plan=plan)
        self.x_in = [torch.zeros(self.cache.rows_at(si), t, C, dtype=torch.float32, device=device)
                     for si, t in enumerate(spec.tokens)]           # guidance-skip scales: one row per image
        self.mods_graph, self.mods = None, None
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.logits: list[torch.Tensor] = []
        self._capture(device)

    def _run_scale(self, si: int) -> torch.Tensor:
        self.cache.begin_scale(si)
        r = self.cache.rows_at(si)
        mods = self.mods if r == 2 * self.batch else {b: tuple(m[:r] for m in mod) for b, mod in self.mods.items()}
        h = self.var.step(self.x_in[si], mods, self.schedule.layers[si], self.cache)
        return self.var.get_logits(h, self.cond_BD[:r], self.kernels)

    def _capture(self, device: torch.device) -> None:
        var = self.var
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):           # warm-up outside capture (cuBLAS handles, autotuning)
            self.mods = var.modulations(var.cond_for_blocks(self.cond_BD), self.blocks)
            for si in range(self.spec.num_scales):
                self._run_scale(si)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.cache.reset()
        pool = torch.cuda.graph_pool_handle()
        self.mods_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.mods_graph, pool=pool):
            self.mods = var.modulations(var.cond_for_blocks(self.cond_BD), self.blocks)
        for si in range(self.spec.num_scales):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                out = self._run_scale(si)
            self.graphs.append(g)
            self.logits.append(out)

    def start(self, cond_BD: torch.Tensor, labels_2B: torch.Tensor | None = None) -> None:
        self.var.refresh_inference_consts(self.kernels)   # parameters changed in place since capture: caches follow
        self.cond_BD.copy_(cond_BD)
        self.mods_graph.replay()

    def begin_scale(self, si: int) -> None:
        """Nothing to do: the cache was allocated whole at capture."""

    def run(self, si: int, x_BlC: torch.Tensor, latent_BlCv: torch.Tensor | None = None) -> FullLogits:
        """Logits (2B, pn², V) float32 of scale ``si``; valid until the next replay of that scale."""
        self.x_in[si].copy_(x_BlC)
        self.graphs[si].replay()
        return FullLogits(self.logits[si], self.batch)

    def finish(self) -> None:
        """The buffers stay: the next generation with this key replays against them."""
