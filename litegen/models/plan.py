"""Per-model parallelism plan as data: which submodules litegen/parallel wraps, shards or swaps.

The model never imports torch.distributed; it only names its seams here, and litegen/parallel
applies sequence parallelism, FSDP, checkpointing and offload by these names.
"""

from dataclasses import dataclass
from typing import Iterator

from torch import nn


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
    self_attention: str  # in a block: AttentionCore over the video tokens (Ulysses/ring swap)
    cross_attention: str  # in a block: AttentionCore with text keys (heads-only sharding)
    embeddings: tuple[str, ...]  # modules run before the blocks (grouped with the root by FSDP)
    head: str  # final projection; runs last, so FSDP may keep it unsharded after forward
    token_stack: str = "forward_tokens"  # the sequence-parallel seam (see above)

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def attention_cores(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        """(qualified name, module) of every self- and cross-attention core, in block order."""
        for i, block in enumerate(self.block_list(model)):
            for path in (self.self_attention, self.cross_attention):
                yield f"{self.blocks}.{i}.{path}", block.get_submodule(path)
