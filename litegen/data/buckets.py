"""Clip shapes and their cost: which bucket a sample falls in, how many tokens it becomes, and the
seeded shuffle buffer in front of bucketing.

Buckets are pixel shapes (frames, height, width). A latent sample belongs to the bucket equal to
its pixel shape; a raw clip (mp4) can be fitted to the nearest bucket it covers (resize + centre
crop), the rule the prep tool uses too.
"""

import math
from dataclasses import dataclass
from typing import Generic, Optional, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
Shape = tuple[int, int, int]  # (frames, height, width) in pixels


@dataclass(frozen=True)
class TokenGeometry:
    """Pixel clip -> latent grid -> transformer tokens: the encoder's factors and the patch size."""

    spatial_factor: int = 1
    temporal_factor: int = 1
    causal: bool = False
    patch: tuple[int, int, int] = (1, 1, 1)

    @classmethod
    def of(cls, video_encoder, patch: Sequence[int]) -> "TokenGeometry":
        return cls(video_encoder.spatial_factor, video_encoder.temporal_factor,
                   bool(video_encoder.causal), tuple(int(p) for p in patch))

    def latent_thw(self, shape: Shape) -> tuple[int, int, int]:
        frames, height, width = shape
        t = 1 + (frames - 1) // self.temporal_factor if self.causal else frames // self.temporal_factor
        return t, height // self.spatial_factor, width // self.spatial_factor

    def tokens(self, shape: Shape) -> int:
        """Tokens of a pixel clip of this shape."""
        return self.latent_tokens(self.latent_thw(shape))

    def latent_tokens(self, thw: Sequence[int]) -> int:
        return math.prod(n // p for n, p in zip(thw, self.patch))


def nearest_bucket(shape: Shape, buckets: Sequence[Shape]) -> Optional[Shape]:
    """The bucket a clip of `shape` is best fitted to, or None when it is shorter than all of them.

    Closest aspect ratio first (least cropped away), then no upscaling, then the most frames,
    then the largest area. A clip equal to a bucket always gets that bucket.
    """
    frames, height, width = shape
    usable = [b for b in buckets if b[0] <= frames]
    if not usable:
        return None
    aspect = math.log(width / height)

    def rank(b: Shape):
        upscale = b[1] > height or b[2] > width
        return round(abs(math.log(b[2] / b[1]) - aspect), 6), upscale, -b[0], -b[1] * b[2]

    return min(usable, key=rank)


class ShuffleBuffer(Generic[T]):
    """Reservoir-style shuffle: hold `size` items, emit a random one as each new one arrives.

    The order depends only on the input order and the rng, and `items` is the whole state.
    """

    def __init__(self, size: int, items: Optional[list[T]] = None):
        self.size = size
        self.items: list[T] = list(items or [])

    def push(self, item: T, rng: np.random.Generator) -> list[T]:
        """Add item; returns the items that leave (none while the buffer fills, then one).

        More than one leaves only when the buffer was restored larger than `size` (a resume with
        a smaller buffer or on fewer readers), so it shrinks back as the stream goes on.
        """
        self.items.append(item)
        if self.size <= 1:  # shuffling off: first in, first out
            out, self.items = self.items, []
            return out
        out = []
        while len(self.items) > self.size:
            j = int(rng.integers(len(self.items)))
            self.items[j], self.items[-1] = self.items[-1], self.items[j]
            out.append(self.items.pop())
        return out
