"""FSDP2 (`fully_shard`): one unit per transformer block plus the root, HSDP on a 2D mesh.

Applied to a model still on `meta`, so only each rank's shards are ever allocated; the weights
are then written shard by shard from the seed (`write_shard`), giving the same values as one
process builds.
"""

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from litegen.config import ParallelConfig
from litegen.models.plan import ModelPlan


def mixed_precision(param_dtype: torch.dtype, reduce_dtype: torch.dtype) -> MixedPrecisionPolicy:
    # No input casting: the model wants t in fp32 (bf16 rounds t*1000 to steps of 4) and RoPE
    # angles in fp32; autocast already runs the matmuls in param_dtype.
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                                cast_forward_inputs=False)


def apply_fsdp(model: nn.Module, plan: ModelPlan, mesh, cfg: ParallelConfig,
               param_dtype: torch.dtype, reduce_dtype: torch.dtype) -> nn.Module:
    """Shard each block, then the root (embeddings, head and anything left) over `mesh`."""
    policy = mixed_precision(param_dtype, reduce_dtype)
    for block in plan.block_list(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward, mp_policy=policy)
    # The root keeps its parameters gathered after forward: backward starts with the head, so
    # freeing them would only mean gathering them again at once.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    return model


@torch.no_grad()
def write_shard(param: Tensor, value: Tensor) -> None:
    """init_weights writer: keep only this rank's shard of the full initial value."""
    if isinstance(param, DTensor):
        # src_data_rank=None: every rank computed the same full value, so slice locally, no scatter.
        shard = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh,
                                  param.placements, src_data_rank=None)
        param.to_local().copy_(shard.to_local())
    else:
        param.copy_(value)
