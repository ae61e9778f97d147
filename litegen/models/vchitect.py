"""Vchitect-2.0-style video DiT: parallel spatial, temporal and cross attention in every block.

Each block reads one modulated input three ways at once: spatial self-attention inside each
frame, temporal self-attention across frames at each (row, col) with 1D RoPE over the frame index,
and cross-attention from every frame's tokens to the text. As in Vchitect-2.0's attention
processor, the spatial branch (scaled by `spatial_gain`) and the projected cross-attention are
summed and fused by one output linear, and the temporal branch is added through its own output
linear. Timestep and pooled caption modulate each block (adaLN-zero). Written from the model
card and public code's structure; the released checkpoint's exact layout is not reproduced.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litegen.config.families import VchitectConfig
from litegen.models.attention import AttentionCore
from litegen.models.cores import FrameAttentionCore, TemporalAttentionCore
from litegen.models.embeddings import (masked_mean, sincos, sinusoidal_embedding, text_mlp, time_mlp,
                                       token_grid, unpatchify)
from litegen.models.init import Writer, init_parameters, norm_value, normal, xavier_uniform
from litegen.models.layers import LayerNorm32, feed_forward, gated_residual, modulate
from litegen.models.plan import ModelPlan
from litegen.models.rope import RotaryEmbedding3D, apply_rope, grid_positions

PLAN = ModelPlan(
    blocks="blocks",
    self_attention=(),
    grid_attention=("attn.spatial_core", "attn.temporal_core"),
    cross_attention="attn.cross_core",
    embeddings=("patch_embedding", "context_embedding", "pooled_embedding", "time_embedding"),
    head="head",
)


class ParallelAttention(nn.Module):
    """Spatial, temporal and cross attention of one input; fused as Vchitect-2.0 fuses them."""

    def __init__(self, dim: int, num_heads: int, spatial_gain: float):
        super().__init__()
        self.num_heads, self.head_dim, self.spatial_gain = num_heads, dim // num_heads, spatial_gain
        names = ("q", "k", "v", "q_t", "k_t", "v_t", "q_c", "k_c", "v_c", "o", "o_t", "o_c")
        for name in names:
            setattr(self, name, nn.Linear(dim, dim))
        self.spatial_core = FrameAttentionCore()
        self.temporal_core = TemporalAttentionCore()
        self.cross_core = AttentionCore()

    def heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor, grid: tuple[int, int, int],
                rope_t: Tensor) -> Tensor:
        """x [B, S, dim] video tokens; text [B, L, dim]; rope_t [S, head_dim//2, 2] over frames."""
        h = self.heads
        spatial = self.spatial_core(h(self.q(x)), h(self.k(x)), h(self.v(x)), grid=grid)
        q_t, k_t = apply_rope(h(self.q_t(x)), rope_t), apply_rope(h(self.k_t(x)), rope_t)
        temporal = self.temporal_core(q_t, k_t, h(self.v_t(x)), grid=grid)
        cross = self.cross_core(h(self.q_c(x)), h(self.k_c(text)), h(self.v_c(text)),
                                attn_mask=text_mask[:, None, None, :])
        fused = self.spatial_gain * spatial.flatten(2) + self.o_c(cross.flatten(2))
        return self.o(fused) + self.o_t(temporal.flatten(2))


class VchitectBlock(nn.Module):
    def __init__(self, cfg: VchitectConfig):
        super().__init__()
        self.norm1 = LayerNorm32(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.attn = ParallelAttention(cfg.dim, cfg.num_heads, cfg.spatial_gain)
        self.norm2 = LayerNorm32(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = feed_forward(cfg.dim, cfg.ffn_dim)
        self.modulation = nn.Linear(cfg.dim, 6 * cfg.dim)  # of silu(cond): shift, scale, gate x 2

    def forward(self, x: Tensor, cond: Tensor, text: Tensor, text_mask: Tensor,
                grid: tuple[int, int, int], rope_t: Tensor) -> Tensor:
        mod = self.modulation(F.silu(cond)).float().unsqueeze(1)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.chunk(6, dim=-1)
        attn = self.attn(modulate(self.norm1, x, shift_a, scale_a), text, text_mask, grid, rope_t)
        x = gated_residual(x, attn, gate_a)
        return gated_residual(x, self.ffn(modulate(self.norm2, x, shift_f, scale_f)), gate_f)


class VchitectHead(nn.Module):
    """Final LayerNorm modulated by (scale, shift) from the condition, then the patch projection."""

    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm = LayerNorm32(dim, eps=eps, elementwise_affine=False)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, out_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.modulation(F.silu(cond)).float().unsqueeze(1).chunk(2, dim=-1)
        return self.proj(modulate(self.norm, x, shift, scale))


def frame_positions(grid: tuple[int, int, int], dim: int, device=None) -> Tensor:
    """[S, dim] 2D sin-cos (column | row) positions, the same in every frame (time uses RoPE)."""
    _, rows, cols = grid_positions(grid, device=device).double().unbind(-1)
    return torch.cat([sincos(cols, dim // 2), sincos(rows, dim // 2)], dim=-1)


class Vchitect(nn.Module):
    """forward(x [B, C, T, H, W], t [B] in [0, 1], context [B, L, text_dim], mask [B, L])."""

    def __init__(self, cfg: VchitectConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = tuple(cfg.patch_size)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, cfg.dim, self.patch_size, self.patch_size)
        self.context_embedding = nn.Linear(cfg.text_dim, cfg.dim)
        self.pooled_embedding = text_mlp(cfg.text_dim, cfg.dim)  # masked mean of the caption
        self.time_embedding = time_mlp(cfg.freq_dim, cfg.dim)
        # RoPE over the frame index only: all head channels rotate with time.
        self.rope_t = RotaryEmbedding3D(cfg.head_dim, cfg.temporal_rope_theta, axis_dims=(cfg.head_dim, 0, 0))
        self.blocks = nn.ModuleList(VchitectBlock(cfg) for _ in range(cfg.num_layers))
        self.head = VchitectHead(cfg.dim, cfg.out_channels * math.prod(self.patch_size), cfg.eps)

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """Prediction [B, out_channels, T, H, W] in x's dtype (pass t in float32)."""
        grid = token_grid(x.shape[2:], self.patch_size)
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)
        tokens = tokens + frame_positions(grid, self.cfg.dim, x.device).to(tokens.dtype)
        rope_t = self.rope_t(grid_positions(grid, device=x.device))
        freqs = sinusoidal_embedding(t.float() * self.cfg.timestep_scale, self.cfg.freq_dim)
        cond = self.time_embedding(freqs.to(x.dtype)) + self.pooled_embedding(masked_mean(context, context_mask))
        text = self.context_embedding(context)
        out = self.forward_tokens(tokens, rope_t, cond, text, context_mask, grid)
        return unpatchify(out, grid, self.patch_size).to(x.dtype)

    def forward_tokens(self, tokens: Tensor, rope: Tensor, cond: Tensor, text: Tensor,
                       text_mask: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Blocks and head on tokens [B, S, dim] with temporal rope [S, ...] -> [B, S, out * patch].

        The token-stack seam (ModelPlan.token_stack); `grid` is always the full sequence's.
        """
        for block in self.blocks:
            tokens = block(tokens, cond, text, text_mask, grid, rope)
        return self.head(tokens, cond)

    def init_weights(self, seed: int, write: Optional[Writer] = None) -> None:
        """Deterministic per-parameter init from (seed, name); see litegen/models/init.py."""
        init_parameters(self, initial_value, seed, write)


def initial_value(module: nn.Module, name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    if isinstance(module, nn.LayerNorm):
        return norm_value(name, shape)
    # Zero head; temporal and cross outputs start at zero as in Vchitect-2.0 (the block begins
    # as a spatial-only image block and learns to use time and text).
    zero = ("head.proj.weight", ".attn.o_t.weight", ".attn.o_c.weight")
    if name.endswith("bias") or name.endswith(zero):
        return torch.zeros(shape)
    if name.endswith("modulation.weight") or name.startswith(("time_embedding.", "pooled_embedding.")):
        return normal(shape, 0.02, gen)
    return xavier_uniform(shape, gen)
