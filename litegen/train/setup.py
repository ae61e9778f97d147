"""Build everything a run needs from a validated config (the long part; the loop stays short)."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from litegen.config import LiteGenConfig
from litegen.data.generate import generate_synthetic_dataset
from litegen.data.buckets import TokenGeometry
from litegen.data.loader import build_loader, expand_shards
from litegen.data.schedule import build_schedule
from litegen.encoders import build_text_encoder, build_video_encoder
from litegen.models import build_model, count_params, model_plan
from litegen.objectives import Cond, build_objective
from litegen.parallel.dims import ParallelDims
from litegen.parallel.distributed import DistInfo, barrier, is_distributed
from litegen.parallel.parallelize import build_steps, parallelize, unwrap
from litegen.parallel.planner import auto_layout
from litegen.parallel.sequence import check_sequence_parallel, gradient_scale
from litegen.train.checkpoint import Checkpointer
from litegen.train.conditioning import encode_captions
from litegen.train.data_state import LoaderCheckpoint
from litegen.train.ema import EMA
from litegen.train.lr import build_scheduler
from litegen.train.metrics import Meter, MetricsWriter
from litegen.train.mfu import peak_tflops
from litegen.train.preemption import Preemption
from litegen.train.nonfinite import NonFiniteGuard
from litegen.train.watchdog import Watchdog
from litegen.tools.convert import load_converted

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: LiteGenConfig
    run_dir: Path
    dist: DistInfo
    dims: ParallelDims
    net: nn.Module  # the plain network (sampling, EMA, FLOPs)
    model: nn.Module  # what forward/backward go through (parallel wrappers applied)
    optimizer: torch.optim.Optimizer
    steps: Any  # backend step engine: backward, accumulation, clip + step (litegen/parallel)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: Optional[EMA]
    objective: Any
    video_encoder: Any
    text_encoder: Any
    loader: Any
    null_cond: Cond
    checkpointer: Checkpointer
    meter: Meter
    metrics: Optional[MetricsWriter] = None
    peak_source: str = ""
    step: int = 0  # optimizer steps completed
    preemption: Optional[Preemption] = None  # set by main: stop, checkpoint and requeue on a signal
    nonfinite: Optional[NonFiniteGuard] = None  # decides, on every rank alike, whether to apply a step
    watchdog: Optional[Watchdog] = None  # ends the job when a phase of the loop stalls

    def phase(self, name: str) -> None:
        """Tell the watchdog which phase of the step in progress (run.step + 1) starts now."""
        if self.watchdog is not None:
            self.watchdog.phase(name, self.step + 1)

    @property
    def dp_rank(self) -> int:
        return self.dims.dp_rank(self.dist.rank)

    def autocast_dtype(self) -> Optional[torch.dtype]:
        return autocast_dtype(self.cfg.train.mixed_precision, self.dist.device)

    @property
    def loss_scale(self) -> float:
        """Factor on each micro-batch loss before backward (see parallel.sequence.gradient_scale)."""
        return gradient_scale(self.dims) / self.cfg.train.grad_accum_steps

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything resumable, one key per stateful piece; per-rank pieces keyed by rank."""
        state = {"train": self.steps.checkpoint_state(),
                 "lr_schedule": self.scheduler, "trainer": Progress(self),
                 "data": LoaderCheckpoint(self.loader),
                 f"rng.rank{self.dist.rank}": RngState()}
        if self.nonfinite is not None:
            state["nonfinite"] = self.nonfinite
        if self.ema is not None:
            state[f"ema.rank{self.dist.rank}" if self.ema.per_rank else "ema"] = self.ema
        return state


def autocast_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """train.mixed_precision -> the autocast dtype (None: full fp32)."""
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class Progress:
    """The trainer's own counters."""

    def __init__(self, run: Run):
        self.run = run

    def state_dict(self) -> dict[str, int]:
        return {"step": self.run.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.run.step = int(state["step"])


class RngState:
    """Global torch RNG streams (per-step randomness is derived from the step and needs none)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def ensure_dataset(cfg: LiteGenConfig, dist_info: DistInfo, video_encoder) -> None:
    """Render the default dataset on first use (rank 0), everyone else waits for it."""
    if expand_shards(cfg.data.shards, must_exist=False) or not cfg.data.generate_if_missing:
        return
    if dist_info.is_main:
        print(f"no shards match {cfg.data.shards!r}: generating the synthetic dataset into "
              f"{cfg.data.generate_dir}", flush=True)
        generate_synthetic_dataset(cfg.data.synthetic, Path(cfg.data.generate_dir), video_encoder)
    barrier()


def build_network(cfg: LiteGenConfig, device: torch.device) -> nn.Module:
    """Build on meta (no memory for the full-size configs), materialise on device, seed-init.

    With model.init_from, the converted weights (litegen.tools.convert) then replace the init.
    """
    with torch.device("meta"):
        net = build_model(cfg.model)
    net.to_empty(device=device)
    net.init_weights(cfg.train.seed)
    if cfg.model.init_from:
        load_converted(net, cfg.model.init_from)
    return net


def build_dims(cfg: LiteGenConfig, dist_info: DistInfo) -> ParallelDims:
    """Validate the layout (before any work) and, with several processes, build the mesh."""
    dims = ParallelDims.from_config(cfg.parallel, dist_info.world_size,
                                    num_heads=getattr(cfg.model, "num_heads", None))
    # Before encoders load: a layout the family's attention cores cannot run fails here.
    check_sequence_parallel(model_plan(cfg.model), dims, cfg.model.family,
                            getattr(cfg.model, "num_heads", None))
    if is_distributed():
        dims.build_mesh(dist_info.device.type)
    return dims


def build_ema(net: nn.Module, decay: float) -> Optional[EMA]:
    if decay <= 0:
        return None
    from litegen.parallel.deepspeed import zero3_partitions

    # Under ZeRO-3 the module holds placeholders: average this rank's partitions instead.
    return EMA(net, decay, tensors=zero3_partitions) if zero3_partitions(net) else EMA(net, decay)


def build_optimizer(model: nn.Module, cfg: LiteGenConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                             betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def build_run(cfg: LiteGenConfig, run_dir: Path, dist_info: DistInfo) -> Run:
    cfg = auto_layout(cfg, dist_info.world_size, dist_info.device)  # parallel.memory=auto: SP degree
    dims = build_dims(cfg, dist_info)
    device = dist_info.device
    video_encoder = build_video_encoder(cfg.encoders.video, device=device)
    text_encoder = build_text_encoder(cfg.encoders.text, device=device)
    ensure_dataset(cfg, dist_info, video_encoder)
    autocast = autocast_dtype(cfg.train.mixed_precision, device)
    with torch.device("meta"):
        net = build_model(cfg.model)
    model = parallelize(net, cfg, dims, dist_info.rank, device, autocast)
    optimizer = build_optimizer(model, cfg)
    steps = build_steps(model, optimizer, cfg, autocast)
    model = steps.model  # DeepSpeed: its engine
    net = unwrap(model)
    peak, peak_source = peak_tflops(device, cfg.train.peak_tflops)
    return Run(
        cfg=cfg, run_dir=run_dir, dist=dist_info, dims=dims, net=net, model=model,
        optimizer=optimizer, steps=steps,
        scheduler=build_scheduler(optimizer, cfg.optim, cfg.train.steps, build_schedule(cfg.data).lr_scale),
        ema=build_ema(net, cfg.train.ema_decay),
        objective=build_objective(cfg.objective),
        video_encoder=video_encoder,
        text_encoder=text_encoder,
        loader=build_loader(cfg.data, dims.dp_rank(dist_info.rank), dims.dp,
                            expected_signature=video_encoder.signature(),
                            geometry=TokenGeometry.of(video_encoder, cfg.model.patch_size),
                            micro_batches_per_step=cfg.train.grad_accum_steps),
        null_cond=encode_captions(text_encoder, [""], device),
        checkpointer=Checkpointer(run_dir / "checkpoints", cfg.train.keep_last_k, dist_info,
                                  async_save=cfg.train.ckpt_async),
        meter=Meter(dist_info, peak, group=dims.group("dp")), peak_source=peak_source,
        nonfinite=NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_consecutive_skips, dist_info),
        watchdog=Watchdog(cfg.train.step_timeout_s, dist_info))


def resume_if_possible(run: Run) -> Optional[Path]:
    """Load the newest complete checkpoint of this run directory, if any."""
    latest = run.checkpointer.latest()
    if latest is None:
        return None
    _, path = latest
    state = run.checkpoint_state()
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    rng_key = f"rng.rank{run.dist.rank}"
    if not any(key.startswith(rng_key + ".") for key in saved):
        # Resuming on more ranks than saved: this rank's global RNG starts fresh; per-step
        # randomness is derived from (seed, rank, step) and needs no saved state.
        del state[rng_key]
    if "nonfinite" in state and not any(key.startswith("nonfinite.") for key in saved):
        del state["nonfinite"]  # a checkpoint from before the guard was checkpointed
    run.checkpointer.load(path, state)
    return path


def describe(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    return {
        "run dir": str(run.run_dir),
        "model": f"{cfg.model.name} ({cfg.model.family}), {count_params(run.net) / 1e6:.2f}M params",
        "objective": cfg.objective.name,
        "layout": f"world {run.dist.world_size} = dp {run.dims.dp} x sp {run.dims.sp} "
                  f"(ring {run.dims.sp_ring} x ulysses {run.dims.sp_ulysses}, "
                  f"{cfg.parallel.backend}) on {run.dist.device.type}",
        "batch": f"{batch_summary(cfg)}/rank x {cfg.train.grad_accum_steps} accum x {run.dims.dp} dp",
        "data": cfg.data.shards,
        "peak for MFU": f"{run.meter.peak_tflops:.2f} TFLOP/s ({run.peak_source})"
                        if run.meter.peak_tflops else run.peak_source,
    }


def batch_summary(cfg: LiteGenConfig) -> str:
    """'8 clips', 'packs of <= 6144 tokens', or each stage's from its start step."""
    stages = build_schedule(cfg.data).stages
    sizes = [f"packs of <= {s.token_budget} tokens" if s.packed else f"{s.batch_size} clips" for s in stages]
    if len(stages) == 1:
        return sizes[0]
    return "; ".join(f"{s.name} from step {s.start_step}: {size}" for s, size in zip(stages, sizes))
