"""VARPipeline: build or load a VAR + VQ-VAE, teacher-force, generate under any depth schedule, decode.

The generation loop follows VAR_REFERENCE §3 (CFG with the linear ramp t = cfg·si/(S−1), top-k then top-p, the
next-scale input built from the cumulative f_hat); the schedule picks the blocks per scale and the KV cache holds
exactly what they process. Same seed, labels, settings, device and dtype -> identical images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .cuda_graphs import GraphedScales
from .kernels import Kernels, kernels_for
from .kv_cache import KVCache
from .plan import InferencePlan
from .sampling import sample_tokens
from .scale_step import CollaborativeStep, EagerStep, ScaleLogits, ScaleStep
from .schedule import DepthSchedule
from .spec import VARSpec, get as get_spec
from .var import VAR
from .vqvae import VQVAE

WEIGHTS_DIR = Path(__file__).parent / "weights"


def locate_weights(spec: VARSpec) -> tuple[str, Path, Path]:
    """("shipped" | "hf", VAR file, VQ-VAE file) of a model without explicit files: the weights shipped in
    model/weights/<name>/, else the official files (HF cache, else a hub download); else ``WeightsNotFound``.
    The one lookup the pipeline, the trainer and ``varbench.target`` share."""
    from . import checkpoint
    shipped = WEIGHTS_DIR / spec.name
    if (shipped / "var.safetensors").exists() and (shipped / "vae.safetensors").exists():
        return "shipped", shipped / "var.safetensors", shipped / "vae.safetensors"
    if not spec.official:
        raise checkpoint.WeightsNotFound(f"{spec.name} has no published weights")
    return ("hf", *checkpoint.resolve_official(spec))


@dataclass
class GenerateOutput:
    images: torch.Tensor | None          # (B, 3, H, W) in [0, 1], None when decode=False
    indices: list[torch.Tensor]          # one (B, pn²) int64 per scale
    f_hat: torch.Tensor                  # (B, Cvae, pn_last, pn_last) float32
    logits: list[torch.Tensor] = field(default_factory=list)   # conditional logits per scale (return_logits)
    kv_peak_bytes: int = 0
    plan: InferencePlan | None = None    # the plan the generation ran under


def _no_phase(name: str, si: int, event: str) -> None:
    """``generate`` without an ``on_phase`` hook."""


def _scale_input(x_BlC: torch.Tensor, guided: bool, buf_RlC: torch.Tensor | None) -> torch.Tensor:
    """A scale's input rows: conditional and unconditional (the same tokens) with guidance, written into the
    step's static buffer when it has one (a graph's input), so a second copy of the input never exists."""
    if buf_RlC is None:
        return x_BlC.repeat(2, 1, 1) if guided else x_BlC
    B = x_BlC.shape[0]
    buf_RlC[:B].copy_(x_BlC)
    if guided:
        buf_RlC[B:].copy_(x_BlC)
    return buf_RlC


class VARPipeline:
    def __init__(self, spec: VARSpec, var: VAR, vae: VQVAE, device: torch.device, dtype: torch.dtype,
                 weights: str = "random", plan: InferencePlan | None = None):
        self.spec, self.var, self.vae = spec, var, vae
        self.device, self.dtype, self.weights = torch.device(device), dtype, weights
        self._graphed: dict[tuple, ScaleStep] = {}
        self.graph_factory: Callable[..., ScaleStep] = GraphedScales   # tests substitute a fake graphed step
        self._decoder_compiled = False
        self._plan_choices: dict[str, Any] = {}
        self.refiner: VAR | None = None       # the code method's second model (set_refiner)
        self.plan = plan or InferencePlan.resolve(self.device, dtype)

    # ---- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: VARSpec | str, device: str | torch.device = "cpu", seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> "VARPipeline":
        """Random init (finite everywhere, the VQ-VAE included), reproducible from ``seed``."""
        spec = get_spec(spec) if isinstance(spec, str) else spec
        device = torch.device(device)
        # built on the target device (fast init of billions of parameters); the same seed gives the same weights
        # on the same device type
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
            torch.manual_seed(seed)
            var, vae = VAR(spec), VQVAE(spec.vae, spec.patch_nums)
        if device.type != "cpu":      # generation never encodes: the encoder waits on the CPU (VQVAE.place)
            vae.encoder.cpu()
            vae.quant_conv.cpu()
        return cls(spec, var.to(dtype=dtype).eval(), vae.eval(), device, dtype)._apply_plan()

    @classmethod
    def from_pretrained(cls, name: str | VARSpec, var_ckpt: str | Path | None = None,
                        vae_ckpt: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "VARPipeline":
        """Official .pth or our safetensors; without paths: shipped weights (var-toy) or the HF cache/hub."""
        spec = get_spec(name) if isinstance(name, str) else name
        if var_ckpt is None or vae_ckpt is None:
            _, found_var, found_vae = locate_weights(spec)
            var_ckpt, vae_ckpt = var_ckpt or found_var, vae_ckpt or found_vae
        if 18 * spec.width ** 2 * spec.depth < 50_000_000:       # small (toy/tiny): a CPU build takes ms
            var, vae = VAR(spec), VQVAE(spec.vae, spec.patch_nums)
        else:                                                    # large: no init work for weights we overwrite
            with torch.device("meta"):
                var, vae = VAR(spec), VQVAE(spec.vae, spec.patch_nums)
            var, vae = var.to_empty(device="cpu"), vae.to_empty(device="cpu")
        pipe = cls(spec, var, vae, torch.device("cpu"), torch.float32, weights=str(var_ckpt))
        pipe.load_official(var_ckpt, vae_ckpt)
        return pipe.to(device, dtype)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "VARPipeline":
        """Move and cast; the plan is resolved again for the new device (the explicit choices stay). On CUDA
        with a 16-bit compute dtype the decoder runs in that dtype too (0.7× the fp32 decode time). The VQ-VAE's
        encoder stays behind until something encodes on the new device (``VQVAE.place``)."""
        self.device = torch.device(device)
        self.dtype = dtype or self.dtype
        self.var.to(device=self.device, dtype=self.dtype).eval()
        self.vae.place(self.device).eval()        # the encoder follows on first use (generation never encodes)
        self._graphed.clear()
        return self.set_plan(None)

    def load_official(self, var_sd: Mapping[str, torch.Tensor] | str | Path,
                      vae_sd: Mapping[str, torch.Tensor] | str | Path) -> "VARPipeline":
        """Strict load of official (or our) state dicts; raises CheckpointError naming the bad keys."""
        from . import checkpoint
        if isinstance(var_sd, (str, Path)):
            self.weights = str(var_sd)
            var_sd = checkpoint.load_state_file(var_sd)
        else:
            self.weights = "state_dict"
        if isinstance(vae_sd, (str, Path)):
            vae_sd = checkpoint.load_state_file(vae_sd)
        checkpoint.load_strict(self.var, var_sd, f"VAR ({self.spec.name})")
        checkpoint.load_strict(self.vae, vae_sd, "VQ-VAE")
        self.var.eval()
        self.vae.eval()
        return self

    # ---- inference --------------------------------------------------------------------------------------
    def _labels(self, labels_B: torch.Tensor | Sequence[int] | int, batch: int | None = None) -> torch.Tensor:
        if isinstance(labels_B, int):
            labels_B = [labels_B] * (batch or 1)
        labels = torch.as_tensor(labels_B, dtype=torch.long, device=self.device).view(-1)
        return torch.where(labels < 0, self.spec.num_classes, labels)

    @torch.no_grad()
    def teacher_forcing(self, labels_B, idx_per_scale: list[torch.Tensor],
                        schedule: DepthSchedule | None = None) -> torch.Tensor:
        """Conditional logits (B, L, V) float32 for ground-truth indices (no class dropout, no CFG)."""
        x_BLCv = self.vae.quantize.idx_to_var_input([i.to(self.device) for i in idx_per_scale])
        was = self.var.training
        self.var.eval()
        try:
            return self.var(self._labels(labels_B), x_BLCv, schedule, kernels=kernels_for(self.plan))
        finally:
            self.var.train(was)

    @torch.no_grad()
    def generate(self, labels_B, cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96, seed: int = 0,
                 schedule: DepthSchedule | None = None, keep_skipped: bool = False,
                 k_dtype: torch.dtype | None = None, decode: bool = True, return_logits: bool = False,
                 on_scale_end: Callable[[int, KVCache], None] | None = None,
                 cuda_graphs: bool | None = None,
                 on_scale_begin: Callable[[int, KVCache], None] | None = None,
                 plan: InferencePlan | None = None, teacher_indices: Sequence[torch.Tensor] | None = None,
                 logits_kind: str = "conditional",
                 on_phase: Callable[[str, int, str], None] | None = None) -> GenerateOutput:
        """Class-conditional samples under ``schedule`` (default full depth), run as ``plan`` says (default: the
        pipeline's). ``cuda_graphs`` overrides the plan's field (on CUDA only): per-scale CUDA graphs, captured once
        per (plan, schedule, batch, keep_skipped) key, holding the same cache bytes as the eager path (skipped
        blocks' buffers freed unless ``keep_skipped``). Hooks get (scale, cache) before and after each scale on
        either path; a graphed cache shows its bytes only (``CapturedCache``).

        ``teacher_indices`` (one (B, pn²) tensor per scale): feed these tokens instead of sampling, under any plan
        (a KV policy, fp8 cache, guidance-skip, a refiner all act): what the sensitivity metrics score a
        configuration on. ``logits_kind`` of ``return_logits``: "conditional" or "guided" (what the sampler
        draws from: the CFG ramp, before top-k/top-p; the conditional logits on scales without guidance).
        ``on_phase(name, scale, "begin" | "end")`` brackets each phase inside a scale: "blocks" (the step's run;
        a graph holds the head too), "sampling" (head, CFG, top-k/top-p, with "head" nested around each chunk's
        logits on the eager path) and "next_input" (the VQ-VAE step to the next scale's map): a profiler's
        named ranges (synchronise yourself if timing)."""
        if logits_kind not in ("conditional", "guided"):
            raise ValueError(f"logits_kind must be conditional or guided, got {logits_kind!r}")
        plan = plan or self.plan
        if cuda_graphs is not None:
            plan = plan.replace(cuda_graphs=bool(cuda_graphs) and self.device.type == "cuda")
        spec, var, quant = self.spec, self.var, self.vae.quantize
        schedule = (schedule or DepthSchedule.full(spec)).validate(spec)
        labels = self._labels(labels_B)
        B, S = labels.shape[0], spec.num_scales
        kernels = kernels_for(plan)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        labels_2B = torch.cat((labels, torch.full_like(labels, spec.num_classes)))
        cond_BD = var.class_emb(labels_2B)
        lvl_pos_1LC = var.lvl_pos()                                     # float32, like the residual stream
        x_BlC = cond_BD.float().unsqueeze(1) + var.pos_start.float() + lvl_pos_1LC[:, :1]
        pn_last = spec.patch_nums[-1]
        f_hat = torch.zeros(B, spec.vae.z_channels, pn_last, pn_last, device=self.device)
        stepper = self.scale_step(plan, schedule, B, keep_skipped, k_dtype)
        phase = on_phase or _no_phase
        stepper.start(cond_BD, labels_2B)
        indices, logits_out, kv_peak, latent_BlCv = [], [], 0, None
        for si, pn in enumerate(spec.patch_nums):
            t = cfg * si / (S - 1) if S > 1 else cfg
            stepper.begin_scale(si)
            cache = stepper.cache               # the step's cache of this scale (code: the drafter's, then the refiner's)
            if on_scale_begin is not None:
                on_scale_begin(si, cache)
            phase("blocks", si, "begin")
            out = stepper.run(si, x_BlC, latent_BlCv)
            phase("blocks", si, "end")
            x_BlC = latent_BlCv = None          # the scale's input is dead once its blocks ran
            kv_peak = max(kv_peak, cache.nbytes())
            forced = None if teacher_indices is None else teacher_indices[si].to(self.device)
            phase("sampling", si, "begin")
            idx_Bl, cond_logits = self._sample_scale(out, B, t, top_k, top_p, gen, return_logits, plan, kernels,
                                                     forced, logits_kind == "guided",
                                                     None if on_phase is None else lambda e: on_phase("head", si, e))
            phase("sampling", si, "end")
            out = None                          # dead now: at a scale boundary only the cache and small state live
            if return_logits:
                logits_out.append(cond_logits)
            indices.append(idx_Bl)
            phase("next_input", si, "begin")
            h_BChw = quant.embed_idx(idx_Bl, pn)
            f_hat, next_BlCv = quant.next_input(si, f_hat, h_BChw)
            phase("next_input", si, "end")
            if on_scale_end is not None:
                on_scale_end(si, cache)
            if next_BlCv is not None:
                latent_BlCv = next_BlCv
                b0, b1 = spec.begin_ends[si + 1]
                x_BlC = var.embed_words(next_BlCv) + lvl_pos_1LC[:, b0:b1]
                guided = plan.cfg_until is None or si + 1 < plan.cfg_until
                x_BlC = _scale_input(x_BlC, guided, stepper.input_buffer(si + 1))
        stepper.finish()
        images = self.decode(f_hat) if decode else None
        return GenerateOutput(images, indices, f_hat, logits_out, kv_peak, plan)

    def _sample_scale(self, out: ScaleLogits, B: int, t: float, top_k: int, top_p: float, gen: torch.Generator,
                      return_logits: bool, plan: InferencePlan, kernels: Kernels,
                      forced_Bl: torch.Tensor | None = None, keep_guided: bool = False,
                      head_phase: Callable[[str], None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head, CFG and sampling in batch chunks of at most ``plan.sample_chunk_logits`` logits, so the float32
        logits of a large batch never exist all at once (1.4 GB at d30 batch 64). The chunking depends only on
        (B, pn²). ``forced_Bl``: the tokens to take instead of sampling (no noise is drawn)."""
        n, V = out.rows(), self.spec.vae.vocab_size
        step = max(1, plan.sample_chunk_logits // (n * V))
        idx, kept = [], []
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            if head_phase is not None:
                head_phase("begin")
            cond, uncond = out.pair(b0, b1)
            if head_phase is not None:
                head_phase("end")
            guided = cond if uncond is None else torch.lerp(uncond, cond, 1 + t)
            if forced_Bl is None:
                idx.append(sample_tokens(guided, top_k, top_p, gen, kernels))
            if return_logits:
                kept.append((guided if keep_guided else cond).clone())
        idx_Bl = forced_Bl if forced_Bl is not None else torch.cat(idx)
        return idx_Bl, (torch.cat(kept) if return_logits else None)

    def scale_step(self, plan: InferencePlan, schedule: DepthSchedule, batch: int, keep_skipped: bool = False,
                   k_dtype: torch.dtype | None = None) -> ScaleStep:
        """The per-scale step ``plan`` asks for: a fresh ``EagerStep``, or the graphed one of this key (captured on
        first use; one captured configuration at a time bounds the memory). The key is the plan whole, so a
        capture made under one plan is never replayed under another."""
        if plan.refine_from is not None:
            if self.refiner is None:
                raise ValueError("plan.refine_from needs a refiner: pipe.set_refiner(var)")
            if plan.cuda_graphs:
                raise ValueError("collaborative decoding (code) runs without CUDA graphs")
            return CollaborativeStep(self.var, self.refiner, plan.refine_from, batch, self.dtype, self.device, plan,
                                     keep_skipped, k_dtype)
        if not plan.cuda_graphs:
            return EagerStep(self.var, schedule, batch, self.dtype, self.device, plan, keep_skipped, k_dtype)
        key = self.graph_key(plan, schedule, batch, k_dtype, keep_skipped)
        if key not in self._graphed:
            self._graphed.clear()
            self._graphed[key] = self.graph_factory(self.var, schedule, batch, self.dtype, self.device, plan,
                                                    k_dtype, keep_skipped)
        return self._graphed[key]

    def graph_key(self, plan: InferencePlan, schedule: DepthSchedule, batch: int,
                  k_dtype: torch.dtype | None, keep_skipped: bool = False) -> tuple:
        """Everything a capture depends on: the plan, the schedule, the batch, the dtypes and whether skipped
        blocks keep their buffers (the captured allocation steps differ)."""
        return (plan, schedule, batch, k_dtype, self.dtype, bool(keep_skipped))

    def set_refiner(self, refiner: VAR | None) -> "VARPipeline":
        """The refiner of collaborative decoding (plan.refine_from): another VAR that shares this one's VQ-VAE,
        scales and classes, in this pipeline's dtype and device (its memory counts with this one's)."""
        if refiner is not None:
            a, b = self.spec, refiner.spec
            if (a.vae, a.patch_nums, a.num_classes) != (b.vae, b.patch_nums, b.num_classes):
                raise ValueError(f"refiner {b.name} does not share {a.name}'s VQ-VAE, scales and classes")
            refiner = refiner.to(device=self.device, dtype=self.dtype).eval()
        self.refiner = refiner
        return self

    # ---- the inference plan ------------------------------------------------------------------------------
    def set_plan(self, plan: InferencePlan | None = None, **choices: Any) -> "VARPipeline":
        """Run as ``plan``; or, without one, re-resolve the plan for this device with ``choices`` (plan fields;
        earlier choices stay). The decoder follows the plan's decode fields (and is compiled with ``compiled``)."""
        if plan is None:
            self._plan_choices.update(choices)
            plan = InferencePlan.resolve(self.device, self.dtype, **self._plan_choices)
        else:
            self._plan_choices = plan.as_dict()
        self.plan = plan
        return self._apply_plan()

    def _apply_plan(self) -> "VARPipeline":
        plan = self.plan
        self.set_decode_dtype(plan.decode_torch_dtype, channels_last=plan.decode_channels_last)
        if self.device.type == "cuda":
            # cuDNN's autotuning is one process-wide torch setting: set from the plan here (set around each decode
            # call instead, the compiled decoder did not speed up: 113.7 vs 113.4 ms at batch 64 on the H200)
            torch.backends.cudnn.benchmark = plan.decode_cudnn_benchmark
            if plan.decode_cudnn_benchmark_limit is not None:
                torch.backends.cudnn.benchmark_limit = plan.decode_cudnn_benchmark_limit
        if plan.compiled and not self._decoder_compiled:
            # static shapes: a decode sees at most two chunk shapes (the chunk and the remainder), and a batch
            # dimension made dynamic (automatic dynamic, or a sweep worker's on-disk profile of an earlier batch)
            # gives convolution kernels that do not know their size
            self.vae.decoder.compile(dynamic=False)
            self._decoder_compiled = True
        return self

    @property
    def compiled(self) -> bool:
        return self.plan.compiled

    def compile(self, enabled: bool = True) -> "VARPipeline":
        """The CUDA fast path through torch.compile: fused element-wise pieces in the blocks during ``generate``
        (eager and inside CUDA graphs) and a compiled VQ-VAE decoder. The first calls compile (tens of seconds);
        numbers are the same function to bf16 rounding (tests/test_fast_path.py). No-op on CPU."""
        return self.set_plan(compiled=bool(enabled))

    def set_decode_dtype(self, dtype: torch.dtype, channels_last: bool = False) -> "VARPipeline":
        """Run the VQ-VAE decoder in ``dtype`` (bf16 is the fast decode path), optionally channels-last."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for m in (self.vae.post_quant_conv, self.vae.decoder):
            m.to(dtype=dtype, memory_format=fmt)
        return self

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Images in [0,1], decoded ``chunk`` (default: the plan's ``decode_chunk``) at a time: the decoder's 256²
        activations of a whole batch would dominate peak memory (13 GB more than generation at d30 batch 64)."""
        chunk = chunk or self.plan.decode_chunk
        B, size = f_hat.shape[0], self.vae.image_size
        out = torch.empty(B, 3, size, size, device=f_hat.device)      # chunks land in place: one copy of the images
        for b0 in range(0, B, chunk):
            out[b0:b0 + chunk] = self.vae.fhat_to_img(f_hat[b0:b0 + chunk])
        return out
