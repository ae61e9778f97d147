"""Ulysses sequence parallelism: all-to-all from sequence-sharded to head-sharded and back.

Each of P ranks holds s = S/P tokens of every head. One all-to-all (q, k and v packed into one
contiguous buffer) gives each rank all S tokens of H/P heads; attention runs locally on those;
a second all-to-all returns the output to s tokens of all heads. Backward is the same exchange
in reverse, so gradients never see the full sequence of all heads on one rank.
"""

from typing import Callable, Optional

import torch
from torch import Tensor

from litegen.parallel import comm


def _seq_to_heads(x: Tensor, group) -> Tensor:
    """[G, B, s, H, D] on each rank -> [G, B, P*s, H/P, D]: heads group j ends on rank j."""
    world = torch.distributed.get_world_size(group)
    g, b, s, h, d = x.shape
    send = x.reshape(g, b, s, world, h // world, d).permute(3, 0, 1, 2, 4, 5).contiguous()
    recv = torch.empty_like(send)
    comm.all_to_all(recv, send, group)
    # recv[j] holds rank j's tokens (sequence chunk j) for this rank's heads.
    return recv.permute(1, 2, 0, 3, 4, 5).reshape(g, b, world * s, h // world, d)


def _heads_to_seq(x: Tensor, group) -> Tensor:
    """[G, B, P*s, H/P, D] -> [G, B, s, H, D]: the inverse of `_seq_to_heads`."""
    world = torch.distributed.get_world_size(group)
    g, b, seq, h, d = x.shape
    send = x.reshape(g, b, world, seq // world, h, d).permute(2, 0, 1, 3, 4, 5).contiguous()
    recv = torch.empty_like(send)
    comm.all_to_all(recv, send, group)
    # recv[j] holds this rank's tokens for heads group j.
    return recv.permute(1, 2, 3, 0, 4, 5).reshape(g, b, seq // world, world * h, d)


class _AllToAll(torch.autograd.Function):
    """Differentiable switch between sequence- and head-sharding; backward is the inverse switch."""

    @staticmethod
    def forward(ctx, x: Tensor, group, to_heads: bool) -> Tensor:
        ctx.group, ctx.to_heads = group, to_heads
        return _seq_to_heads(x, group) if to_heads else _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        back = _heads_to_seq(grad, ctx.group) if ctx.to_heads else _seq_to_heads(grad, ctx.group)
        return back, None, None


def seq_to_heads(x: Tensor, group) -> Tensor:
    return _AllToAll.apply(x, group, True)


def heads_to_seq(x: Tensor, group) -> Tensor:
    return _AllToAll.apply(x, group, False)


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
    qkv = seq_to_heads(torch.stack([q, k, v]), group)  # one all-to-all moves all three
    out = inner(qkv[0], qkv[1], qkv[2], key_valid)
    return heads_to_seq(out.unsqueeze(0), group).squeeze(0)


def ulysses_bytes_per_rank(batch: int, local_tokens: int, heads: int, head_dim: int,
                           world: int, element_size: int) -> dict[str, int]:
    """Bytes one rank sends per Ulysses attention call: q, k, v out and the output back.

    Each all-to-all keeps 1/P of its buffer local and sends the rest; backward moves the same
    amounts the other way (d_out in, d_q/d_k/d_v back).
    """
    one = batch * local_tokens * (heads // world) * head_dim * element_size * (world - 1)
    return {"forward": 4 * one, "backward": 4 * one}
