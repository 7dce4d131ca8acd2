"""Typed result rows: every row kind's fields with units and direction, its key fields and its rows file.

One place, so the writers (sweep, sensitivity, trace, the demo's models table) and the readers (resume, the gate,
the report, the CLI tables) cannot drift apart: a field's unit and whether higher or lower is better are said once
here and read everywhere else. Rows stay plain JSON dicts on disk (units in field names, DESIGN "Measurement
rules"); this module describes them, it does not wrap them. It imports nothing from varbench at module level so
every other module may import it.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Direction = Literal["higher", "lower"] | None
DIRECTIONS = ("higher", "lower", None)


@dataclass(frozen=True)
class Field:
    """One row field. ``optional``: some rows lack it (a device, a status or rows written before it existed)."""

    name: str
    unit: str | None = None
    direction: Direction = None
    doc: str = ""
    optional: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{self.name}: direction {self.direction!r} is not 'higher', 'lower' or None")


@dataclass(frozen=True)
class RowKind:
    """A row kind (the row's ``kind`` value): where it is written and what identifies one measured point.

    ``key_fields``: a row's identity for resume (a rerun skips points whose key already has a done row);
    ``key_defaults``: the value of key fields that rows written before the field existed lack;
    ``done_statuses``: statuses that count as finished (empty where rows carry no status).
    """

    name: str
    rows_file: str
    key_fields: tuple[str, ...]
    fields: tuple[Field, ...]
    key_defaults: Mapping[str, Any] = field(default_factory=dict)
    done_statuses: tuple[str, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        missing = [k for k in (*self.key_fields, *self.key_defaults) if k not in names]
        if dup or missing:
            raise ValueError(f"row kind {self.name}: duplicate fields {dup}, key fields not declared {missing}")
        object.__setattr__(self, "key_defaults", types.MappingProxyType(dict(self.key_defaults)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def required(self) -> tuple[str, ...]:
        """Fields every row of this kind carries (null where nothing was measured)."""
        return tuple(f.name for f in self.fields if not f.optional)

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


def _opt(f: Field) -> Field:
    return Field(f.name, f.unit, f.direction, f.doc, optional=True)


# ---- fields shared by several kinds (one definition each, so units agree across kinds) -----------------------------
KIND = Field("kind", doc="the row kind (a key of ROW_KINDS)")
MODEL = Field("model", doc="registry name of the model (model.spec)")
WEIGHTS = Field("weights", doc='"random" or the VAR checkpoint path')
DEPTH = Field("depth", "blocks", doc="blocks of the subnet")
SWITCH = Field("switch", "scale index", doc="first scale that runs the subnet (VARiant N)")
SELECT = Field("select", doc="isometric | nested: which blocks a subnet keeps")
BATCH = Field("batch", "images", doc="images per generation")
DTYPE = Field("dtype", doc="bf16 | fp16 | fp32")
DEVICE = Field("device", doc="cpu | cuda | cuda:N")
LAYERS = Field("layers", "blocks", doc="indices of the blocks the subnet runs")
SCHEDULE = Field("schedule", doc="the depth schedule, described per scale")
SCALE = Field("scale", "scale index", doc="index of a scale (0 = the 1x1 token map)")
RUN_ID = Field("run_id", doc="one trace run: its start time and point")
NOTICE = Field("weights_notice", doc="why random weights were used (said loudly)")
KV_BYTES = Field("kv_bytes", "bytes", "lower", "KV cache peak bytes")
KV_ANALYTIC = Field("kv_bytes_analytic", "bytes", "lower", "KV cache bytes by the analytic formula")
FLOPS = Field("flops", "FLOP", "lower", "transformer FLOPs (with CFG)")
PEAK_ALLOC = Field("peak_allocated_bytes", "bytes", "lower", "torch allocator peak (GPU; null on CPU)")
RSS_PEAK = Field("rss_peak_bytes", "bytes", "lower", "process RSS peak (CPU)")
RESERVED = Field("reserved_bytes", "bytes", None, "torch allocator reserved (GPU)")
NVML_PEAK = Field("nvml_peak_used_bytes", "bytes", "lower", "NVML device-used peak (GPU, sampled)")
NVML_PEAK_PROC = Field("nvml_peak_process_used_bytes", "bytes", "lower", "NVML peak of this process (GPU)")
NVML_REASON = Field("nvml", doc="whether NVML was read, and why not")
POINT = (MODEL, WEIGHTS, DEPTH, SWITCH, SELECT, BATCH, DTYPE, DEVICE)
# energy of a GPU sweep point (varbench.measuring.energy): NVML's board counter around a window of generate + decode
ENERGY = (
    Field("energy_j_per_image", "J", "lower", "GPU board energy per image, generate + decode (energy window)"),
    Field("images_per_kwh", "img/kWh", "higher", "images per kWh of board energy (3.6e6 / energy_j_per_image)"),
    Field("avg_power_w", "W", None, "mean board power over the energy window (energy / window)"),
    Field("peak_power_w", "W", None, "largest sampled board power (NVML; a 1 s average on Ampere and newer)"),
    Field("sm_clock_mhz", "MHz", None, "median sampled SM clock over the energy window"),
    Field("energy_method", doc="nvml_total_energy | power_integral | null: how energy_j was obtained"),
    Field("energy_null_reason", doc="why the energy fields are null (CPU, no NVML, pass disabled)"),
    Field("energy_note", doc="why the counter was not used (power_integral rows)"),
    Field("energy_j", "J", None, "board energy over the whole window"),
    Field("energy_window_s", "s", None, "wall time of the energy window"),
    Field("energy_images", "images", None, "images generated (and decoded) in the window"),
    Field("energy_power_samples", "count", None, "power / SM clock samples inside the window"),
    Field("energy_sampler", doc="process | thread: how power was sampled"),
)
# the drill-down behind a point (--profile; varbench.measuring.profiling): paths relative to the results folder
PROFILE = (
    Field("profile_trace", doc="torch.profiler Chrome trace of one generation + decode (open in Perfetto)"),
    Field("profile_memory_snapshot", doc="CUDA allocator snapshot pickle (open in pytorch.org/memory_viz)"),
    Field("profile_memory_snapshot_reason", doc="why there is no memory snapshot (CPU)"),
    Field("profile_scale_ms", "ms", "lower", "time of each scale's range in the profiled generation (a list)"),
    Field("profile_phase_ms", "ms", "lower", "time per phase (blocks, head, sampling, decode, other), exclusive"),
    Field("profile_scale_phase_ms", "ms", "lower", "per scale: its phases' exclusive times (a list of dicts)"),
    Field("profile_note", doc="what the phase ranges cover on this path"),
    Field("profile_error", doc="why profiling failed (the point's other measurements stand)"),
)

# ---- sweep: one row per (depth, switch, batch) point, written by the sweep parent from its worker's result --------
_MEASURED = (
    Field("n", "count", doc="timed generations"),
    Field("latency_ms_p50", "ms", "lower", "median latency of generate(decode=False)"),
    Field("latency_ms_p90", "ms", "lower", "90th percentile latency"),
    Field("latency_ms_p99", "ms", "lower", "99th percentile latency"),
    Field("latency_ms_mean", "ms", "lower", "mean latency"),
    Field("decode_ms_p50", "ms", "lower", "median VQ-VAE decode time"),
    Field("latency_incl_decode_ms_p50", "ms", "lower", "median latency + median decode"),
    Field("images_per_s", "img/s", "higher", "batch / (latency + decode)"),
    Field("scale_ms_p50", "ms", "lower", "median time of each scale (a list)"),
    KV_BYTES, KV_ANALYTIC, PEAK_ALLOC, NVML_PEAK,
)
SWEEP = RowKind(
    "sweep", "sweep.jsonl",
    key_fields=("model", "weights", "depth", "switch", "select", "batch", "dtype", "device", "keep_skipped",
                "cuda_graphs", "compile", "plan_overrides", "method"),
    key_defaults={"cuda_graphs": False, "compile": False, "plan_overrides": None, "method": None},
    done_statuses=("ok", "oom"),
    doc="latency and memory of one point, measured in its own worker process",
    fields=(
        KIND, *POINT,
        Field("keep_skipped", doc="skipped blocks keep their KV caches (the paper's accounting)"),
        Field("cuda_graphs", doc="per-scale CUDA graph replay was asked"),
        Field("compile", doc="torch.compile of the fast path was asked"),
        Field("plan_overrides", doc="explicit inference-plan fields asked for (null: the device's resolved plan)",
              optional=True),
        Field("method", doc="the efficiency-method configuration, canonical (model/methods.py)", optional=True),
        Field("method_params", doc="its parameters, one dict per method", optional=True),
        Field("refiner_weights", doc="the code method's refiner weights, source:name@sha256", optional=True),
        LAYERS,
        Field("status", doc="ok | oom | error"),
        Field("error", doc="what went wrong (null when ok)"),
        *_MEASURED,
        *(_opt(f) for f in (
            NOTICE, SCHEDULE, NVML_REASON, FLOPS, RSS_PEAK, RESERVED, NVML_PEAK_PROC,
            Field("plan", doc="the inference plan the point ran under (model.plan.InferencePlan.as_dict())"),
            Field("execution", doc="eager | compile | graphs: how the point's generation ran"),
            Field("latency_ms_min", "ms", "lower", "fastest timed generation"),
            Field("latency_ms_samples", "ms", "lower", "every timed latency (the gate's rank test)"),
            Field("decode_n", "count", doc="timed decodes"),
            Field("images_per_s_excl_decode", "img/s", "higher", "batch / latency"),
            Field("tflop_per_s", "TFLOP/s", "higher", "flops / latency"),
            Field("cpu_threads", "count", doc="torch intra-op threads of the worker"),
            Field("cpu_affinity_count", "count", doc="CPUs the worker was pinned to (several GPUs)"),
            Field("gpu_index", doc="physical GPU the worker saw (several GPUs)"),
            Field("baseline_allocated_bytes", "bytes", None, "allocated before timing: weights (GPU)"),
            Field("peak_allocated_gen_bytes", "bytes", "lower", "allocator peak of generation alone (GPU)"),
            Field("first_call_s", "s", None, "the first (untimed) generation: compile or its on-disk cache, graph "
                  "capture"),
            Field("nvml_baseline_used_bytes", "bytes", None, "NVML device used before the NVML pass (GPU)"),
            Field("nvml_samples", "count", doc="NVML samples taken"),
            Field("nvml_sample_hz", "Hz", doc="achieved NVML sampling rate"),
            Field("nvml_sampler", doc="process | thread: how NVML was sampled"),
            Field("returncode", doc="the worker's exit code (failed points)"),
            *ENERGY, *PROFILE,
        )),
    ),
)

# ---- sensitivity: one row per (cell, metric) of the scale x depth matrix ------------------------------------------
SENSITIVITY = RowKind(
    "sensitivity", "sensitivity.jsonl",
    key_fields=("model", "weights", "mode", "scale", "group", "depth", "select", "metric", "samples", "batch",
                "seed", "cfg", "top_k", "top_p", "dtype", "device", "fid_ref", "kl_kind", "method"),
    key_defaults={"method": None},
    doc="one quality metric of one cell (or of one method / per-scale schedule), scored against the full network",
    fields=(
        KIND, MODEL, WEIGHTS, SELECT,
        Field("samples", "count", doc="images scored per cell"), BATCH,
        Field("seed", doc="first batch's seed"), Field("cfg", doc="classifier-free guidance scale"),
        Field("top_k", doc="sampling top-k"), Field("top_p", doc="sampling top-p"), DTYPE, DEVICE,
        Field("fid_ref", doc="FID reference statistics or folder (null: the full network)"),
        Field("mode", doc="single | from | groups | reference | method | schedule"), SCALE,
        Field("group", doc='"lo-hi" scale range (groups mode)'), DEPTH, LAYERS, SCHEDULE, KV_BYTES, FLOPS,
        Field("metric", doc="which quality metric `value` holds (a key of METRICS)"),
        Field("value", "metric unit", doc="the metric's value, in the unit of METRICS[metric]"),
        Field("cell_seconds", "s", doc="time to score the cell (null for the reference)"),
        _opt(Field("per_scale", "metric unit", doc="the metric per scale (KL, token agreement)")),
        _opt(Field("real_fd", "FD", doc="toy FD of as many real images: the floor at this sample count")),
        # optional only for rows written before intervals existed; every row written now carries them
        *(_opt(f) for f in (
            Field("kl_kind", doc="guided (the sampled CFG, top-k/top-p distribution) | conditional; null: not KL"),
            Field("ci_low", "metric unit", doc="lower end of the 95% interval of `value` over the samples"),
            Field("ci_high", "metric unit", doc="upper end of the 95% interval of `value` over the samples"),
            Field("n", "count", doc="samples the value and its interval are computed over"),
            Field("ci_method", doc="bca-bootstrap | percentile-bootstrap | wilson | exact | none"),
        )),
        *(_opt(f) for f in (     # rows of mode method / schedule only
            Field("method", doc="the method configuration, canonical (model/methods.py), or schedule:depths=... "
                  "for a per-scale schedule (varbench plan)"),
            Field("method_params", doc="its parameters, one dict per method"),
            Field("predicted_loss", "metric unit", doc="the plan's predicted loss (sum of single-scale losses)"),
            Field("plan_metric", doc="the metric the plan's loss was predicted from"),
            Field("plan_file", doc="the plan.json the schedule came from"),
        )),
    ),
)

# ---- fid: one row per configuration of `varbench fid` (real samples, a locked protocol) ---------------------------
FID = RowKind(
    "fid", "fid.jsonl",
    key_fields=("model", "weights", "method", "n", "classes", "cfg", "top_k", "top_p", "seed", "batch",
                "shard_images", "dtype", "device", "ref", "extractor", "extractor_weights", "resamples",
                "is_splits"),
    doc="FID and Inception score of one configuration's samples against reference statistics",
    fields=(
        KIND, MODEL, WEIGHTS, DEPTH, SWITCH, SELECT, LAYERS, SCHEDULE, KV_BYTES, FLOPS, DTYPE, DEVICE, BATCH,
        Field("method", doc="the efficiency-method configuration, canonical (model/methods.py)"),
        Field("method_params", doc="its parameters, one dict per method"),
        Field("protocol", doc='"standard" (50 per class x 1000 classes, cfg 1.5, top-k 900, top-p 0.96) | "proxy"'),
        Field("n", "count", doc="generated images scored (and the samples of the interval)"),
        Field("classes", "count", doc="distinct class labels (label i = i mod classes)"),
        Field("per_class", "images", doc="images per class (n / classes)"),
        Field("cfg", doc="classifier-free guidance scale"), Field("top_k", doc="sampling top-k"),
        Field("top_p", doc="sampling top-p"), Field("seed", doc="sampling seed (a batch's = seed * 2^32 + index)"),
        Field("shard_images", "images", doc="images per sample shard"),
        Field("image_size", "px", doc="side of the generated images"),
        Field("ref", doc="reference statistics: npz:<file>@sha256 or folder:<name>@<content sha256>"),
        Field("ref_n", "images", doc="images behind the reference statistics (null: an .npz without a count)"),
        Field("extractor", doc="feature network (inception-v3-compat: torch-fidelity's FID Inception)"),
        Field("extractor_weights", doc="its weights file, file:<name>@sha256"),
        Field("feature_dim", "count", doc="feature dimensions"),
        Field("fid", "FID", "lower", "Frechet distance of the samples' features to the reference statistics"),
        Field("ci_low", "metric unit", doc="lower end of the 95% interval of fid (FID)"),
        Field("ci_high", "metric unit", doc="upper end of the 95% interval of fid (FID)"),
        Field("ci_method", doc="feature-bootstrap-centred: feature rows resampled, FD recomputed, the spread "
              "centred on the estimate (the images are not regenerated)"),
        Field("resamples", "count", doc="bootstrap resamples of the interval"),
        Field("is_mean", "IS", "higher", "Inception score, mean over the splits"),
        Field("is_std", "IS", doc="standard deviation of the Inception score over the splits"),
        Field("is_splits", "count", doc="splits of the Inception score"),
        Field("plan", doc="the inference plan the samples were generated under"),
        Field("samples_dir", doc="folder of the sample shards, relative to the results folder"),
        Field("stats_seconds", "s", doc="time to extract features and compute the statistics"),
        *(_opt(f) for f in (
            NOTICE,
            Field("refiner_weights", doc="the code method's refiner weights, source:name@sha256"),
            Field("world_size", "count", doc="processes that generated the shards of this call"),
        )),
    ),
)

# ---- quality metrics: the `value` of a sensitivity row whose `metric` is the name ----------------------------------
METRICS: dict[str, Field] = {f.name: f for f in (
    Field("kl", "nats", "lower", "KL(full || subnet) per token, mean over scales, teacher-forced; kl_kind: of the "
          "sampled (guided, truncated) or the conditional distribution"),
    Field("token_agreement", "fraction", "higher", "tokens equal to the full network's under coupled sampling"),
    Field("psnr", "dB", "higher", "PSNR of coupled samples against the full network's images"),
    Field("ssim", "1", "higher", "SSIM of coupled samples against the full network's images"),
    Field("fid", "FID", "lower", "Frechet Inception distance (torch-fidelity)"),
    Field("toy_acc", "fraction", "higher", "toy classifier accuracy on the generated images"),
    Field("toy_fd", "FD", "lower", "Frechet distance of toy classifier features"),
    Field("kl_pretrained", "nats", "lower", "guided KL(pretrained full network || this network) per token, mean "
          "over scales, teacher-forced on the pretrained network's samples (scripts/toy_study.py)"),
)}

# ---- metrics the gate derives from rows (not row fields) -----------------------------------------------------------
DERIVED: dict[str, Field] = {f.name: f for f in (
    Field("latency_ratio", "x", "higher", "p50 latency of one depth over another in the same run (full/d2)"),
)}

# ---- trace: per-scale memory rows and one summary row per run (trace.jsonl), timeline lines (trace_timeline.jsonl) --
TRACE_FILE = "trace.jsonl"
TIMELINE_FILE = "trace_timeline.jsonl"
_SNAPSHOT = (
    Field("allocated_bytes", "bytes", None, "torch allocator allocated (GPU)"), PEAK_ALLOC, RESERVED,
    Field("rss_bytes", "bytes", None, "process RSS (CPU)"), RSS_PEAK,
    Field("nvml_device_used_bytes", "bytes", None, "NVML device used"),
    Field("nvml_process_used_bytes", "bytes", None, "NVML used by this process"),
)
TRACE_SCALE = RowKind(
    "trace_scale", TRACE_FILE, key_fields=(*(f.name for f in POINT), "run_id", "scale"),
    doc="memory at one scale boundary of a traced generation",
    fields=(
        KIND, *POINT, RUN_ID, SCALE, Field("pn", "tokens per side", doc="side of the scale's token map"),
        Field("tokens", "tokens", doc="tokens of the scale"), Field("blocks", "blocks", doc="blocks run at it"),
        Field("elapsed_ms", "ms", doc="since the generation started"),
        KV_ANALYTIC, Field("kv_bytes_cache", "bytes", "lower", "the KV cache's real bytes"), *_SNAPSHOT,
        Field("allocated_delta_bytes", "bytes", None, "allocated minus the generation's fixed state"),
        Field("allocated_delta_from_idle_bytes", "bytes", None, "allocated minus idle (weights loaded)"),
        Field("rss_delta_bytes", "bytes", None, "RSS minus idle"),
        Field("nvml_device_delta_bytes", "bytes", None, "NVML device used minus idle"),
        Field("nvml_process_delta_bytes", "bytes", None, "NVML process used minus idle"),
        _opt(Field("nvml_process_delta_trimmed_bytes", "bytes", None, "the same after empty_cache (last scale)")),
        _opt(Field("reserved_delta_trimmed_bytes", "bytes", None, "reserved minus idle after empty_cache (last)")),
    ),
)
TRACE = RowKind(
    "trace", TRACE_FILE, key_fields=(*(f.name for f in POINT), "run_id"),
    doc="summary of one traced generation",
    fields=(
        KIND, *POINT, RUN_ID, LAYERS, SCHEDULE, NOTICE, NVML_REASON,
        Field("scales", "count", doc="scale rows written"),
        Field("latency_ms", "ms", "lower", "the traced generation (sampler on)"),
        Field("decode_ms", "ms", "lower", "its decode"),
        Field("baseline", doc="the idle memory snapshot (after warm-up and empty_cache)"),
        Field("sampler_interval_ms", "ms", doc="asked NVML sampling interval"),
        Field("sampler_samples", "count", doc="NVML samples taken"), Field("sampler_hz", "Hz", doc="achieved rate"),
        Field("kv_bytes_analytic_peak", "bytes", "lower", "largest analytic KV bytes"),
        Field("kv_bytes_cache_peak", "bytes", "lower", "largest real KV bytes"),
        Field("kv_bytes_analytic_last", "bytes", "lower", "analytic KV bytes at the last scale"),
        Field("kv_bytes_cache_last", "bytes", "lower", "real KV bytes at the last scale"),
        Field("analytic_equals_cache", doc="analytic == real at every scale"),
        Field("generation_fixed_bytes", "bytes", None, "conditioning, modulations, f_hat"),
        Field("allocated_delta_last_bytes", "bytes", None, "allocator delta at the last scale"),
        Field("nvml_process_delta_last_bytes", "bytes", None, "NVML process delta at the last scale, trimmed"),
        Field("nvml_process_delta_last_untrimmed_bytes", "bytes", None, "the same before empty_cache"),
        Field("analytic_over_allocated_delta", "x", doc="analytic KV / allocator delta (last scale)"),
        Field("analytic_over_nvml_process_delta", "x", doc="analytic KV / NVML process delta (last scale)"),
        Field("sampler", doc="process | thread | none"),
        PEAK_ALLOC, RSS_PEAK, NVML_PEAK, NVML_PEAK_PROC,
        Field("latency_ms_p50_no_sampler", "ms", "lower", "overhead check: plain generations"),
        Field("latency_ms_p50_with_sampler", "ms", "lower", "overhead check: sampled generations"),
        Field("overhead_pairs", "count", doc="plain/sampled pairs"),
        Field("sampler_overhead_pct", "%", "lower", "sampler's latency overhead (p50)"),
        Field("sampler_overhead_pct_min", "%", "lower", "the same on the minima"),
        Field("files", doc="the files the trace wrote"),
        Field("plan", doc="the inference plan the generation ran under (model.plan.InferencePlan.as_dict())",
              optional=True),
        Field("execution", doc="eager | compile | graphs", optional=True),
        Field("method", doc="the efficiency-method configuration, canonical (model/methods.py)", optional=True),
        Field("method_params", doc="its parameters, one dict per method", optional=True),
        *(_opt(f) for f in PROFILE),
    ),
)
_TIMELINE = (KIND, MODEL, WEIGHTS, RUN_ID, Field("t_ms", "ms", doc="since the generation started"))
TRACE_SAMPLE = RowKind(
    "trace_sample", TIMELINE_FILE, key_fields=(), doc="one NVML sample (a timeline line, not a point)",
    fields=(*_TIMELINE, Field("device_used_bytes", "bytes", None, "NVML device used"),
            Field("process_used_bytes", "bytes", None, "NVML used by this process")))
TRACE_MARK = RowKind(
    "trace_mark", TIMELINE_FILE, key_fields=(), doc="a named instant of the timeline (a scale end...)",
    fields=(*_TIMELINE, Field("label", doc='e.g. "scale 3 end"')))

# ---- models: the analytic subnet table (``varbench models``, the demo's models.jsonl) -------------------------------
MODELS = RowKind(
    "models", "models.jsonl", key_fields=("model", "depth", "switch", "select"),
    doc="analytic cost of VARiant(depth, switch) against the full network, per image",
    fields=(
        KIND, MODEL, DEPTH, SWITCH, SELECT, LAYERS, SCHEDULE,
        Field("params", "count", "lower", "parameters of the standalone model of that depth"),
        Field("params_loaded", "count", "lower", "parameters of every block the schedule runs"),
        Field("kv_bytes", "bytes", "lower", "KV cache peak per image, skipped blocks freed (bf16, CFG)"),
        Field("kv_bytes_kept", "bytes", "lower", "the same with skipped blocks kept"),
        Field("kv_reduction", "fraction", "higher", "1 - kv_bytes / the full network's"),
        Field("kv_reduction_kept", "fraction", "higher", "the same with skipped blocks kept"),
        FLOPS, Field("flops_speedup", "x", "higher", "the full network's FLOPs / these"),
        _opt(WEIGHTS),
    ),
)

# ---- maxbatch: one row per search for the largest batch (varbench.workflows.maxbatch) ----------------------------------
MAXBATCH = RowKind(
    "maxbatch", "maxbatch.jsonl",
    key_fields=("model", "weights", "method", "dtype", "device", "cuda_graphs", "compile", "keep_skipped",
                "memory_limit_bytes"),
    doc="the largest batch of one configuration that fits a memory limit: the analytic prediction and the probes",
    fields=(
        KIND, MODEL, WEIGHTS, DEPTH, SWITCH, SELECT, DTYPE, DEVICE,
        Field("method", doc="the efficiency-method configuration, canonical (model/methods.py)"),
        Field("cuda_graphs", doc="probed with per-scale CUDA graph replay"),
        Field("compile", doc="probed with torch.compile"),
        Field("keep_skipped", doc="skipped blocks kept their KV caches"),
        Field("memory_limit_bytes", "bytes", doc="the memory a probe may use"),
        Field("limit_source", doc="where the limit came from (--memory-limit, NVML free memory, available RAM)"),
        Field("mechanism", doc="cuda-memory-fraction | device (no cap: the real device) | cpu-rss-peak"),
        Field("predicted_batch", "images", doc="largest batch whose analytic estimate is within the limit"),
        Field("measured_batch", "images", "higher", "largest batch a probe ran within the limit"),
        Field("capped", doc="the measured batch is --max-batch (larger may fit)"),
        Field("max_batch", "images", doc="the search's upper bound"),
        Field("granularity", "images", doc="the answer is exact within this many images"),
        Field("predicted_over_measured", "x", doc="predicted_batch / measured_batch"),
        Field("estimate_parts", "bytes", doc="the analytic estimate at the predicted batch, by part"),
        Field("estimate_fixed_bytes", "bytes", doc="the estimate at batch 0"),
        Field("estimate_bytes_per_image", "bytes", doc="the estimate's growth per image near the prediction"),
        Field("predicted_bytes_at_measured", "bytes", doc="the estimate at the measured batch"),
        Field("measured_peak_bytes", "bytes", "lower", "allocator peak (CUDA) / peak RSS growth (CPU) there"),
        Field("probes", doc="every probe: batch, fits, status, peak_bytes, predicted_bytes, seconds, detail"),
        Field("n_probes", "count", doc="worker processes the search ran"),
        _opt(NOTICE),
    ),
)

# ---- toy_study: one row per (run, schedule, metric) of scripts/toy_study.py (issue 22) ----------------------------------
TOY_STUDY = RowKind(
    "toy_study", "toy_study.jsonl",
    key_fields=("run", "schedule", "metric", "samples", "cfg", "steps"),
    doc="one quality metric of the full network or one subnet of a pretrained / fine-tuned toy supernet",
    fields=(
        KIND, MODEL, WEIGHTS, DEPTH, SWITCH,
        Field("run", doc='"pretrain" or STRATEGY-sSEED: the training run the weights come from'),
        Field("strategy", doc="pretrained | progressive | sandwich | fixed-pX"),
        Field("subnet_p", doc="fixed strategies: the subnet-step probability (null otherwise)"),
        Field("train_seed", doc="seed of the run's init draws, data set and data order"),
        Field("steps", "steps", doc="optimizer steps the run trained"), BATCH,
        Field("schedule", doc='"full" or "dN": the network scored'),
        Field("metric", doc="which quality metric `value` holds (a key of METRICS)"),
        Field("value", "metric unit", doc="the metric's value, in the unit of METRICS[metric]"),
        Field("ci_low", "metric unit", doc="lower end of the 95% interval of `value` over the samples"),
        Field("ci_high", "metric unit", doc="upper end of the 95% interval of `value` over the samples"),
        Field("n", "count", doc="samples the value and its interval are computed over"),
        Field("ci_method", doc="bca-bootstrap | percentile-bootstrap | wilson | exact | none"),
        Field("kl_kind", doc="guided (the sampled CFG, top-k/top-p distribution) | conditional; null: not KL"),
        Field("real_fd", "FD", doc="toy FD of as many real images: the floor at this sample count"),
        Field("samples", "count", doc="images scored per cell"),
        Field("cfg", doc="classifier-free guidance scale"), Field("top_k", doc="sampling top-k"),
        Field("top_p", doc="sampling top-p"),
        Field("val_loss", "nats", "lower", "the run's last validation cross-entropy of this schedule"),
        Field("train_seconds", "s", doc="wall time of the run's training"),
        Field("eval_seconds", "s", doc="wall time of the run's evaluation (all schedules)"),
    ),
)

ROW_KINDS: dict[str, RowKind] = {k.name: k for k in (SWEEP, SENSITIVITY, TRACE_SCALE, TRACE, TRACE_SAMPLE,
                                                       TRACE_MARK, MODELS, FID, MAXBATCH, TOY_STUDY)}


# ---- lookups ---------------------------------------------------------------------------------------------------------
def row_kind(kind: RowKind | str) -> RowKind:
    """The RowKind itself, or the registered one of that name (ValueError for an unknown kind)."""
    if isinstance(kind, RowKind):
        return kind
    try:
        return ROW_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown row kind {kind!r} (known: {', '.join(ROW_KINDS)})") from None


def field_of(name: str, kind: RowKind | str | None = None) -> Field | None:
    """A row field of ``kind``; without a kind, a quality metric, a derived gate metric or any kind's field."""
    if kind is not None:
        return row_kind(kind).field(name)
    found = METRICS.get(name) or DERIVED.get(name)
    return found or next((f for k in ROW_KINDS.values() if (f := k.field(name)) is not None), None)


def unit(name: str, kind: RowKind | str | None = None) -> str | None:
    """The unit of a field or metric; None when it has none or is unknown."""
    f = field_of(name, kind)
    return f.unit if f is not None else None


def direction(name: str, kind: RowKind | str | None = None) -> Direction:
    """"higher" or "lower" (which is better) for a field or metric; None when neither applies or it is unknown."""
    f = field_of(name, kind)
    return f.direction if f is not None else None


def key_of(row: Mapping[str, Any], kind: RowKind | str) -> tuple:
    """The row's identity over its kind's key fields; key fields older rows lack take their defaults."""
    from varbench.results import row_key

    k = row_kind(kind)
    return row_key({**k.key_defaults, **row}, k.key_fields)


def kinds_in(rows_file: str) -> tuple[str, ...]:
    """Names of the row kinds written to a rows file (trace.jsonl holds two)."""
    return tuple(k.name for k in ROW_KINDS.values() if k.rows_file == rows_file)
