"""Input/output embeddings shared by video DiTs: timestep sinusoid, condition MLPs, (un)patchify."""

import math

import torch
from torch import Tensor, nn

from litegen.models.rope import grid_positions


def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """[N] -> [N, dim] float32 as (cos | sin) halves, the order Wan's weights were trained with."""
    half = dim // 2
    exponent = torch.arange(half, device=positions.device, dtype=torch.float64) / half
    angle = positions.double()[:, None] * max_period ** -exponent
    return torch.cat([angle.cos(), angle.sin()], dim=-1).float()


def absolute_position_embedding(positions: Tensor, dim: int) -> Tensor:
    """Integer (frame, row, col) [..., S, 3] -> fixed sinusoids [..., S, dim], one band per axis.

    The frame axis gets the remainder of dim; each band is `sinusoidal_embedding` of that axis.
    """
    band = 2 * (dim // 6)
    widths = (dim - 2 * band, band, band)
    flat = positions.reshape(-1, 3)
    parts = [sinusoidal_embedding(flat[:, i], w) for i, w in enumerate(widths) if w > 0]
    return torch.cat(parts, dim=-1).reshape(*positions.shape[:-1], dim)


def text_mlp(text_dim: int, dim: int) -> nn.Sequential:
    """Caption features -> model width: Linear, GELU(tanh), Linear (indices match Wan's keys)."""
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))


def time_mlp(freq_dim: int, dim: int) -> nn.Sequential:
    """Timestep sinusoid -> model width: Linear, SiLU, Linear."""
    return nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))


def token_grid(shape: tuple[int, int, int], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T, H, W) latent size -> (frames, rows, cols) of tokens; refuses partial patches."""
    if any(n % p for n, p in zip(shape, patch)):
        raise ValueError(f"latent (T, H, W)={tuple(shape)} must be divisible by patch_size {tuple(patch)}")
    return tuple(n // p for n, p in zip(shape, patch))


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """[B, C, T, H, W] -> [B, S, pt*ph*pw*C]: tokens row-major over (t, h, w), channels last.

    Channels-last inside a patch is the layout Wan's head emits, so this is unpatchify's inverse.
    """
    b, c = x.shape[:2]
    (gt, gh, gw), (pt, ph, pw) = token_grid(x.shape[2:], patch), patch
    x = x.reshape(b, c, gt, pt, gh, ph, gw, pw)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, gt * gh * gw, pt * ph * pw * c)


def unpatchify(tokens: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> Tensor:
    """[B, S, pt*ph*pw*C] -> [B, C, T, H, W] for a token grid (frames, rows, cols)."""
    b = tokens.shape[0]
    c = tokens.shape[-1] // math.prod(patch)
    x = tokens.reshape(b, *grid, *patch, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, *(g * p for g, p in zip(grid, patch)))


def sincos(positions: Tensor, dim: int) -> Tensor:
    """[N] -> [N, dim] float32 as (sin | cos) halves: the MAE / diffusers position-table order."""
    emb = sinusoidal_embedding(positions, dim)  # (cos | sin)
    return torch.cat([emb[:, dim // 2:], emb[:, :dim // 2]], dim=-1)


def sincos_3d(grid: tuple[int, int, int], dim: int, spatial_scale: float = 1.0,
              temporal_scale: float = 1.0, device=None) -> Tensor:
    """Fixed 3D position table [T*H*W, dim], tokens in patchify order (frame, row, col).

    Channels: frame (dim/4) | column (3dim/8) | row (3dim/8), each (sin | cos), positions divided
    by the interpolation scales: the layout of CogVideoX-2B's table, so its weights see what they
    were trained with. dim must be a multiple of 16.
    """
    if dim % 16:
        raise ValueError(f"3D sin-cos positions need a width divisible by 16, got {dim}")
    frames, rows, cols = grid_positions(grid, device=device).double().unbind(-1)
    spatial = 3 * dim // 8
    return torch.cat([sincos(frames / temporal_scale, dim // 4), sincos(cols / spatial_scale, spatial),
                      sincos(rows / spatial_scale, spatial)], dim=-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [B, L, D] over the positions where mask [B, L] is True (pooled caption)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
