"""Typed schemas for everything except model families (see model.py).

Each dataclass yields `(field, message)` pairs from `problems()`; `validate.py` prefixes the
dotted path, adds cross-section checks and raises one ConfigError listing them all.
"""

import signal
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from omegaconf import MISSING

from litegen.config.memory import MemoryPlanConfig, OffloadConfig, memory_problems

Problems = Iterator[tuple[str, str]]


def _positive(obj: Any, *names: str) -> Problems:
    for name in names:
        if getattr(obj, name) <= 0:
            yield name, f"must be > 0, got {getattr(obj, name)}"


def _one_of(obj: Any, name: str, choices: tuple[str, ...]) -> Problems:
    if getattr(obj, name) not in choices:
        yield name, f"must be one of {list(choices)}, got {getattr(obj, name)!r}"


@dataclass
class ObjectiveConfig:
    name: str = "rectified_flow"

    def problems(self) -> Problems:
        return iter(())


@dataclass
class RectifiedFlowConfig(ObjectiveConfig):
    """Flow matching: x_t = (1 - t) x0 + t noise, target v = noise - x0, t=1 is pure noise."""

    name: str = "rectified_flow"
    timestep_sampling: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.0
    logit_std: float = 1.0
    train_shift: float = 1.0  # SD3-style shift applied to sampled t (>1 favours noisier t)
    sample_shift: float = 3.0  # shift of the Euler sampler's time grid
    # What the network outputs: `velocity` (v = noise - x0, Wan/SD3) or `data` (x0; the loss is
    # still taken on the implied velocity). Data prediction suits pixel-space tokens whose noise
    # is wider than the network (JiT, "Back to Basics", 2025): clean clips are low-dimensional.
    prediction: str = "velocity"
    min_t_data: float = 0.05  # data prediction divides by t; clamp it for the implied velocity

    def problems(self) -> Problems:
        yield from _one_of(self, "timestep_sampling", ("logit_normal", "uniform"))
        yield from _one_of(self, "prediction", ("velocity", "data"))
        yield from _positive(self, "logit_std", "train_shift", "sample_shift", "min_t_data")


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant (after warmup)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    grad_clip_norm: float = 1.0  # <= 0 disables clipping

    def problems(self) -> Problems:
        yield from _one_of(self, "name", ("adamw",))
        yield from _one_of(self, "schedule", ("cosine", "constant"))
        yield from _positive(self, "lr", "eps")
        if self.warmup_steps < 0:
            yield "warmup_steps", f"must be >= 0, got {self.warmup_steps}"
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            yield "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            yield "betas", f"must be two values in [0, 1), got {self.betas}"


@dataclass
class SampleConfig:
    """The clip generated from the EMA weights at the end of training."""

    enabled: bool = True
    prompts: list[str] = field(default_factory=lambda: ["a red circle moving right on a blue background"])
    frames: int = 8  # pixel frames
    height: int = 32
    width: int = 32
    fps: int = 8
    steps: int = 30
    guidance_scale: float = 4.0
    seed: int = 0
    format: str = "gif"  # gif | mp4

    def problems(self) -> Problems:
        yield from _positive(self, "frames", "height", "width", "fps", "steps")
        yield from _one_of(self, "format", ("gif", "mp4"))
        if not self.prompts:
            yield "prompts", "needs at least one prompt"


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    grad_accum_steps: int = 1
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    ema_decay: float = 0.999  # 0 disables EMA
    caption_dropout: float = 0.1  # probability a caption is replaced by "" (for CFG)
    ckpt_every_steps: int = 500
    keep_last_k: int = 3  # 0 keeps every checkpoint
    log_every_steps: int = 10
    peak_tflops: Optional[float] = None  # per device, for MFU; None: spec table (CUDA) / measured (CPU)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sample_every_steps: int = 0  # also sample (EMA weights, to samples/ and wandb) every N steps; 0: end only
    # Signals that make the run checkpoint at the next step boundary and exit with 75 (requeue);
    # empty: none. See litegen/train/preemption.py.
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGUSR1", "SIGUSR2", "SIGTERM"])
    # Fault tolerance (README "Fault tolerance"): background checkpoint writes; what a non-finite
    # loss or gradient does (stop before the update, or skip the update on every rank); and the
    # per-phase watchdog that ends a stalled job (0 disables it).
    ckpt_async: bool = False
    nonfinite: str = "stop"  # stop | skip
    max_consecutive_skips: int = 3  # with nonfinite=skip: this many skipped steps in a row stop the run
    step_timeout_s: float = 1800.0  # longest a phase (data, forward_backward, optimizer, checkpoint) may take

    def problems(self) -> Problems:
        yield from _positive(self, "steps", "grad_accum_steps", "ckpt_every_steps", "log_every_steps")
        yield from _one_of(self, "nonfinite", ("stop", "skip"))
        yield from _positive(self, "max_consecutive_skips")
        if self.step_timeout_s < 0:
            yield "step_timeout_s", f"must be >= 0 (0 disables the watchdog), got {self.step_timeout_s}"
        yield from _one_of(self, "mixed_precision", ("auto", "bf16", "fp32"))
        if not 0.0 <= self.ema_decay < 1.0:
            yield "ema_decay", f"must be in [0, 1), got {self.ema_decay}"
        if not 0.0 <= self.caption_dropout < 1.0:
            yield "caption_dropout", f"must be in [0, 1), got {self.caption_dropout}"
        if self.keep_last_k < 0:
            yield "keep_last_k", f"must be >= 0, got {self.keep_last_k}"
        if self.sample_every_steps < 0:
            yield "sample_every_steps", f"must be >= 0 (0: sample at the end only), got {self.sample_every_steps}"
        catchable = set(signal.Signals.__members__) - {"SIGKILL", "SIGSTOP"}
        unknown = [s for s in self.preempt_signals if s not in catchable]
        if unknown:
            yield "preempt_signals", f"{unknown} are not catchable signal names (e.g. SIGUSR1, SIGTERM)"


@dataclass
class SyntheticDataConfig:
    """The procedurally rendered default dataset (moving shapes with captions)."""

    num_clips: int = 2048
    clips_per_shard: int = 256
    # Pixel clip shapes to render, as [frames, height, width]; several aspect ratios and lengths.
    shapes: list[list[int]] = field(default_factory=lambda: [[8, 32, 32], [8, 32, 48], [8, 48, 32], [12, 32, 32]])
    fps: int = 8
    seed: int = 1234
    # Where paths start: 0 = the caption alone determines the clip (a tiny model learns it in
    # minutes); 1 = anywhere the motion fits (a harder, multimodal distribution).
    position_jitter: float = 0.0
    # Stored latent precision. fp16 halves the dataset; pixel-encoder latents still round back
    # to the exact uint8 pixels (fp16 error < half a pixel level).
    latent_dtype: str = "fp16"  # fp32 | bf16 | fp16

    def problems(self) -> Problems:
        yield from _positive(self, "num_clips", "clips_per_shard", "fps")
        yield from _one_of(self, "latent_dtype", ("fp32", "bf16", "fp16"))
        if not 0.0 <= self.position_jitter <= 1.0:
            yield "position_jitter", f"must be in [0, 1], got {self.position_jitter}"
        if not self.shapes or any(len(s) != 3 or min(s) < 1 for s in self.shapes):
            yield "shapes", f"must be a non-empty list of [frames, height, width], got {self.shapes}"


@dataclass
class SourceConfig:
    """One dataset among several mixed into the stream (litegen/data/sources.py)."""

    shards: str = MISSING  # path, glob, brace range, or `pipe:COMMAND` writing a tar to stdout
    weight: float = 1.0  # share of samples (of shards when no index.json gives shard sizes)
    name: str = ""  # for logs and skip reports; default: the spec

    def problems(self) -> Problems:
        yield from _positive(self, "weight")
        if not self.shards:
            yield "shards", "must name shards (path, glob, brace range or pipe:COMMAND)"


@dataclass
class StageConfig:
    """One stage of a progressive schedule: from start_step on, batches follow these settings."""

    name: str = MISSING
    start_step: int = 0
    buckets: list[str] = field(default_factory=list)  # names in data.buckets; [] = every bucket
    token_budget: Optional[int] = None  # tokens per packed micro-batch; 0 = bucket batches; None = data's
    batch_size: Optional[int] = None  # clips per bucket batch (token_budget 0); None = data.batch_size
    lr_scale: float = 1.0  # multiplies the LR schedule while this stage runs

    def problems(self) -> Problems:
        yield from _positive(self, "lr_scale")
        if self.start_step < 0:
            yield "start_step", f"must be >= 0, got {self.start_step}"
        if self.token_budget is not None and self.token_budget < 0:
            yield "token_budget", f"must be >= 0, got {self.token_budget}"
        if self.batch_size is not None and self.batch_size < 1:
            yield "batch_size", f"must be >= 1, got {self.batch_size}"


@dataclass
class DataConfig:
    # WebDataset shard spec: a path, glob or brace range, relative to the working directory.
    # Ignored when `sources` is set.
    shards: str = "data/shapes/shard-*.tar"
    sources: list[SourceConfig] = field(default_factory=list)  # several weighted shard specs
    # If no shard matches `shards`, render the synthetic dataset into `generate_dir` first.
    generate_if_missing: bool = True
    generate_dir: str = "data/shapes"
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    batch_size: int = 8  # clips per micro-batch per data-parallel rank (one bucket per batch)
    num_workers: int = 0
    shuffle_buffer: int = 64  # samples; 0 disables in-shard shuffling
    seed: int = 0
    bad_sample: str = "skip"  # skip (count + warning naming shard and key) | raise
    # Named clip shapes [frames, height, width] (pixels). Empty: every shape in the data is its
    # own bucket. With buckets, samples of other shapes are left out (counted as filtered).
    buckets: dict[str, list[int]] = field(default_factory=dict)
    # > 0: pack several clips into one sequence of at most this many tokens per micro-batch
    # (NaViT-style, variable-length attention); 0: batches of batch_size clips of one bucket.
    token_budget: int = 0
    pack_lookahead: float = 4.0  # packs' worth of tokens held to choose each pack from
    # With several data-parallel ranks, packs are filled to this fraction of token_budget; the
    # rest is room for moving clips between ranks to even out attention cost (1.0 with one rank).
    pack_fill: float = 0.95
    stages: list[StageConfig] = field(default_factory=list)  # progressive schedule; [] = one stage

    def problems(self) -> Problems:
        yield from _positive(self, "batch_size", "pack_lookahead")
        yield from _one_of(self, "bad_sample", ("skip", "raise"))
        if self.num_workers < 0:
            yield "num_workers", f"must be >= 0, got {self.num_workers}"
        if self.shuffle_buffer < 0:
            yield "shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}"
        if self.token_budget < 0:
            yield "token_budget", f"must be >= 0, got {self.token_budget}"
        if not 0.0 < self.pack_fill <= 1.0:
            yield "pack_fill", f"must be in (0, 1], got {self.pack_fill}"
        for i, source in enumerate(self.sources):
            for name, msg in source.problems():
                yield f"sources[{i}].{name}", msg
        yield from self._bucket_problems()
        yield from self._stage_problems()

    def _bucket_problems(self) -> Problems:
        for name, shape in self.buckets.items():
            if len(shape) != 3 or min(shape) < 1:
                yield f"buckets.{name}", f"must be [frames, height, width] of positive ints, got {list(shape)}"

    def _stage_problems(self) -> Problems:
        for i, stage in enumerate(self.stages):
            for name, msg in stage.problems():
                yield f"stages[{i}].{name}", msg
            unknown = [b for b in stage.buckets if b not in self.buckets]
            if unknown:
                yield f"stages[{i}].buckets", f"unknown bucket(s) {unknown}; data.buckets defines {sorted(self.buckets)}"
        starts = [stage.start_step for stage in self.stages]
        if starts and starts[0] != 0:
            yield "stages[0].start_step", f"the first stage must start at step 0, got {starts[0]}"
        if any(b <= a for a, b in zip(starts, starts[1:])):
            yield "stages", f"start_step must increase from stage to stage, got {starts}"
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            yield "stages", f"stage names must be unique, got {names}"


@dataclass
class VideoEncoderConfig:
    """Frozen pixel <-> latent codec. `pixel`: exact space-to-depth; `diffusers`: AutoencoderKL*."""

    kind: str = "pixel"  # pixel | diffusers
    spatial_factor: int = 2  # pixel: each latent holds a factor x factor block of pixels
    temporal_factor: int = 1  # pixel: consecutive frames folded into channels
    path: Optional[str] = None  # diffusers: local folder with config.json (+ weights)
    subfolder: Optional[str] = None  # diffusers: e.g. "vae" inside a pipeline folder
    dtype: str = "fp32"  # fp32 | bf16 | fp16

    def problems(self) -> Problems:
        yield from _one_of(self, "kind", ("pixel", "diffusers"))
        yield from _one_of(self, "dtype", ("fp32", "bf16", "fp16"))
        yield from _positive(self, "spatial_factor", "temporal_factor")
        if self.kind == "diffusers" and not self.path:
            yield "path", "the diffusers video VAE needs a local folder (encoders.video.path=...)"


@dataclass
class TextEncoderConfig:
    """Frozen caption encoder. `hashed`: deterministic word hashing; `t5`: transformers T5/UMT5."""

    kind: str = "hashed"  # hashed | t5
    dim: int = 64  # hashed: embedding width (t5: taken from the model)
    max_length: int = 32  # tokens; longer captions are truncated
    path: Optional[str] = None  # t5: local folder with the encoder and tokenizer
    dtype: str = "fp32"

    def problems(self) -> Problems:
        yield from _one_of(self, "kind", ("hashed", "t5"))
        yield from _one_of(self, "dtype", ("fp32", "bf16", "fp16"))
        yield from _positive(self, "dim", "max_length")
        if self.kind == "t5" and not self.path:
            yield "path", "the t5 text encoder needs a local folder (encoders.text.path=...)"


@dataclass
class EncodersConfig:
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)


@dataclass
class ParallelConfig:
    """How the world splits: dp_replicate x dp_shard x sp_ring x sp_ulysses ranks (see README)."""

    backend: str = "fsdp2"  # fsdp2 | deepspeed | ddp (the reference)
    dp_replicate: int = 1  # > 1 with fsdp2: HSDP (replicate across groups, shard within)
    dp_shard: int = -1  # -1: the rest of the world
    sp_ring: int = 1  # ring-attention degree (K/V passed around the ring)
    sp_ulysses: int = 1  # Ulysses degree (all-to-all to heads); must divide the attention heads
    reshard_after_forward: bool = True  # fsdp2: free gathered params after forward (ZeRO-3 style)
    param_dtype: str = "auto"  # fsdp2 compute dtype: auto (follows train.mixed_precision) | bf16 | fp32
    reduce_dtype: str = "fp32"  # fsdp2 gradient reduction dtype
    zero_stage: int = 2  # deepspeed ZeRO stage 1 | 2 | 3
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    timeout_s: int = 600  # collective timeout; a dead rank surfaces as an error after this
    # Activation memory (README "Fitting long clips"; schema and choices in config/memory.py).
    memory: str = "manual"  # manual: the keys below | auto: the planner chooses them (and SP)
    activation_checkpointing: str = "none"  # none | full | selective
    ac_ratio: float = 1.0  # selective: fraction of blocks checkpointed, spread evenly
    ac_policy: str = "save_matmuls"  # selective: save_matmuls | save_attention | recompute_all
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    memory_plan: MemoryPlanConfig = field(default_factory=MemoryPlanConfig)

    def problems(self) -> Problems:
        yield from memory_problems(self)
        yield from _one_of(self, "backend", ("fsdp2", "deepspeed", "ddp"))
        yield from _one_of(self, "dist_backend", ("auto", "nccl", "gloo"))
        yield from _one_of(self, "param_dtype", ("auto", "bf16", "fp32"))
        yield from _one_of(self, "reduce_dtype", ("fp32", "bf16"))
        yield from _positive(self, "dp_replicate", "sp_ring", "sp_ulysses", "timeout_s")
        if self.dp_shard == 0 or self.dp_shard < -1:
            yield "dp_shard", f"must be >= 1 or -1 (the rest of the world), got {self.dp_shard}"
        if self.zero_stage not in (1, 2, 3):
            yield "zero_stage", f"must be 1, 2 or 3, got {self.zero_stage}"
        if self.dp_replicate > 1 and self.backend != "fsdp2":
            yield "dp_replicate", (f"replicate groups (HSDP) need backend=fsdp2, got {self.backend!r}; "
                                   "use parallel.dp_replicate=1")


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "litegen"

    def problems(self) -> Problems:
        yield from _one_of(self, "wandb_mode", ("offline", "online", "disabled"))


@dataclass
class LiteGenConfig:
    run_name: str = "tiny"
    model: Any = MISSING  # a ModelConfig subclass chosen by the model/ group
    objective: Any = MISSING  # an ObjectiveConfig subclass chosen by the objective/ group
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
