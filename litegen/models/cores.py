"""Attention cores with structure: per frame, across frames, in windows, in groups, text + video.

Like AttentionCore they hold no parameters and end in `attention()`; they take full-sequence
tensors [B, S, H, D] plus the sequence's `grid` (frames, rows, cols) or group count, and reshape
internally. That keeps the structure inside the seam: litegen/parallel can hand any of them the
full sequence for a subset of heads (Ulysses) and get the same result. The plan (plan.py) names
each core's kind so the parallel layer knows which communication it needs.
"""

from typing import Optional

import torch
from torch import Tensor

from litegen.models.attention import AttentionCore, attention


def _frames_first(x: Tensor, frames: int) -> Tensor:
    """[B, T*HW, H, D] -> [B*T, HW, H, D]: every frame becomes its own sequence."""
    return x.reshape(x.shape[0] * frames, -1, *x.shape[2:])


def _positions_first(x: Tensor, frames: int) -> Tensor:
    """[B, T*HW, H, D] -> [B*HW, T, H, D]: every (row, col) becomes a sequence over time."""
    (b, s), rest = x.shape[:2], x.shape[2:]
    x = x.reshape(b, frames, s // frames, *rest).transpose(1, 2)
    return x.reshape(b * (s // frames), frames, *rest)


class FrameAttentionCore(AttentionCore):
    """Spatial attention: each token attends to the tokens of its own frame."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int, int]) -> Tensor:
        frames = grid[0]
        out = attention(_frames_first(q, frames), _frames_first(k, frames), _frames_first(v, frames))
        return out.reshape(q.shape)


class TemporalAttentionCore(AttentionCore):
    """Temporal attention: each token attends to the tokens at its (row, col) in every frame."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int, int]) -> Tensor:
        b, s = q.shape[:2]
        frames = grid[0]
        out = attention(*(_positions_first(x, frames) for x in (q, k, v)))
        out = out.reshape(b, s // frames, frames, *q.shape[2:]).transpose(1, 2)
        return out.reshape(q.shape)


class WindowAttentionCore(AttentionCore):
    """Attention inside spatial windows spanning every frame (WorldDreamer's patchwise STPT).

    A window is `window` = (rows, cols) tokens of the grid across all frames. `shift` rolls the
    grid by half a window first (Swin), so alternating blocks connect neighbouring windows; the
    roll is cyclic and unmasked, so edge windows of a shifted block join opposite borders.
    """

    def __init__(self, window: tuple[int, int], shifted: bool = False):
        super().__init__()
        self.window, self.shifted = tuple(window), shifted

    def _sizes(self, grid: tuple[int, int, int]) -> tuple[int, int, int, int]:
        _, rows, cols = grid
        wh, ww = min(self.window[0], rows), min(self.window[1], cols)
        if rows % wh or cols % ww:
            raise ValueError(f"token grid {rows}x{cols} (rows x cols) must divide into windows {wh}x{ww}")
        shift = (wh // 2, ww // 2) if self.shifted else (0, 0)
        return wh, ww, *shift

    def forward(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int, int]) -> Tensor:
        wh, ww, sh, sw = self._sizes(grid)
        t, rows, cols = grid
        b, _, heads, d = q.shape

        def to_windows(x: Tensor) -> Tensor:
            x = x.reshape(b, t, rows, cols, heads, d).roll((-sh, -sw), dims=(2, 3))
            x = x.reshape(b, t, rows // wh, wh, cols // ww, ww, heads, d).permute(0, 2, 4, 1, 3, 5, 6, 7)
            return x.reshape(-1, t * wh * ww, heads, d)

        out = attention(to_windows(q), to_windows(k), to_windows(v))
        out = out.reshape(b, rows // wh, cols // ww, t, wh, ww, heads, d).permute(0, 3, 1, 4, 2, 5, 6, 7)
        return out.reshape(b, t, rows, cols, heads, d).roll((sh, sw), dims=(2, 3)).reshape(q.shape)


class GroupedAttentionCore(AttentionCore):
    """q [B, G*Mq, H, D], k/v [B, G*Mk, H, D]: group g's queries see only group g's keys (FIT)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, groups: int) -> Tensor:
        def split(x: Tensor) -> Tensor:
            if x.shape[1] % groups:
                raise ValueError(f"sequence of {x.shape[1]} tokens does not split into {groups} groups")
            return x.reshape(x.shape[0] * groups, -1, *x.shape[2:])

        return attention(split(q), split(k), split(v)).reshape(q.shape)


class JointAttentionCore(AttentionCore):
    """One softmax over [text; video] for [text; video] queries (MM-DiT); returns (video, text).

    Text comes separately so the parallel layer can keep it replicated while the video part is
    sharded. text_mask [B, L] (True = real token) hides padded text keys; None attends to all.
    """

    def forward(self, q: Tensor, k: Tensor, v: Tensor, text_q: Tensor, text_k: Tensor,
                text_v: Tensor, text_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        length = text_q.shape[1]
        mask = None
        if text_mask is not None:
            video_keys = text_mask.new_ones(q.shape[0], q.shape[1])
            mask = torch.cat([text_mask, video_keys], dim=1)[:, None, None, :]
        out = attention(torch.cat([text_q, q], 1), torch.cat([text_k, k], 1), torch.cat([text_v, v], 1), mask)
        return out[:, length:], out[:, :length]
