"""Apply parallelism to a plain model, in one place and one documented order."""

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from litegen.parallel.dims import ParallelDims
from litegen.parallel.distributed import is_distributed


def parallelize(model: nn.Module, dims: ParallelDims, device: torch.device) -> nn.Module:
    """Wrap `model` for its layout. The spine supports plain data parallelism (DDP)."""
    if dims.dp > 1 and is_distributed():
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside any wrapper (for sampling, EMA and checkpoint naming)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
