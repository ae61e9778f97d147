"""WorldDreamer: a spatial-temporal patchwise transformer (STPT) that predicts masked visual tokens.

Input is a grid of discrete visual tokens [B, T, H, W] from a VQ tokenizer (litegen/encoders/vq.py),
with id `vocab_size` standing for [MASK]. Each block attends inside spatial windows that span all
frames (alternate blocks shift the windows by half), cross-attends to the text, and can add a
per-frame action embedding; the head gives logits over the codebook for every position. Written
from the WorldDreamer paper's description; `worlddreamer`'s sizes are ours (the paper gives none).
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn

from litegen.config.families import WorldDreamerConfig
from litegen.models.cores import WindowAttentionCore
from litegen.models.embeddings import sincos_3d, text_mlp
from litegen.models.init import Writer, init_parameters, norm_value, normal, xavier_uniform
from litegen.models.layers import CrossAttention, LayerNorm32, _Attention, feed_forward
from litegen.models.plan import ModelPlan, TokenStack

PLAN = ModelPlan(
    blocks="blocks",
    self_attention=(),
    grid_attention="self_attn.core",
    cross_attention="cross_attn.core",
    embeddings=("token_embedding", "text_embedding", "action_embedding"),
    head="head",
    token_stack=TokenStack(sequences=(("tokens", 1),)),  # no RoPE: positions are added at embedding
)


class WindowSelfAttention(_Attention):
    """Self-attention inside (shifted) spatial windows across all frames of the token grid."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], shifted: bool, eps: float):
        super().__init__(dim, num_heads, qk_norm=True, eps=eps)
        self.core = WindowAttentionCore(window, shifted)

    def forward(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        q = self.split_heads(self.norm_q(self.q(x)))
        k = self.split_heads(self.norm_k(self.k(x)))
        return self.o(self.core(q, k, self.split_heads(self.v(x)), grid=grid).flatten(2))


class STPTBlock(nn.Module):
    """Pre-norm: windowed self-attention, text cross-attention, FFN."""

    def __init__(self, cfg: WorldDreamerConfig, shifted: bool):
        super().__init__()
        self.norm1 = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.self_attn = WindowSelfAttention(cfg.dim, cfg.num_heads, tuple(cfg.window), shifted, cfg.eps)
        self.norm2 = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, qk_norm=True, eps=cfg.eps)
        self.norm3 = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.ffn = feed_forward(cfg.dim, cfg.ffn_dim)

    def forward(self, x: Tensor, grid: tuple[int, int, int], text: Tensor, text_mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.norm1(x), grid)
        x = x + self.cross_attn(self.norm2(x), text, text_mask)
        return x + self.ffn(self.norm3(x))


class WorldDreamer(nn.Module):
    """forward(tokens [B, T', H', W'] long, context [B, L, text_dim], mask [B, L], actions) -> logits.

    tokens: the tokenizer's grid (cfg.patch_size latent positions per token).
    actions: optional [B, T, action_dim] float, one vector per token frame (model.action_dim > 0).
    Returns logits [B, T, H, W, vocab_size] in float32.
    """

    def __init__(self, cfg: WorldDreamerConfig):
        super().__init__()
        self.cfg = cfg
        self.mask_id = cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size + 1, cfg.dim)  # + [MASK]
        self.text_embedding = text_mlp(cfg.text_dim, cfg.dim)
        self.action_embedding = nn.Linear(cfg.action_dim, cfg.dim) if cfg.action_dim else None
        self.blocks = nn.ModuleList(STPTBlock(cfg, shifted=i % 2 == 1) for i in range(cfg.num_layers))
        self.norm_out = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)

    def embed(self, tokens: Tensor, actions: Optional[Tensor]) -> Tensor:
        grid = tuple(tokens.shape[1:])
        x = self.token_embedding(tokens.flatten(1))
        x = x + sincos_3d(grid, self.cfg.dim, device=tokens.device).to(x.dtype)
        if actions is not None:
            if self.action_embedding is None:
                raise ValueError("actions given but model.action_dim is 0")
            per_frame = self.action_embedding(actions.to(x.dtype))  # [B, T, dim]
            x = x + per_frame.repeat_interleave(math.prod(grid[1:]), dim=1)
        return x

    def forward(self, tokens: Tensor, context: Tensor, context_mask: Tensor,
                actions: Optional[Tensor] = None) -> Tensor:
        grid = tuple(tokens.shape[1:])
        x = self.embed(tokens, actions)
        text = self.text_embedding(context)
        logits = self.forward_tokens(x, grid, text, context_mask)
        return logits.reshape(*tokens.shape, self.cfg.vocab_size)

    def forward_tokens(self, tokens: Tensor, grid: tuple[int, int, int], text: Tensor,
                       text_mask: Tensor) -> Tensor:
        """Blocks and head on embedded tokens [B, S, dim] -> float32 logits [B, S, vocab_size].

        The token-stack seam (ModelPlan.token_stack); `grid` is always the full sequence's.
        """
        for block in self.blocks:
            tokens = block(tokens, grid, text, text_mask)
        return self.head(self.norm_out(tokens)).float()

    def init_weights(self, seed: int, write: Optional[Writer] = None) -> None:
        """Deterministic per-parameter init from (seed, name); see litegen/models/init.py."""
        init_parameters(self, initial_value, seed, write)


def initial_value(module: nn.Module, name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return norm_value(name, shape)
    if name.endswith("bias"):
        return torch.zeros(shape)
    if isinstance(module, nn.Embedding) or name.startswith(("text_embedding.", "action_embedding.")):
        return normal(shape, 0.02, gen)
    return xavier_uniform(shape, gen)
