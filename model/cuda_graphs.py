"""Per-scale CUDA graphs that keep the eager path's memory plan (launch-bound: ~7,500 kernels per d30 image).

One graph per scale holds that scale's KV-cache allocation step, its blocks and (when the scale's logits are
small) the head. The ten graphs are captured in generation order into one private memory pool, each capture
running the cache's ``begin_scale`` too: a block's buffers are freed inside the capture of the scale after its
last one, and the later captures reuse that memory, exactly as the eager cache frees and regrows at the
schedule's segment boundaries. Replaying in capture order is what makes that sharing safe (the pool only hands a
capture memory that is dead at that point of the generation). So the graphed path holds the bytes the eager path
holds (``keep_skipped`` keeps them all, as eager does), not every block's buffers.

The graphs read one static input buffer and write one static output buffer, both sized for the largest scale
and viewed per scale; sampling and the VQ-VAE next-scale input stay eager, between the graphs. When the largest
scale's float32 logits exceed ``plan.sample_chunk_logits`` the graph ends at the hidden state and the head runs
eagerly on batch chunks (``HiddenLogits``), so the float32 logits of a large batch never exist whole.
"""
from __future__ import annotations

import torch

from .kernels import kernels_for
from .kv_cache import KVCache
from .plan import InferencePlan
from .scale_step import FullLogits, HiddenLogits, ScaleLogits
from .schedule import DepthSchedule


class CapturedCache:
    """What the loop's hooks see of a graphed generation's cache: the bytes it held at each scale, recorded at
    capture (a replay runs no Python, so the real cache object's state is the end of the capture's)."""

    def __init__(self, cache: KVCache):
        self.spec, self.schedule, self.plan = cache.spec, cache.schedule, cache.plan
        self.batch, self.rows, self.layout = cache.batch, cache.rows, cache.layout
        self.keep_skipped = cache.keep_skipped
        self.bytes_at: list[int] = []
        self.scale = 0

    def rows_at(self, si: int) -> int:
        return self.batch if self.plan.cfg_until is not None and si >= self.plan.cfg_until else self.rows

    def nbytes(self) -> int:
        """Bytes the K/V buffers held at the current scale (the same count as ``KVCache.nbytes``)."""
        return self.bytes_at[self.scale]


class GraphedScales:
    """Captured transformer steps for one (plan, schedule, batch, dtype, k_dtype, keep_skipped); static inputs
    and outputs. Everything the captured kernels depend on is in that key, so the pipeline never replays a capture
    under another plan. ``capture=False`` runs the same static-buffer program eagerly at every call (no CUDA
    graphs): the CPU tests check the buffers, views and byte records with it."""

    def __init__(self, var, schedule: DepthSchedule, batch: int, dtype: torch.dtype, device: torch.device,
                 plan: InferencePlan, k_dtype: torch.dtype | None = None, keep_skipped: bool = False,
                 capture: bool = True):
        spec = var.spec
        self.var, self.schedule, self.spec, self.batch = var, schedule, spec, batch
        self.plan, self.kernels = plan, kernels_for(plan)
        self.blocks = schedule.used_blocks()
        self.live = KVCache(spec, schedule, batch, dtype, device, keep_skipped=keep_skipped, k_dtype=k_dtype,
                            plan=plan)
        self.cache = CapturedCache(self.live)
        rows, C, t_max, V = 2 * batch, spec.width, max(spec.tokens), spec.vae.vocab_size
        self.head_in_graph = rows * t_max * V <= plan.sample_chunk_logits
        self.cond_BD = torch.zeros(rows, C, dtype=dtype, device=device)
        self.x_flat = torch.zeros(rows * t_max * C, dtype=torch.float32, device=device)
        # the hidden state overwrites the input it was computed from (read by the first block only): one buffer
        self.out_flat = (torch.zeros(rows * t_max * V, dtype=torch.float32, device=device) if self.head_in_graph
                         else self.x_flat)
        self.mods: dict | None = None
        self.capture = capture
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.mods_graph: torch.cuda.CUDAGraph | None = None
        if capture:
            self._capture(device)

    # ---- the program of one scale (what a graph holds) -------------------------------------------------------
    def _view(self, flat: torch.Tensor, si: int, width: int) -> torch.Tensor:
        r, t = self.cache.rows_at(si), self.spec.tokens[si]
        return flat[:r * t * width].view(r, t, width)

    def _run_scale(self, si: int) -> None:
        """Allocate (or free) what scale ``si`` needs, run its blocks and write the static output."""
        self.live.begin_scale(si)
        r = self.cache.rows_at(si)
        mods = self.mods if r == 2 * self.batch else {b: tuple(m[:r] for m in mod) for b, mod in self.mods.items()}
        h = self.var.step(self._view(self.x_flat, si, self.spec.width), mods, self.schedule.layers[si], self.live)
        if self.head_in_graph:
            self._view(self.out_flat, si, self.spec.vae.vocab_size).copy_(
                self.var.get_logits(h, self.cond_BD[:r], self.kernels))
        else:
            self._view(self.out_flat, si, self.spec.width).copy_(h)

    def _modulations(self) -> None:
        self.mods = self.var.modulations(self.var.cond_for_blocks(self.cond_BD), self.blocks)

    def _generation(self) -> None:
        self._modulations()
        for si in range(self.spec.num_scales):
            self._run_scale(si)
        self.live.release()

    def _capture(self, device: torch.device) -> None:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):           # warm-up outside capture (cuBLAS handles, autotuning, compile)
            self._generation()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()                  # the warm-up's blocks: the graphs' pool replaces them
        pool = torch.cuda.graph_pool_handle()
        self.mods_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.mods_graph, pool=pool):
            self._modulations()
        for si in range(self.spec.num_scales):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self._run_scale(si)
            self.cache.bytes_at.append(self.live.nbytes())
            self.graphs.append(g)
        # the cache's last buffers stay referenced (the last graphs write them); its Python state is the capture's

    # ---- ScaleStep ---------------------------------------------------------------------------------------
    def start(self, cond_BD: torch.Tensor, labels_2B: torch.Tensor | None = None) -> None:
        self.var.refresh_inference_consts(self.kernels)   # parameters changed in place since capture: caches follow
        self.cond_BD.copy_(cond_BD)
        if self.capture:
            self.mods_graph.replay()
        else:
            self._modulations()
            self.live.release()
            self.cache.bytes_at = []

    def begin_scale(self, si: int) -> None:
        """Captured: only the hooks' view moves (the allocation step of scale ``si`` is inside its graph)."""
        self.cache.scale = si
        if not self.capture:
            self.live.begin_scale(si)                     # idempotent: _run_scale repeats it
            self.cache.bytes_at.append(self.live.nbytes())

    def input_buffer(self, si: int) -> torch.Tensor:
        """The static input of scale ``si``: the loop writes the rows here, so the input exists once."""
        return self._view(self.x_flat, si, self.spec.width)

    def run(self, si: int, x_BlC: torch.Tensor, latent_BlCv: torch.Tensor | None = None) -> ScaleLogits:
        """Scale ``si``'s logits (or hidden state), valid until that scale runs again."""
        x_in = self._view(self.x_flat, si, self.spec.width)
        if x_BlC.data_ptr() != x_in.data_ptr():           # scale 0 (and callers that built their own rows)
            x_in.copy_(x_BlC)
        if self.capture:
            self.graphs[si].replay()
        else:
            self._run_scale(si)
        if self.head_in_graph:
            return FullLogits(self._view(self.out_flat, si, self.spec.vae.vocab_size), self.batch)
        return HiddenLogits(self.var, self._view(self.out_flat, si, self.spec.width), self.cond_BD, self.kernels,
                            self.batch)

    def finish(self) -> None:
        """The buffers stay: the next generation with this key replays against them."""
        if not self.capture:
            self.live.release()
