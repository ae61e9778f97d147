"""Sequence parallelism applied to an unmodified model: shard the tokens, swap attention cores.

`apply_sequence_parallel` wraps the model's token-stack seam (ModelPlan.token_stack, a
`TokenStack`): every sequence argument (tokens, RoPE angles, FIT latents) is padded to equal
chunks and each rank keeps one contiguous chunk; per-sample inputs (time modulation, text) stay
whole. Attention cores are swapped by kind (litegen/parallel/sp_cores.py): self-attention becomes
Ulysses, ring or 2D (Ulysses inside, ring across) attention, structured grid cores run under
Ulysses, joint text+video cores keep the text whole; cross-attention and FIT's grouped cores are
untouched. The stack's per-token output is all-gathered at the end. Layouts a family's cores
cannot run are refused up front, naming the family, the core kind and why. Packed clips go
through their own seam (ModelPlan.packed_token_stack) whose clip boundaries are made local to
the rank's chunk (litegen/parallel/packed.py); under ring and 2D layouts each ring step masks its
K/V block to the queries' clips (litegen.parallel.ring.segment_bias).

Gradient contract: every rank of an SP group computes the same loss from the gathered output
(same sample, noise and timestep), so the gather's backward keeps only this rank's slice and each
rank's parameter gradients are partial sums over its tokens (and over its share of any whole,
per-sample stream such as CogVideoX's text: each copy only feeds this rank's consumers). The
data-parallel reduction then has to *sum* over SP ranks; backends average over the whole world,
so the trainer scales the loss by the SP degree (see `gradient_scale`).
"""

import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from litegen.config import ConfigError
from litegen.models.attention import Varlen, attention
from litegen.models.plan import ATTENTION_KINDS, ModelPlan, TokenStack
from litegen.parallel import comm
from litegen.parallel.dims import ParallelDims
from litegen.parallel.packed import local_varlen
from litegen.parallel.ring import ring_attention
from litegen.parallel.sp_cores import parallel_core
from litegen.parallel.ulysses import ulysses_attention


@dataclass(frozen=True)
class SequenceLayout:
    """How `length` tokens split over `world` ranks: padded to equal chunks, chunk `rank` here.

    `unit` tokens stay together (a FIT group): chunks and padding come in whole units.
    """

    length: int
    world: int
    rank: int
    unit: int = 1

    @property
    def padded(self) -> int:
        return math.ceil(self.length / (self.unit * self.world)) * self.unit * self.world

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

    def attend_packed(self, q: Tensor, k: Tensor, v: Tensor, varlen: Varlen) -> Tensor:
        """Variable-length self-attention of the local chunk: `varlen` spans the whole padded
        sequence (SP padding as its own clip), which is what Ulysses hands each rank per head."""
        padded = self.layout.padded if self.layout is not None else None
        if padded is not None and sum(varlen.q_lens) != padded:
            raise ValueError(f"packed self-attention boundaries cover {sum(varlen.q_lens)} tokens, the "
                             f"sharded sequence {padded}: declare them in TokenStack.varlens as 'self'")
        if self.ring_group is None:
            return ulysses_attention(q, k, v, self.ulysses_group, lambda q, k, v, _: attention(q, k, v, varlen=varlen))
        # Ring (and 2D after the Ulysses exchange): each ring step masks its K/V block to the clips
        # its queries belong to, from every token's clip over the whole sequence.
        segments = varlen.query_segment_ids()

        def inner(q, k, v, _):
            return ring_attention(q, k, v, self.ring_group, segments=segments)

        if self.ulysses_group is None:
            return inner(q, k, v, None)
        return ulysses_attention(q, k, v, self.ulysses_group, inner, None)

    def _ring_inner(self, q, k, v, key_valid):
        # After the Ulysses exchange a rank holds ring chunk i (Ulysses peers' chunks, in order)
        # for its heads: the ring then runs over ranks that share those heads.
        return ring_attention(q, k, v, self.ring_group, key_valid)


def _local_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor]) -> Tensor:
    mask = None if key_valid is None else key_valid[:, None, None, :]
    return attention(q, k, v, attn_mask=mask)


def _layouts(arguments: dict, spec: TokenStack, groups: SequenceParallelGroups) -> dict[str, SequenceLayout]:
    """One layout per sequence argument, all cut into the same number of units (tokens or groups)."""
    dims = spec.sequence_dims()
    units = arguments[spec.groups] if spec.groups else arguments[spec.output].shape[dims[spec.output]]
    layouts = {}
    for name, dim in spec.sequences:
        if arguments[name] is None:
            continue
        length = arguments[name].shape[dim]
        if length % units:
            raise ValueError(f"token stack argument {name!r}: {length} positions do not split into {units} "
                             f"{'groups' if spec.groups else 'tokens'}")
        layouts[name] = SequenceLayout(length, groups.sp, groups.sp_rank, unit=length // units)
    return layouts


def _sharded_token_stack(stack, spec: TokenStack, groups: SequenceParallelGroups):
    signature = inspect.signature(stack)
    dims = spec.sequence_dims()

    def sharded(*args, **kwargs) -> Tensor:
        bound = signature.bind(*args, **kwargs)
        layouts = _layouts(bound.arguments, spec, groups)
        for name, layout in layouts.items():
            bound.arguments[name] = layout.shard(bound.arguments[name], dims[name])
        out_layout = layouts[spec.output]
        if spec.groups:
            bound.arguments[spec.groups] = out_layout.chunk // out_layout.unit  # groups held here
        attended = groups.layout = layouts[spec.attends]
        start = attended.rank * attended.chunk
        for name, kind in spec.varlens:
            if bound.arguments.get(name) is not None:
                bound.arguments[name] = local_varlen(bound.arguments[name], kind, attended.padded,
                                                     start, start + attended.chunk)
        local = stack(*bound.args, **bound.kwargs)
        return gather_sequence(local, groups.sp_group, out_layout)

    return sharded


def _paths(plan: ModelPlan, kind: str) -> str:
    paths = getattr(plan, ATTENTION_KINDS[kind])
    return ", ".join((paths,) if isinstance(paths, str) else paths)


def sequence_parallel_problems(plan: ModelPlan, dims: ParallelDims, family: str,
                               num_heads: Optional[int] = None) -> list[tuple[str, str]]:
    """What this layout cannot do for this family's attention kinds, as (config field, message)."""
    if dims.sp == 1:
        return []
    kinds, problems = plan.kinds(), []
    if "grid" in kinds and dims.sp_ring > 1:
        # Ulysses splits heads: the largest SP degree it reaches is the part of sp dividing them.
        ulysses = math.gcd(num_heads, dims.sp) if num_heads else dims.sp
        problems.append(("parallel.sp_ring", (
            f"model.family={family}: its 'grid' attention cores ({_paths(plan, 'grid')}) reshape the whole "
            f"token grid (per frame, per position over time, or in windows); a ring rank only ever holds "
            f"one contiguous chunk of tokens, so they run under Ulysses only, whose degree must divide "
            f"the heads: use parallel.sp_ring=1 parallel.sp_ulysses={ulysses}")))
    if "grouped" in kinds and plan.token_stack.groups is None:
        problems.append(("parallel", (
            f"model.family={family}: its 'grouped' attention cores ({_paths(plan, 'grouped')}) keep "
            f"attention inside token groups, which needs the token stack to shard on group boundaries, "
            f"but its plan names no TokenStack.groups argument (litegen/models/plan.py)")))
    return problems


def check_sequence_parallel(plan: ModelPlan, dims: ParallelDims, family: str,
                            num_heads: Optional[int] = None) -> None:
    """Raise ConfigError (naming family, core kind, why and the fix) for a layout it cannot run."""
    problems = sequence_parallel_problems(plan, dims, family, num_heads)
    if problems:
        raise ConfigError(problems)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    model.get_submodule(parent).register_module(child, module)


def apply_sequence_parallel(model: nn.Module, plan: ModelPlan, dims: ParallelDims, rank: int) -> None:
    """Shard `model`'s token stack over the SP group of `rank` (in place; no-op when sp == 1)."""
    if dims.sp == 1:
        return
    cfg = getattr(model, "cfg", None)
    check_sequence_parallel(plan, dims, getattr(cfg, "family", type(model).__name__),
                            getattr(cfg, "num_heads", None))
    stacks = [(spec, getattr(model, spec.method, None)) for spec in plan.token_stacks()]
    for spec, stack in stacks:
        if stack is None:
            raise ValueError(f"{type(model).__name__} has no token-stack seam {spec.method!r}; "
                             "sequence parallelism needs one (see litegen/models/plan.py)")
    groups = SequenceParallelGroups(dims, rank)
    for name, core, kind in list(plan.attention_seams(model)):
        replacement = parallel_core(kind, core, groups)
        if replacement is not None:
            _set_submodule(model, name, replacement)
    # An instance attribute shadows the class method: the model's forward calls the wrapper.
    for spec, stack in stacks:
        setattr(model, spec.method, _sharded_token_stack(stack, spec, groups))


def gradient_scale(dims: ParallelDims) -> float:
    """Factor on the loss before backward: SP ranks hold partial sums, backends average over them."""
    return float(dims.sp)
