"""Wan 2.1-style video DiT: 3D-RoPE self-attention, text cross-attention, adaLN-zero modulation.

Module and parameter names follow the original Wan repo (Wan-Video/Wan2.1, wan/modules/model.py)
so its checkpoints load by key; the math is written here, not copied.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litegen.config.model import WanConfig
from litegen.models.embeddings import (absolute_position_embedding, sinusoidal_embedding,
                                       text_mlp, time_mlp, token_grid, unpatchify)
from litegen.models.init import (Writer, init_parameters, normal, norm_value, xavier_uniform,
                                 canonical_name)  # noqa: F401  canonical_name: re-exported
from litegen.models.attention import Varlen
from litegen.models.layers import (CrossAttention, LayerNorm32, SelfAttention, feed_forward,
                                   gated_residual, modulate)
from litegen.models.packed import PackedLayout, per_token
from litegen.models.plan import ModelPlan, TokenStack
from litegen.models.rope import RotaryEmbedding3D, grid_positions

PLAN = ModelPlan(
    blocks="blocks",
    self_attention="self_attn.core",
    cross_attention="cross_attn.core",
    embeddings=("patch_embedding", "text_embedding", "time_embedding", "time_projection"),
    head="head",
    # Per-token modulation (e, e6: each token carries its clip's timestep) is a sequence here.
    packed_token_stack=TokenStack(
        method="forward_packed_tokens",
        sequences=(("tokens", 1), ("rope", 0), ("e", 1), ("e6", 1)),
        varlens=(("self_varlen", "self"), ("cross_varlen", "cross"))),
)


class WanAttentionBlock(nn.Module):
    """norm1 -> modulated self-attn (gated), norm3 -> cross-attn, norm2 -> modulated FFN (gated)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.norm1 = LayerNorm32(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        self.norm3 = LayerNorm32(dim, eps=eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        self.norm2 = LayerNorm32(dim, eps=eps, elementwise_affine=False)
        self.ffn = feed_forward(dim, cfg.ffn_dim)
        # Per-block offset to the shared time projection: shift, scale, gate for attn then ffn.
        self.modulation = nn.Parameter(torch.empty(1, 6, dim))

    def forward(self, x: Tensor, e: Tensor, context: Tensor, context_mask: Optional[Tensor],
                rope: Tensor, varlen: Optional[tuple[Varlen, Varlen]] = None) -> Tensor:
        """x [B, S, dim]; e [B, 1, 6, dim] projected time (or [1, S, 6, dim] per token when packed);
        context [B, L, dim]; mask [B, L] bool. varlen: (self, cross) clip boundaries of packed clips.
        """
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            self.modulation.float() + e.float()).unbind(-2)
        self_varlen, cross_varlen = varlen if varlen is not None else (None, None)
        attn = self.self_attn(modulate(self.norm1, x, shift_sa, scale_sa), rope, self_varlen)
        x = gated_residual(x, attn, gate_sa)
        x = x + self.cross_attn(self.norm3(x), context, context_mask, cross_varlen)
        return gated_residual(x, self.ffn(modulate(self.norm2, x, shift_ff, scale_ff)), gate_ff)


class WanHead(nn.Module):
    """Final norm, time-modulated (shift, scale), projection to out_channels * prod(patch)."""

    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm = LayerNorm32(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x [B, S, dim]; e [B, 1, dim] time embedding before the 6-way projection ([1, S, dim] packed)."""
        shift, scale = (self.modulation.float() + e.float().unsqueeze(-2)).unbind(-2)
        return self.head(modulate(self.norm, x, shift, scale))


class WanDiT(nn.Module):
    """forward(x [B, C, T, H, W], t [B] in [0, 1], context [B, L, text_dim], mask [B, L])."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = tuple(cfg.patch_size)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, cfg.dim, self.patch_size, self.patch_size)
        self.text_embedding = text_mlp(cfg.text_dim, cfg.dim)
        self.time_embedding = time_mlp(cfg.freq_dim, cfg.dim)
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.rope = RotaryEmbedding3D(cfg.head_dim, cfg.rope_theta)
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg.dim, cfg.out_channels * math.prod(self.patch_size), cfg.eps)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """Latents -> tokens [B, S, dim] (row-major over frames, rows, cols) and their grid."""
        grid = token_grid(x.shape[2:], self.patch_size)
        return self.patch_embedding(x).flatten(2).transpose(1, 2), grid

    def embed_time(self, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """t [B] -> (e [B, dim] for the head, e6 [B, 6, dim] for the blocks)."""
        freqs = sinusoidal_embedding(t.float() * self.cfg.timestep_scale, self.cfg.freq_dim)
        e = self.time_embedding(freqs.to(dtype))
        return e, self.time_projection(e).unflatten(1, (6, -1))

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor,
                layout: Optional[PackedLayout] = None) -> Tensor:
        """Prediction [B, out_channels, T, H, W] in x's dtype.

        x's dtype is the compute dtype (pass it in the parameters' dtype, or run under autocast);
        Pass t in float32 (keep mixed-precision input casting off it): bf16 rounds t*1000 to
        steps of up to 4.
        context_mask [B, L] bool, True = real text token (at least one per row).
        With `layout`, x is packed clips instead (see forward_packed).
        """
        if layout is not None:
            return self.forward_packed(x, t, context, context_mask, layout)
        tokens, grid = self.embed(x)
        positions = grid_positions(grid, device=x.device)
        rope = self.rope(positions)
        if self.cfg.absolute_pos_embed:
            tokens = tokens + absolute_position_embedding(positions, self.cfg.dim).to(tokens.dtype)
        e, e6 = self.embed_time(t, x.dtype)
        ctx = self.text_embedding(context)
        out = self.forward_tokens(tokens, rope, e, e6, ctx, context_mask)
        return unpatchify(out, grid, self.patch_size).to(x.dtype)

    def forward_tokens(self, tokens: Tensor, rope: Tensor, e: Tensor, e6: Tensor, ctx: Tensor,
                       context_mask: Tensor) -> Tensor:
        """Blocks and head on tokens [B, S, dim] with rope [S, ...] -> [B, S, out * patch volume].

        The token-stack seam (ModelPlan.token_stack): sequence parallelism runs it on a chunk of
        the tokens; everything here but self-attention is token-wise.
        """
        for block in self.blocks:
            tokens = block(tokens, e6.unsqueeze(1), ctx, context_mask, rope)
        return self.head(tokens, e.unsqueeze(1))

    def forward_packed(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor,
                       layout: PackedLayout) -> Tensor:
        """Packed clips: x [1, S, C * prod(patch)] patch tokens (models/packed.py), t [n] per clip,
        context [n, L, text_dim] and mask [n, L] per clip. Returns [1, S, out_channels * prod(patch)].

        Clip i sees only its own tokens and caption, its own timestep and its own 3D positions, so
        its prediction equals forward() on that clip alone.
        """
        # The patch Conv3d (kernel = stride = patch) is a Linear on patchified tokens.
        weight = self.patch_embedding.weight.permute(0, 2, 3, 4, 1).flatten(1)
        tokens = F.linear(x, weight.to(x.dtype), self.patch_embedding.bias)
        rope = self.rope(layout.positions)
        if self.cfg.absolute_pos_embed:
            tokens = tokens + absolute_position_embedding(layout.positions, self.cfg.dim).to(tokens.dtype)
        e, e6 = self.embed_time(t, x.dtype)
        ctx = self.text_embedding(context)[context_mask][None]  # real text tokens only, clip after clip
        e, e6 = per_token(e, layout)[None], per_token(e6, layout)[None]  # each clip's time, per token
        out = self.forward_packed_tokens(tokens, rope, e, e6, ctx, layout.varlen, layout.cross_varlen(context_mask))
        return out.to(x.dtype)

    def forward_packed_tokens(self, tokens: Tensor, rope: Tensor, e: Tensor, e6: Tensor, ctx: Tensor,
                              self_varlen: Varlen, cross_varlen: Varlen) -> Tensor:
        """Blocks and head on packed tokens [1, S, dim] -> [1, S, out * patch volume].

        The packed token-stack seam (PLAN.packed_token_stack): rope [S, ...], per-token time
        modulation e [1, S, dim] and e6 [1, S, 6, dim] are sequences like the tokens; ctx
        [1, Lt, dim] holds every clip's real text tokens. self_varlen pairs clip i's tokens with
        themselves, cross_varlen clip i's tokens with caption i.
        """
        for block in self.blocks:
            tokens = block(tokens, e6, ctx, None, rope, (self_varlen, cross_varlen))
        return self.head(tokens, e)

    def init_weights(self, seed: int, write: Optional[Writer] = None) -> None:
        """Fill every parameter from (seed, parameter name): same values on any device or layout.

        Values are drawn full-size on CPU; `write(param, value)` stores them (default: copy_).
        litegen/parallel passes a writer that keeps only the local shard of a sharded parameter.
        """
        init_parameters(self, initial_value, seed, write)


def initial_value(module: nn.Module, name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Wan's init for one parameter, as a float32 CPU tensor of `shape`."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return norm_value(name, shape)
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        if name.endswith("bias") or name == "head.head.weight":  # zero head: a fresh model predicts 0
            return torch.zeros(shape)
        if name.startswith(("text_embedding.", "time_embedding.")):
            return normal(shape, 0.02, gen)
        return xavier_uniform(shape, gen)
    if name.endswith("modulation"):
        return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    raise ValueError(f"no init rule for parameter {name!r} of {type(module).__name__}")
