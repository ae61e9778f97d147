"""Sequence parallelism applied to an unmodified model: shard the tokens, swap self-attention.

`apply_sequence_parallel` wraps the model's token-stack seam (ModelPlan.token_stack): tokens and
their RoPE angles are padded to a multiple of the SP degree and each rank keeps one contiguous
chunk; per-sample inputs (time modulation, text) stay whole. Self-attention cores become Ulysses,
ring or 2D (Ulysses inside, ring across) attention; cross-attention is untouched (queries stay
sharded, text K/V are replicated). The stack's per-token output is all-gathered at the end.

Gradient contract: every rank of an SP group computes the same loss from the gathered output
(same sample, noise and timestep), so the gather's backward keeps only this rank's slice and each
rank's parameter gradients are partial sums over its tokens. The data-parallel reduction then
has to *sum* over SP ranks; backends average over the whole world, so the trainer scales the
loss by the SP degree (see `gradient_scale`).
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from litegen.models.attention import attention
from litegen.models.plan import ModelPlan
from litegen.parallel import comm
from litegen.parallel.dims import ParallelDims
from litegen.parallel.ring import ring_attention
from litegen.parallel.ulysses import ulysses_attention


@dataclass(frozen=True)
class SequenceLayout:
    """How `length` tokens split over `world` ranks: padded to equal chunks, chunk `rank` here."""

    length: int
    world: int
    rank: int

    @property
    def padded(self) -> int:
        return math.ceil(self.length / self.world) * self.world

    @property
    def chunk(self) -> int:
        return self.padded // self.world

    def shard(self, x: Tensor, dim: int) -> Tensor:
        """This rank's chunk of x along `dim` (zero-padded at the end of the sequence)."""
        pad = self.padded - self.length
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        return x.narrow(dim, self.rank * self.chunk, self.chunk)

    def key_valid(self, device) -> Optional[Tensor]:
        """[1, padded] bool, False on padding keys; None when nothing is padded."""
        if self.padded == self.length:
            return None
        return (torch.arange(self.padded, device=device) < self.length)[None]


class _GatherSequence(torch.autograd.Function):
    """All-gather chunks along dim 1; backward keeps this rank's chunk (see module docstring)."""

    @staticmethod
    def forward(ctx, local: Tensor, group, layout: SequenceLayout) -> Tensor:
        ctx.layout = layout
        buffer = local.new_empty((layout.world * local.shape[0], *local.shape[1:]))
        comm.all_gather(buffer, local.contiguous(), group)
        full = buffer.unflatten(0, (layout.world, -1)).movedim(0, 1).flatten(1, 2)  # rank order
        return full.narrow(1, 0, layout.length)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.layout.shard(grad, 1).contiguous(), None, None


def gather_sequence(local: Tensor, group, layout: SequenceLayout) -> Tensor:
    return _GatherSequence.apply(local, group, layout)


class SequenceParallelGroups:
    """The groups one rank's SP attention talks to, plus the layout of the sequence in flight.

    The layout is left in place after the stack returns (not scoped to a `with`): activation
    checkpointing recomputes attention during backward, after the stack call has ended.
    """

    def __init__(self, dims: ParallelDims, rank: int):
        self.sp, self.sp_rank = dims.sp, dims.sp_rank(rank)
        self.ring, self.ulysses = dims.sp_ring, dims.sp_ulysses
        self.sp_group = dims.group("sp")
        self.ring_group = dims.group("sp_ring") if self.ring > 1 else None
        self.ulysses_group = dims.group("sp_ulysses") if self.ulysses > 1 else None
        self.layout: Optional[SequenceLayout] = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor] = None) -> Tensor:
        """Self-attention of the local chunk [B, s, H, D] against the whole sequence.

        key_valid: [B or 1, P*s] bool over the whole padded sequence (True = real key).
        """
        if key_valid is not None:
            key_valid = key_valid.expand(q.shape[0], -1)
        if self.ulysses_group is None:
            return ring_attention(q, k, v, self.ring_group, key_valid)
        inner = self._ring_inner if self.ring_group is not None else _local_attention
        return ulysses_attention(q, k, v, self.ulysses_group, inner, key_valid)

    def _ring_inner(self, q, k, v, key_valid):
        # After the Ulysses exchange a rank holds ring chunk i (Ulysses peers' chunks, in order)
        # for its heads: the ring then runs over ranks that share those heads.
        return ring_attention(q, k, v, self.ring_group, key_valid)


def _local_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor]) -> Tensor:
    mask = None if key_valid is None else key_valid[:, None, None, :]
    return attention(q, k, v, attn_mask=mask)


class SequenceParallelAttention(nn.Module):
    """Drop-in AttentionCore for self-attention over a sequence sharded across SP ranks."""

    def __init__(self, groups: SequenceParallelGroups):
        super().__init__()
        self.groups = groups

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        if attn_mask is not None:
            raise ValueError("sequence-parallel self-attention takes no custom mask "
                             "(sequence padding is masked internally)")
        layout = self.groups.layout
        return self.groups.attend(q, k, v, layout.key_valid(q.device) if layout else None)


def _sharded_token_stack(stack, groups: SequenceParallelGroups):
    def sharded(tokens: Tensor, rope: Tensor, *args, **kwargs) -> Tensor:
        groups.layout = SequenceLayout(tokens.shape[1], groups.sp, groups.sp_rank)
        local = stack(groups.layout.shard(tokens, 1), groups.layout.shard(rope, 0), *args, **kwargs)
        return gather_sequence(local, groups.sp_group, groups.layout)

    return sharded


def apply_sequence_parallel(model: nn.Module, plan: ModelPlan, dims: ParallelDims, rank: int) -> None:
    """Shard `model`'s token stack over the SP group of `rank` (in place; no-op when sp == 1)."""
    if dims.sp == 1:
        return
    stack = getattr(model, plan.token_stack, None)
    if stack is None:
        raise ValueError(f"{type(model).__name__} has no token-stack seam {plan.token_stack!r}; "
                         "sequence parallelism needs one (see litegen/models/plan.py)")
    groups = SequenceParallelGroups(dims, rank)
    for block in plan.block_list(model):
        parent, _, name = plan.self_attention.rpartition(".")
        block.get_submodule(parent).register_module(name, SequenceParallelAttention(groups))
    # An instance attribute shadows the class method: the model's forward calls the wrapper.
    setattr(model, plan.token_stack, _sharded_token_stack(stack, groups))


def gradient_scale(dims: ParallelDims) -> float:
    """Factor on the loss before backward: SP ranks hold partial sums, backends average over them."""
    return float(dims.sp)
