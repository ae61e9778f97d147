"""Per-model parallelism plan as data: which submodules litegen/parallel wraps, shards or swaps.

The model never imports torch.distributed; it only names its seams here, and litegen/parallel
applies sequence parallelism, FSDP, checkpointing and offload by these names.
"""

import fnmatch
from dataclasses import dataclass
from typing import Iterator, Union

from torch import nn

# One block-relative path, a tuple of them, or fnmatch patterns ("latent_layers.*.self_attn.core").
Paths = Union[str, tuple[str, ...]]

# How each kind of attention core sees the token sequence, i.e. what sequence parallelism must do:
ATTENTION_KINDS = {
    # q, k, v from the block's own sequence [B, S, H, D] (S sharded under SP). Structured cores
    # (per frame, per position over time, windows) also take `grid`, the *full* sequence's
    # (frames, rows, cols), so Ulysses, which hands a core the full sequence for a subset of
    # heads, can wrap them unchanged.
    "self": "self_attention",
    # q from the sequence, k/v from the (replicated) text: no sequence communication needed.
    "cross": "cross_attention",
    # JointAttentionCore: a replicated text prefix plus the sharded video sequence in one softmax.
    "joint": "joint_attention",
    # GroupedAttentionCore: q and k/v come from two sequences cut into the same number of groups
    # (FIT read/write); attention stays inside a group, so shards on group boundaries need none.
    "grouped": "grouped_attention",
}


def _as_tuple(paths: Paths) -> tuple[str, ...]:
    return (paths,) if isinstance(paths, str) else tuple(paths)


@dataclass(frozen=True)
class ModelPlan:
    """Attribute paths into one model family, relative to the model (or to a block where noted).

    Tokens enter the blocks as [B, S, dim] with S on dim 1; the rope tensor passed to every block
    has S on dim 0 ([S, head_dim//2, 2]); sequence parallelism shards both along S.

    The token-stack seam: a family that wants sequence parallelism gives its model a method
    (named by `token_stack`) `f(tokens [B, S, dim], rope [S, ...], *per_sample) -> [B, S, out]`
    that runs everything token-wise between embedding and unpatchify (blocks and final head),
    and calls it from forward. Apart from the self-attention cores (swapped for Ulysses/ring),
    every op in it must act on each token independently, so running it on a contiguous chunk
    of tokens yields that chunk of the output. litegen/parallel replaces the method per
    instance; the model itself stays unaware of it.
    """

    blocks: str  # nn.ModuleList of transformer blocks: one FSDP/checkpoint unit each
    self_attention: Paths  # in a block: cores over the video tokens (Ulysses/ring swap)
    cross_attention: Paths  # in a block: cores with text keys (heads-only sharding)
    embeddings: tuple[str, ...]  # modules run before the blocks (grouped with the root by FSDP)
    head: str  # final projection; runs last, so FSDP may keep it unsharded after forward
    joint_attention: Paths = ()  # in a block: JointAttentionCore (text prefix + video)
    grouped_attention: Paths = ()  # in a block: GroupedAttentionCore (FIT read / write)
    token_stack: str = "forward_tokens"  # the sequence-parallel seam (see above)
    # Positional arguments of a block that carry the per-token stream (the block returns their
    # successors). The other arguments (time embedding, text, positions) are shared by every
    # block: activation offload leaves those on the device instead of copying them once per block.
    block_stream: tuple[int, ...] = (0,)

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def attention_seams(self, model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
        """(qualified name, core module, kind) of every attention core, in block order."""
        for i, block in enumerate(self.block_list(model)):
            names = [name for name, _ in block.named_modules()]
            for kind, field in ATTENTION_KINDS.items():
                for pattern in _as_tuple(getattr(self, field)):
                    for path in fnmatch.filter(names, pattern):
                        yield f"{self.blocks}.{i}.{path}", block.get_submodule(path), kind

    def attention_cores(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        """(qualified name, module) of every attention core, in block order."""
        for name, core, _ in self.attention_seams(model):
            yield name, core
