"""Per-model parallelism plan as data: which submodules litegen/parallel wraps, shards or swaps.

The model never imports torch.distributed; it only names its seams here, and litegen/parallel
applies sequence parallelism, FSDP, checkpointing and offload by these names.
"""

import fnmatch
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

from torch import nn

# One block-relative path, a tuple of them, or fnmatch patterns ("latent_layers.*.self_attn.core").
Paths = Union[str, tuple[str, ...]]

# How each kind of attention core sees the token sequence, i.e. what sequence parallelism must do:
ATTENTION_KINDS = {
    # Plain softmax attention over the whole attended sequence: q, k, v [B, S, H, D], S sharded
    # under SP. Any SP layout works (Ulysses, ring, 2D).
    "self": "self_attention",
    # Structured cores (per frame, per position over time, windows) over the attended sequence:
    # they also take `grid`, the *full* sequence's (frames, rows, cols), and reshape by it. Ulysses
    # hands a core the full sequence for a subset of heads, so it wraps them unchanged; a ring rank
    # only ever holds a contiguous chunk, which these cores cannot reshape: Ulysses only.
    "grid": "grid_attention",
    # q from the sequence, k/v from the (replicated) text: no sequence communication needed.
    "cross": "cross_attention",
    # JointAttentionCore: a replicated text prefix plus the sharded video sequence in one softmax.
    "joint": "joint_attention",
    # GroupedAttentionCore: q and k/v come from two sequences cut into the same number of groups
    # (FIT read/write); attention stays inside a group, so shards on group boundaries
    # (TokenStack.groups) need no communication at all.
    "grouped": "grouped_attention",
}


def _as_tuple(paths: Paths) -> tuple[str, ...]:
    return (paths,) if isinstance(paths, str) else tuple(paths)


@dataclass(frozen=True)
class TokenStack:
    """The sequence-parallel seam: the model method that runs everything between embedding and
    unpatchify, and which of its arguments are token sequences.

    The model calls `method` from forward; litegen/parallel replaces it per instance with a
    wrapper that cuts every argument named in `sequences` into contiguous chunks along its
    sequence dim (padding the end to equal chunks) and passes this rank's chunk, calls the method,
    and all-gathers the returned [B, S, out] (laid out like the sequence `output`). The model
    itself stays unaware of it. The contract the method must keep:

    - Outside attention cores, every op on a sequence acts on each token independently (norms,
      MLPs, modulation, the head), so a chunk in gives that chunk out. A sequence argument may be
      None (no RoPE); it is passed through.
    - Every other argument (timestep embedding, text, `grid`) is whole and identical on every
      rank. The method may carry and transform such a per-sample stream (CogVideoX's text) as long
      as it meets the sequence only inside attention cores whose parallel versions return it whole.
    - Attention goes through the cores the plan names; self, grid and joint cores attend over the
      sequence `attends` (its padding keys are masked, or trimmed away for grid cores).
    - With `groups` (the name of an int argument), every sequence is G equal groups that must not
      be split (FIT: a group's latents read and write only that group's patches): sequences are
      cut and padded on group boundaries, and the method gets this rank's group count.
    - `varlens` names the clip boundaries (`Varlen` arguments) of a packed sequence and what their
      queries run along: "self" (queries and keys are the attended sequence: the boundaries stay
      whole, since Ulysses attends over the whole sequence, and the padding at its end becomes one
      more clip) or "cross" (queries are the sequence, keys are whole per-clip text: the query
      side is recomputed for this rank's chunk, where a clip may start or end mid-chunk).
    """

    method: str = "forward_tokens"
    sequences: tuple[tuple[str, int], ...] = (("tokens", 1), ("rope", 0))  # (argument, sequence dim)
    output: str = "tokens"
    attends: str = "tokens"
    groups: Optional[str] = None
    varlens: tuple[tuple[str, str], ...] = ()  # (argument, "self" | "cross")

    def sequence_dims(self) -> dict[str, int]:
        return dict(self.sequences)


@dataclass(frozen=True)
class ModelPlan:
    """Attribute paths into one model family, relative to the model (or to a block where noted).

    Tokens enter the blocks as [B, S, dim] with S on dim 1; per-token tables such as RoPE angles
    have S on dim 0 ([S, head_dim//2, 2]); sequence parallelism shards both along S through the
    token-stack seam (`TokenStack`).
    """

    blocks: str  # nn.ModuleList of transformer blocks: one FSDP/checkpoint unit each
    self_attention: Paths  # in a block: plain cores over the attended sequence (Ulysses/ring swap)
    cross_attention: Paths  # in a block: cores with text keys (untouched by SP)
    embeddings: tuple[str, ...]  # modules run before the blocks (grouped with the root by FSDP)
    head: str  # final projection; runs last, so FSDP may keep it unsharded after forward
    joint_attention: Paths = ()  # in a block: JointAttentionCore (text prefix + video)
    grouped_attention: Paths = ()  # in a block: GroupedAttentionCore (FIT read / write)
    grid_attention: Paths = ()  # in a block: structured cores taking the full sequence's grid
    token_stack: TokenStack = field(default_factory=TokenStack)  # the sequence-parallel seam
    # Positional arguments of a block that carry the per-token stream (the block returns their
    # successors). The other arguments (time embedding, text, positions) are shared by every
    # block: activation offload leaves those on the device instead of copying them once per block.
    block_stream: tuple[int, ...] = (0,)
    packed_token_stack: Optional[TokenStack] = None  # the same seam for packed clips (varlen attention)

    def token_stacks(self) -> tuple[TokenStack, ...]:
        """Every seam sequence parallelism wraps: the plain stack, then the packed one if any."""
        return (self.token_stack,) + ((self.packed_token_stack,) if self.packed_token_stack else ())

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def attention_seams(self, model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
        """(qualified name, core module, kind) of every attention core, in block order."""
        for i, block in enumerate(self.block_list(model)):
            names = [name for name, _ in block.named_modules()]
            for kind, field_name in ATTENTION_KINDS.items():
                for pattern in _as_tuple(getattr(self, field_name)):
                    for path in fnmatch.filter(names, pattern):
                        yield f"{self.blocks}.{i}.{path}", block.get_submodule(path), kind

    def attention_cores(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        """(qualified name, module) of every attention core, in block order."""
        for name, core, _ in self.attention_seams(model):
            yield name, core

    def kinds(self) -> set[str]:
        """The attention kinds this plan names (without a model: from the paths given)."""
        return {kind for kind, field_name in ATTENTION_KINDS.items() if _as_tuple(getattr(self, field_name))}
