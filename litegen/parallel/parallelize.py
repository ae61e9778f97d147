"""Apply parallelism to a plain model, in one place and one documented order.

    1. sequence parallelism: swap self-attention cores, shard the token stack (no parameters,
       so it goes first and the swapped cores end up inside the FSDP block units);
    2. activation checkpointing and offload: each block's forward becomes checkpointed and/or
       offloaded per micro-batch (litegen/parallel/memory.py). Before FSDP so that FSDP's hooks
       wrap the whole block call: its parameters are gathered around the checkpointed forward,
       and in backward FSDP's pre-backward unshard runs before the recompute needs them; the
       recompute repeats the SP collectives in order on every rank. Offload wraps outside the
       checkpoint, so the checkpoint's saved inputs pass through its hooks;
    3. FSDP2 `fully_shard` per block and root, still on `meta` (nothing full-size allocated);
    4. materialise on the device and initialise from the seed, shard by shard;
    5. DDP, which needs real weights. DeepSpeed wraps later, in `build_steps`, because
       `deepspeed.initialize` takes the optimizer too.
"""

from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from litegen.config import LiteGenConfig
from litegen.models import model_plan
from litegen.parallel.dims import ParallelDims
from litegen.parallel.distributed import is_distributed
from litegen.parallel.engine import TorchSteps
from litegen.parallel.fsdp import apply_fsdp, write_shard
from litegen.parallel.memory import apply_memory, memory_schedule
from litegen.parallel.sequence import apply_sequence_parallel

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def param_dtype(cfg: LiteGenConfig, autocast: Optional[torch.dtype]) -> torch.dtype:
    """FSDP2 compute dtype: explicit, or whatever the trainer autocasts to (fp32 on CPU)."""
    if cfg.parallel.param_dtype != "auto":
        return _DTYPES[cfg.parallel.param_dtype]
    return autocast or torch.float32


def parallelize(net: nn.Module, cfg: LiteGenConfig, dims: ParallelDims, rank: int,
                device: torch.device, autocast: Optional[torch.dtype] = None) -> nn.Module:
    """Turn a network built on `meta` into the module forward/backward go through."""
    plan = model_plan(cfg.model)
    distributed = is_distributed() and dims.world_size > 1
    if distributed:
        apply_sequence_parallel(net, plan, dims, rank)
    apply_memory(net, plan, memory_schedule(cfg, dims.sp, device, dims.world_size), device)
    fsdp = distributed and cfg.parallel.backend == "fsdp2"
    if fsdp:
        apply_fsdp(net, plan, dims.fsdp_mesh(), cfg.parallel, param_dtype(cfg, autocast),
                   _DTYPES[cfg.parallel.reduce_dtype])
    net.to_empty(device=device)
    net.init_weights(cfg.train.seed, write=write_shard if fsdp else None)
    if distributed and cfg.parallel.backend == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=device_ids)
    return net


def build_steps(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: LiteGenConfig,
                autocast: Optional[torch.dtype]):
    """The step engine for the backend: TorchSteps (single/DDP/FSDP2) or DeepSpeedSteps."""
    if cfg.parallel.backend == "deepspeed" and is_distributed():
        from litegen.parallel.deepspeed import initialize

        return initialize(model, optimizer, cfg, bf16=autocast == torch.bfloat16)
    return TorchSteps(model, optimizer)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside any wrapper (for sampling, EMA and checkpoint naming).

    DDP and DeepSpeed's engine keep it as `.module`; FSDP2 shards in place and wraps nothing.
    """
    wrapped = isinstance(model, DistributedDataParallel) or type(model).__module__.startswith("deepspeed.")
    return model.module if wrapped else model
