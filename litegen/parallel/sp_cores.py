"""Sequence-parallel replacements for each attention-core kind a model plan names.

`self` cores become Ulysses, ring or 2D attention over the sharded sequence. `grid` cores
(structured: per frame, per position over time, windows) keep their own math: Ulysses hands them
the full sequence for this rank's heads, padding trimmed. `joint` cores (a replicated text prefix
and the sharded video in one softmax, MM-DiT) put the text in front of the video on every rank;
see `joint_attention` for how each layout keeps every term of the softmax counted once. `cross`
and `grouped` cores need no replacement (see litegen/models/plan.py).
"""

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from litegen.models.attention import Varlen, attention
from litegen.parallel import comm
from litegen.parallel.ring import ring_attention
from litegen.parallel.ulysses import heads_to_seq, seq_to_heads


class _GatherHeads(torch.autograd.Function):
    """[B, L, H/U, D] per rank -> [B, L, H, D] on every rank (head group j from rank j).

    Every rank's copy then feeds that rank's own consumers, so the gradient of head group j is
    the sum of all copies' gradients there: backward is a reduce-scatter.
    """

    @staticmethod
    def forward(ctx, local: Tensor, group) -> Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        buffer = local.new_empty((world * local.shape[0], *local.shape[1:]))
        comm.all_gather(buffer, local.contiguous(), group)
        b, length, h, d = local.shape
        return buffer.unflatten(0, (world, b)).permute(1, 2, 0, 3, 4).reshape(b, length, world * h, d)

    @staticmethod
    def backward(ctx, grad: Tensor):
        world = dist.get_world_size(ctx.group)
        b, length, heads, d = grad.shape
        send = grad.unflatten(2, (world, heads // world)).permute(2, 0, 1, 3, 4)  # head group j -> rank j
        out = grad.new_empty((b, length, heads // world, d))
        comm.reduce_scatter(out, send.reshape(world * b, length, -1, d).contiguous(), ctx.group)
        return out, None


def own_heads(x: Tensor, group) -> Tensor:
    """This rank's head group of a replicated [B, L, H, D] (the heads Ulysses gives it)."""
    world = dist.get_world_size(group)
    return x.unflatten(2, (world, x.shape[2] // world)).select(2, dist.get_rank(group))


def _valid_or_ones(valid: Optional[Tensor], batch: int, length: int, device) -> Tensor:
    if valid is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    return valid.expand(batch, -1)


def ring_joint_valid(text_valid: Optional[Tensor], key_valid: Optional[Tensor], batch: int,
                     text_len: int, block: int, ring: int, device) -> Tensor:
    """[B, ring * (L + block)] key validity of the ring blocks [text; video chunk o], o = 0..ring-1.

    Every ring rank carries the text in front of its video chunk, but only ring rank 0's copy is a
    real key: the text enters each softmax exactly once.
    """
    text = _valid_or_ones(text_valid, batch, text_len, device)
    video = _valid_or_ones(key_valid, batch, ring * block, device)
    parts = []
    for owner in range(ring):
        parts += [text if owner == 0 else torch.zeros_like(text), video[:, owner * block:(owner + 1) * block]]
    return torch.cat(parts, dim=1)


def joint_attention(groups, q: Tensor, k: Tensor, v: Tensor, text_q: Tensor, text_k: Tensor,
                    text_v: Tensor, text_valid: Optional[Tensor],
                    key_valid: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """MM-DiT attention with the video sharded: q, k, v [B, s, H, D] (this rank's chunk), text
    [B, L, H, D] whole on every rank. Returns (video out [B, s, H, D], text out [B, L, H, D]).

    Ulysses: video moves to head shards, the text is cut to the same heads, one local softmax runs
    over [text; whole video] and the text output is gathered back over heads. Ring (and 2D, after
    the Ulysses step): the queries are [text; video chunk], the travelling K/V blocks are
    [text; video chunk] with the text valid in ring rank 0's block only, so every rank computes the
    whole text output itself (L extra queries) and text keys are counted once.
    key_valid: [B or 1, P*s] over the padded video (None: nothing padded); text_valid [B, L] or None.
    """
    length = text_q.shape[1]
    if groups.ulysses_group is not None:
        q, k, v = seq_to_heads(groups.ulysses_group, q, k, v)
        text_q, text_k, text_v = (own_heads(x, groups.ulysses_group) for x in (text_q, text_k, text_v))
    queries, keys, values = (torch.cat(pair, 1) for pair in ((text_q, q), (text_k, k), (text_v, v)))
    if groups.ring_group is not None:
        valid = ring_joint_valid(text_valid, key_valid, q.shape[0], length, q.shape[1], groups.ring, q.device)
        out = ring_attention(queries, keys, values, groups.ring_group, valid)
    else:
        mask = None
        if text_valid is not None or key_valid is not None:
            mask = torch.cat([_valid_or_ones(text_valid, q.shape[0], length, q.device),
                              _valid_or_ones(key_valid, q.shape[0], q.shape[1], q.device)], 1)
        out = attention(queries, keys, values, None if mask is None else mask[:, None, None, :])
    text_out, out = out[:, :length], out[:, length:]
    if groups.ulysses_group is not None:
        (out,) = heads_to_seq(groups.ulysses_group, out)
        text_out = _GatherHeads.apply(text_out, groups.ulysses_group)
    return out, text_out


def grid_attention(groups, core: nn.Module, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """A structured core under Ulysses: full (unpadded) sequence, this rank's heads, core unchanged."""
    layout = groups.layout
    q, k, v = seq_to_heads(groups.ulysses_group, q, k, v)
    out = core(*(x.narrow(1, 0, layout.length) for x in (q, k, v)), **kwargs)
    pad = layout.padded - layout.length
    if pad:  # padding tokens' outputs are discarded at the end of the stack: zeros will do
        out = torch.cat([out, out.new_zeros(out.shape[0], pad, *out.shape[2:])], dim=1)
    (out,) = heads_to_seq(groups.ulysses_group, out)
    return out


class SequenceParallelAttention(nn.Module):
    """Drop-in for a plain self-attention core over a sequence sharded across SP ranks."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
                varlen: Optional[Varlen] = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError("sequence-parallel self-attention takes no custom mask "
                             "(sequence padding is masked internally)")
        if varlen is not None:  # packed clips: boundaries over the whole padded sequence
            return self.groups.attend_packed(q, k, v, varlen)
        layout = self.groups.layout
        return self.groups.attend(q, k, v, layout.key_valid(q.device) if layout else None)


class SequenceParallelJointAttention(nn.Module):
    """Drop-in for JointAttentionCore: video sharded, text whole; returns (video, text)."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, q: Tensor, k: Tensor, v: Tensor, text_q: Tensor, text_k: Tensor, text_v: Tensor,
                text_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        layout = self.groups.layout
        return joint_attention(self.groups, q, k, v, text_q, text_k, text_v, text_mask,
                               layout.key_valid(q.device) if layout else None)


class SequenceParallelGridAttention(nn.Module):
    """Wraps a structured core (it keeps the math, this keeps the heads exchange)."""

    def __init__(self, groups, core: nn.Module):
        super().__init__()
        self.groups, self.core = groups, core

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        return grid_attention(self.groups, self.core, q, k, v, **kwargs)


def parallel_core(kind: str, core: nn.Module, groups) -> Optional[nn.Module]:
    """The SP replacement for a core of `kind`, or None where the core needs none."""
    if kind == "self":
        return SequenceParallelAttention(groups)
    if kind == "joint":
        return SequenceParallelJointAttention(groups)
    if kind == "grid":
        return SequenceParallelGridAttention(groups, core)
    return None  # cross: text K/V are whole; grouped: shards hold whole groups
