"""Packed sequences (NaViT-style): several clips' patch tokens concatenated into one sequence.

Each clip keeps its own 3D RoPE positions, timestep and caption; attention stays within the clip
(litegen.models.attention.Varlen). The layout is plain data computed from the clips' token
grids, so a sequence-parallel wrapper can slice its per-token tensors (positions, segment ids)
along the sequence like the tokens themselves.
"""

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from litegen.models.attention import Varlen
from litegen.models.embeddings import patchify, token_grid, unpatchify
from litegen.models.rope import grid_positions

Grid = tuple[int, int, int]


@dataclass(eq=False)
class PackedLayout:
    grids: tuple[Grid, ...]  # token grid (frames, rows, cols) of each clip, in sequence order
    segment_ids: Tensor  # long [S]: the clip each token belongs to
    positions: Tensor  # long [S, 3]: (frame, row, col) of each token within its clip
    varlen: Varlen  # self-attention: clip i to clip i

    @property
    def lengths(self) -> list[int]:
        return [t * h * w for t, h, w in self.grids]

    def __len__(self) -> int:
        return len(self.grids)

    def cross_varlen(self, context_mask: Tensor) -> Varlen:
        """Clip i's tokens attend to the real (unmasked) text tokens of caption i."""
        return Varlen.from_lengths(self.lengths, context_mask.sum(1).tolist(), device=context_mask.device)


def pack_layout(grids: Sequence[Grid], device=None) -> PackedLayout:
    grids = tuple(tuple(int(n) for n in g) for g in grids)
    lengths = [t * h * w for t, h, w in grids]
    segment_ids = torch.repeat_interleave(torch.arange(len(grids), device=device),
                                          torch.tensor(lengths, device=device))
    positions = torch.cat([grid_positions(g, device=device) for g in grids])
    return PackedLayout(grids, segment_ids, positions, Varlen.from_lengths(lengths, lengths, device=device))


@dataclass(eq=False)
class PackedClips:
    """What the objective receives instead of a [B, C, T, H, W] batch when clips are packed."""

    tokens: Tensor  # [1, S, C * pt * ph * pw] patch tokens, clip after clip
    layout: PackedLayout
    patch: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.layout)

    def clip_shapes(self) -> list[tuple[int, int, int, int]]:
        """(C, T, H, W) of each clip's latent."""
        c = self.tokens.shape[-1] // (self.patch[0] * self.patch[1] * self.patch[2])
        return [(c, *(g * p for g, p in zip(grid, self.patch))) for grid in self.layout.grids]

    def with_tokens(self, tokens: Tensor) -> "PackedClips":
        return PackedClips(tokens, self.layout, self.patch)


def pack_clips(latents: Sequence[Tensor], patch: Sequence[int]) -> PackedClips:
    """Latents [C, T, H, W] of several clips (any shapes) -> one packed token sequence."""
    patch = tuple(int(p) for p in patch)
    grids = [token_grid(x.shape[1:], patch) for x in latents]
    tokens = torch.cat([patchify(x[None], patch) for x in latents], dim=1)
    return PackedClips(tokens, pack_layout(grids, device=tokens.device), patch)


def unpack_clips(tokens: Tensor, layout: PackedLayout, patch: Sequence[int]) -> list[Tensor]:
    """[1, S, C * prod(patch)] -> the clips as [C, T, H, W] (inverse of pack_clips)."""
    pieces = tokens.split(layout.lengths, dim=1)
    return [unpatchify(piece, grid, tuple(patch))[0] for piece, grid in zip(pieces, layout.grids)]


def per_token(values: Tensor, layout: PackedLayout) -> Tensor:
    """Per-clip rows [n, ...] -> per-token rows [S, ...] (clip i's row repeated over its tokens).

    Not values[layout.segment_ids]: the backward of that gather accumulates into each clip's row
    with CPU threads in no fixed order, which made packed runs differ in the last bits from run to
    run (time-embedding gradients, 2 threads). Expanding each row keeps the backward a plain sum.
    """
    rows = [values[i:i + 1].expand(n, *values.shape[1:]) for i, n in enumerate(layout.lengths)]
    return torch.cat(rows)


def per_clip_mean(values: Tensor, layout: PackedLayout) -> Tensor:
    """Mean of per-token values [S] within each clip -> [n]."""
    sums = torch.zeros(len(layout), dtype=values.dtype, device=values.device).index_add_(0, layout.segment_ids, values)
    return sums / torch.tensor(layout.lengths, dtype=values.dtype, device=values.device)
