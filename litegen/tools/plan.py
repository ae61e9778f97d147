"""`python -m litegen.tools.plan`: validate and plan a parallel layout for a world this machine lacks.

    python -m litegen.tools.plan world_size=256 model=wan_1_3b parallel.sp_ulysses=4 parallel.sp_ring=2

Joins a fake process group of `world_size` ranks (no communication), builds the model on `meta`
(no weights are allocated, so the 14B config plans in seconds), applies the same parallelism as
training and prints the mesh, per-rank shapes, bytes per rank and tokens per rank. Besides Hydra
overrides it takes `world_size=N`, `rank=R` (whose shards to report; default 0), `latent=CxTxHxW`
(default: model.in_channels x 21 x 60 x 104, an 81-frame 480p clip through Wan's VAE) and
`batch=B` (clips per rank, default data.batch_size). Exit code 2 on an invalid layout.

Memory planner: with `gpu_mem_gib=G` it plans instead (litegen/parallel/planner.py): for each clip
in `latent=CxTxHxW[,CxTxHxW...]` it chooses SP degree, checkpointing, offload and micro-batch (up
to `max_batch`, default data.batch_size) so a step fits a GPU of G GiB, and prints them with the
memory per rank and the overrides that apply them. Planner keys: `host_link_gb_s` (25),
`gpu_tflops` (sustained per GPU, 400), `margin` (0.1), `text_len` (encoders.text.max_length).
Exit code 2 when a clip cannot fit, with what to change.
"""

import math
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from litegen.config import CONFIG_DIR, ConfigError, LiteGenConfig, register_configs
from litegen.config.validate import field_problems
from litegen.parallel.dims import ParallelDims
from litegen.parallel.ring import ring_bytes_per_rank
from litegen.parallel.ulysses import ulysses_bytes_per_rank

_GIB = 2**30
DEFAULT_LATENT_THW = (21, 60, 104)
_PLAN_KEYS = ("world_size", "rank", "latent", "batch")
_MEMORY_KEYS = ("gpu_mem_gib", "host_link_gb_s", "gpu_tflops", "margin", "max_batch", "text_len")


@dataclass
class PlanRequest:
    world_size: int
    rank: int
    latent: Optional[tuple[int, int, int, int]]  # the first of `latents`
    batch: Optional[int]
    overrides: list[str]
    latents: list[tuple[int, int, int, int]] = field(default_factory=list)
    memory: dict = field(default_factory=dict)  # planner keys given (gpu_mem_gib=... turns it on)


def parse_args(argv: list[str]) -> PlanRequest:
    plan = {k: None for k in _PLAN_KEYS}
    memory, overrides = {}, []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in plan:
            plan[key] = value
        elif key in _MEMORY_KEYS:
            memory[key] = float(value)
        else:
            overrides.append(arg)
    if plan["world_size"] is None:
        raise ConfigError([("world_size", "the dry run needs world_size=N (the ranks to plan for)")])
    latents = [tuple(int(n) for n in one.split("x")) for one in plan["latent"].split(",")] if plan["latent"] else []
    if any(len(latent) != 4 for latent in latents):
        raise ConfigError([("latent", f"must be CxTxHxW (or several, comma-separated), got {plan['latent']!r}")])
    return PlanRequest(int(plan["world_size"]), int(plan["rank"] or 0), latents[0] if latents else None,
                       int(plan["batch"]) if plan["batch"] else None, overrides, latents, memory)


def compose_for_plan(overrides: list[str]) -> LiteGenConfig:
    """Compose and check every field; encoders are never built here, so their cross-checks
    against the model (which need real encoder settings) are skipped."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        typed = OmegaConf.to_object(compose("litegen", overrides=overrides))
    problems = list(field_problems(typed))
    if problems:
        raise ConfigError(problems)
    return typed


def join_fake_world(world_size: int, rank: int) -> None:
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)


def build_planned_model(cfg: LiteGenConfig, dims: ParallelDims, rank: int) -> nn.Module:
    """The model as training would hold it on `rank`, on meta: SP applied, FSDP2-sharded."""
    from litegen.models import build_model, model_plan
    from litegen.parallel.fsdp import apply_fsdp
    from litegen.parallel.parallelize import param_dtype
    from litegen.parallel.sequence import apply_sequence_parallel

    with torch.device("meta"):
        net = build_model(cfg.model)
    apply_sequence_parallel(net, model_plan(cfg.model), dims, rank)
    if cfg.parallel.backend == "fsdp2":
        gpu_autocast = torch.bfloat16 if cfg.train.mixed_precision != "fp32" else None
        apply_fsdp(net, model_plan(cfg.model), dims.fsdp_mesh(), cfg.parallel,
                   param_dtype(cfg, gpu_autocast), torch.float32)
    return net


def mesh_report(dims: ParallelDims, rank: int) -> list[str]:
    return [
        f"mesh: {dims.describe()}",
        f"  data parallel {dims.dp} (replicate {dims.dp_replicate} x shard {dims.dp_shard}); "
        f"sequence parallel {dims.sp} (ring {dims.sp_ring} x ulysses {dims.sp_ulysses})",
        f"  rank {rank}: dp rank {dims.dp_rank(rank)} (reads that share of the data), "
        f"sp rank {dims.sp_rank(rank)} (holds that chunk of each clip's tokens)",
    ]


def local_numel(param: torch.Tensor) -> int:
    return param.to_local().numel() if hasattr(param, "to_local") else param.numel()


def memory_report(cfg: LiteGenConfig, dims: ParallelDims, net: nn.Module, params: int) -> list[str]:
    """Parameter, gradient and AdamW state bytes this rank keeps between steps (fp32 masters)."""
    backend = cfg.parallel.backend
    if backend == "fsdp2":
        local = sum(local_numel(p) for p in net.parameters())
        param_n, grad_n, optim_n = local, local, 2 * local
    else:  # ddp, or DeepSpeed ZeRO sharding over all ranks (its data-parallel group is the world)
        stage = cfg.parallel.zero_stage if backend == "deepspeed" else 0
        share = math.ceil(params / dims.world_size)
        param_n = share if stage >= 3 else params
        grad_n = share if stage >= 2 else params
        optim_n = 2 * (share if stage >= 1 else params)
    label = f"{backend}" + (f" ZeRO-{cfg.parallel.zero_stage}" if backend == "deepspeed" else "")
    total = 4 * (param_n + grad_n + optim_n)
    return [f"bytes per rank ({label}, fp32 masters; activations not included):",
            f"  parameters {4 * param_n:,} ({4 * param_n / _GIB:.2f} GiB)",
            f"  gradients  {4 * grad_n:,} ({4 * grad_n / _GIB:.2f} GiB)",
            f"  optimizer  {4 * optim_n:,} ({4 * optim_n / _GIB:.2f} GiB, AdamW exp_avg + exp_avg_sq)",
            f"  total      {total:,} ({total / _GIB:.2f} GiB)"]


def shape_report(cfg: LiteGenConfig, dims: ParallelDims, latent: tuple[int, int, int, int],
                 batch: int) -> list[str]:
    """Per-rank token counts and attention shapes for one micro-batch of `latent` clips."""
    from litegen.parallel.sequence import SequenceLayout

    grid = [n // p for n, p in zip(latent[1:], cfg.model.patch_size)]
    tokens = math.prod(grid)
    layout = SequenceLayout(tokens, dims.sp, 0)
    heads, head_dim = cfg.model.num_heads, cfg.model.dim // cfg.model.num_heads
    s = layout.chunk
    lines = [f"tokens: {tokens} per clip (grid {'x'.join(map(str, grid))}, latent "
             f"{'x'.join(map(str, latent))}); {s} per rank"
             + (f" (padded to {layout.padded})" if layout.padded != tokens else ""),
             f"  tokens per rank per step: {batch * s * cfg.train.grad_accum_steps} "
             f"({batch} clips x {s} x {cfg.train.grad_accum_steps} accum)",
             f"  q/k/v per rank: [{batch}, {s}, {heads}, {head_dim}]"]
    if dims.sp_ulysses > 1:
        lines.append(f"  after Ulysses all-to-all: [{batch}, {s * dims.sp_ulysses}, "
                     f"{heads // dims.sp_ulysses}, {head_dim}]")
    lines += _sp_bytes_lines(dims, batch, s, heads, head_dim)
    return lines


def _sp_bytes_lines(dims: ParallelDims, batch: int, s: int, heads: int, head_dim: int) -> list[str]:
    bf16 = 2
    lines = []
    if dims.sp_ulysses > 1:
        u = ulysses_bytes_per_rank(batch, s, heads, head_dim, dims.sp_ulysses, bf16)
        lines.append(f"  Ulysses bytes sent per rank per attention (bf16): forward {u['forward']:,}, "
                     f"backward {u['backward']:,}")
    if dims.sp_ring > 1:
        r = ring_bytes_per_rank(batch, s * dims.sp_ulysses, heads // dims.sp_ulysses, head_dim,
                                dims.sp_ring, bf16)
        lines.append(f"  ring bytes sent per rank per attention (bf16): forward {r['forward']:,}, "
                     f"backward {r['backward']:,}")
    return lines


def plan(request: PlanRequest) -> list[str]:
    from litegen.models import count_params

    cfg = compose_for_plan(request.overrides)
    dims = ParallelDims.from_config(cfg.parallel, request.world_size,
                                    num_heads=getattr(cfg.model, "num_heads", None))
    join_fake_world(request.world_size, request.rank)
    dims.build_mesh("cpu")
    net = build_planned_model(cfg, dims, request.rank)
    params = count_params(net)
    latent = request.latent or (cfg.model.in_channels, *DEFAULT_LATENT_THW)
    return [f"model: {cfg.model.name} ({cfg.model.family})", f"params: {params}",
            *mesh_report(dims, request.rank),
            *shape_report(cfg, dims, latent, request.batch or cfg.data.batch_size),
            *memory_report(cfg, dims, net, params)]


def main(argv: Optional[list[str]] = None) -> int:
    try:
        request = parse_args(sys.argv[1:] if argv is None else argv)
        lines = memory_plan(request) if "gpu_mem_gib" in request.memory else plan(request)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def memory_plan(request: PlanRequest) -> list[str]:
    """The planner's choice per clip (see the module docstring)."""
    from litegen.tools.memory_report import plan_lines

    return plan_lines(compose_for_plan(request.overrides), request)


if __name__ == "__main__":
    sys.exit(main())
