"""Ulysses sequence parallelism: all-to-all from sequence-sharded to head-sharded and back.

Each of P ranks holds s = S/P tokens of every head. One all-to-all (q, k and v packed into one
contiguous send buffer) gives each rank all S tokens of H/P heads; attention runs locally on those;
a second all-to-all returns the output to s tokens of all heads. Backward is the same exchange
in reverse, so gradients never see the full sequence of all heads on one rank.
"""

from typing import Callable, Optional

import torch
from torch import Tensor

from litegen.parallel import comm


def _seq_to_heads(tensors: list[Tensor], group) -> list[Tensor]:
    """G tensors [B, s, H, D] -> G tensors [B, P*s, H/P, D]: head group j of every rank goes to rank j."""
    world = torch.distributed.get_world_size(group)
    b, s, h, d = tensors[0].shape
    send = tensors[0].new_empty(world, len(tensors), b, s, h // world, d)
    for i, t in enumerate(tensors):  # one copy each into the one send buffer
        send[:, i].copy_(t.unflatten(2, (world, h // world)).permute(2, 0, 1, 3, 4))
    recv = torch.empty_like(send)
    comm.all_to_all(recv, send, group)
    # recv[j, i]: tensor i of rank j's tokens (sequence chunk j) for this rank's heads.
    return [recv[:, i].transpose(0, 1).reshape(b, world * s, h // world, d) for i in range(len(tensors))]


def _heads_to_seq(tensors: list[Tensor], group) -> list[Tensor]:
    """G tensors [B, P*s, H/P, D] -> G tensors [B, s, H, D]: the inverse of `_seq_to_heads`."""
    world = torch.distributed.get_world_size(group)
    b, seq, h, d = tensors[0].shape
    send = tensors[0].new_empty(world, len(tensors), b, seq // world, h, d)
    for i, t in enumerate(tensors):
        send[:, i].copy_(t.unflatten(1, (world, seq // world)).transpose(0, 1))
    recv = torch.empty_like(send)
    comm.all_to_all(recv, send, group)
    # recv[j, i]: tensor i of this rank's tokens for head group j.
    return [recv[:, i].permute(1, 2, 0, 3, 4).reshape(b, seq // world, world * h, d)
            for i in range(len(tensors))]


class _AllToAll(torch.autograd.Function):
    """Switch tensors between sequence- and head-sharding; backward is the inverse switch."""

    @staticmethod
    def forward(ctx, group, to_heads: bool, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.group, ctx.to_heads = group, to_heads
        return tuple((_seq_to_heads if to_heads else _heads_to_seq)(list(tensors), group))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        back = _heads_to_seq if ctx.to_heads else _seq_to_heads
        return (None, None, *back([g.contiguous() for g in grads], ctx.group))


def seq_to_heads(group, *tensors: Tensor) -> tuple[Tensor, ...]:
    return _AllToAll.apply(group, True, *tensors)


def heads_to_seq(group, *tensors: Tensor) -> tuple[Tensor, ...]:
    return _AllToAll.apply(group, False, *tensors)


# (q, k, v [B, S, h, D], key_valid [B, S] bool or None) -> out [B, S, h, D]
LocalAttention = Callable[[Tensor, Tensor, Tensor, Optional[Tensor]], Tensor]


def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, group, inner: LocalAttention,
                      key_valid: Optional[Tensor] = None) -> Tensor:
    """Attention over the sequence sharded across `group`; q, k, v [B, s, H, D] -> [B, s, H, D].

    key_valid [B, P*s] bool (True = real key) covers the whole (padded) sequence; `inner` runs
    attention on the gathered sequence for this rank's heads (SDPA, or the ring across nodes).
    """
    world = torch.distributed.get_world_size(group)
    if q.shape[2] % world:
        raise ValueError(f"{q.shape[2]} heads cannot split {world} ways for Ulysses attention")
    q, k, v = seq_to_heads(group, q, k, v)  # one all-to-all moves all three
    (out,) = heads_to_seq(group, inner(q, k, v, key_valid))
    return out


def ulysses_bytes_per_rank(batch: int, local_tokens: int, heads: int, head_dim: int,
                           world: int, element_size: int) -> dict[str, int]:
    """Bytes one rank sends per Ulysses attention call: q, k, v out and the output back.

    Each all-to-all keeps 1/P of its buffer local and sends the rest; backward moves the same
    amounts the other way (d_out in, d_q/d_k/d_v back).
    """
    one = batch * local_tokens * (heads // world) * head_dim * element_size * (world - 1)
    return {"forward": 4 * one, "backward": 4 * one}
