"""3D rotary position embedding (Wan 2.1 layout): head channels split between frame, row, column.

Positions are integer (frame, row, col) per token, so a sequence-parallel rank or a packed batch
can pass any subset of tokens; the module holds no buffers, so meta construction and
`to_empty` leave nothing uninitialised.
"""

from typing import Optional

import torch
from torch import Tensor, nn


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (t, h, w), as in Wan: time gets the remainder, h and w 2*(d//6) each."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def grid_positions(grid: tuple[int, int, int], device=None) -> Tensor:
    """[S, 3] integer (frame, row, col) of each token, in the row-major order patchify produces."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _axis_inv_freq(channels: int, theta: float, device) -> Tensor:
    # One frequency per complex pair: theta^(-2i/channels), i < channels/2 (standard RoPE per axis).
    exponent = torch.arange(0, channels, 2, device=device, dtype=torch.float64) / channels
    return theta ** -exponent


class RotaryEmbedding3D(nn.Module):
    """positions [..., S, 3] -> rope [..., S, head_dim//2, 2] holding (cos, sin) in float32."""

    def __init__(self, head_dim: int, theta: float = 10000.0,
                 axis_dims: Optional[tuple[int, int, int]] = None):
        """axis_dims: channels per axis (t, h, w); default Wan's split (CogVideoX uses its own)."""
        super().__init__()
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}")
        self.head_dim, self.theta = head_dim, theta
        self.axis_dims = tuple(axis_dims) if axis_dims else rope_axis_dims(head_dim)
        if sum(self.axis_dims) != head_dim or any(d % 2 for d in self.axis_dims):
            raise ValueError(f"rope axis_dims {self.axis_dims} must be even and sum to head_dim {head_dim}")

    def forward(self, positions: Tensor) -> Tensor:
        """positions may be fractional (CogVideoX interpolates its grid into the trained one)."""
        angles = []
        for axis, channels in enumerate(self.axis_dims):
            inv_freq = _axis_inv_freq(channels, self.theta, positions.device)
            # float64 angles: positions reach the hundreds and float32 would drift by ~1e-4 rad.
            angles.append(positions[..., axis, None].double() * inv_freq)
        angle = torch.cat(angles, dim=-1)
        return torch.stack([angle.cos(), angle.sin()], dim=-1).float()


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of x [B, S, H, D] by rope [S or B,S, D//2, 2]; keeps x's dtype.

    Adjacent pairs (not halves) match Wan's view_as_complex layout, so converted q/k weights work.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs.unbind(-1)
    cos, sin = rope.unsqueeze(-3).unbind(-1)  # insert the heads dim
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
