"""Discrete visual tokenizers: latents <-> a grid of codebook ids (for objective=masked_tokens).

`VQTokenizer` is the interface a real VQ-GAN / MAGVIT tokenizer implements; `PaletteTokenizer` is
the built-in one: weight-free, for the pixel encoder's latents, good enough for the synthetic
moving shapes (plain colours) and for tests.
"""

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class VQTokenizer(ABC):
    vocab_size: int  # codebook size; ids are 0..vocab_size-1

    @abstractmethod
    def token_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(frames, rows, cols) of tokens for latents (C, T, H, W)."""

    @abstractmethod
    def encode(self, latents: Tensor) -> Tensor:
        """[B, C, T, H, W] float -> ids [B, T', H', W'] long."""

    @abstractmethod
    def decode(self, ids: Tensor) -> Tensor:
        """ids [B, T', H', W'] -> latents [B, C, T, H, W] float32."""


class PaletteTokenizer(VQTokenizer):
    """One token per `patch` x `patch` latent positions: their mean colour, each RGB channel
    quantised to `levels`.

    Reads the pixel encoder's layout (channel = colour-major, then the pixels folded into the
    position), so a token's code is the mean colour of its pixel block and decoding paints the
    block in that colour (like a VQ-GAN, `patch` downsamples the grid). vocab = levels^3; a flat
    colour at a level value round-trips exactly.
    """

    def __init__(self, latent_channels: int, levels: int, patch: int = 1):
        if latent_channels % 3 or levels < 2 or patch < 1:
            raise ValueError(f"need latent_channels divisible by 3, levels >= 2, patch >= 1; got "
                             f"{latent_channels}, {levels}, {patch}")
        self.latent_channels, self.levels, self.patch = latent_channels, levels, patch
        self.vocab_size = levels ** 3

    def token_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        t, h, w = latent_shape[-3:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"latent {h}x{w} does not divide into {self.patch}x{self.patch} palette patches")
        return t, h // self.patch, w // self.patch

    def encode(self, latents: Tensor) -> Tensor:
        b, c, t, h, w = latents.shape
        if c != self.latent_channels:
            raise ValueError(f"palette tokenizer expects {self.latent_channels} latent channels, got {c}")
        _, rows, cols = self.token_grid(latents.shape[1:])
        p = self.patch
        blocks = latents.float().reshape(b, 3, c // 3, t, rows, p, cols, p)
        colour = blocks.mean(dim=(2, 5, 7))  # [B, 3, T, rows, cols]
        q = ((colour.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round().long()
        return (q[:, 0] * self.levels + q[:, 1]) * self.levels + q[:, 2]

    def decode(self, ids: Tensor) -> Tensor:
        levels, p = self.levels, self.patch
        q = torch.stack([ids // levels ** 2, ids // levels % levels, ids % levels], dim=1)  # [B, 3, T, r, c]
        colour = q.float() / (levels - 1) * 2 - 1
        b, _, t, rows, cols = colour.shape
        painted = colour[:, :, None, :, :, None, :, None].expand(
            b, 3, self.latent_channels // 3, t, rows, p, cols, p)
        return painted.reshape(b, self.latent_channels, t, rows * p, cols * p)


def build_tokenizer(kind: str, latent_channels: int, palette_levels: int, palette_patch: int = 1) -> VQTokenizer:
    if kind == "palette":
        return PaletteTokenizer(latent_channels, palette_levels, palette_patch)
    raise ValueError(f"unknown tokenizer {kind!r}; available: ['palette']")
