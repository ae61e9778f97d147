"""CogVideoX 1.0 MM-DiT: text and video tokens in one full 3D attention, expert adaptive LayerNorm.

Each block normalises both modalities with one LayerNorm but modulates (shift, scale, gate) them
with separate projections of the timestep ("expert" adaLN). Positions: a fixed 3D sin-cos table
(2B), 3D RoPE on video q/k (5B), or a learned table. Names follow diffusers'
CogVideoXTransformer3DModel where they can, so litegen/tools/convert maps keys almost 1:1; the
math is written here, not copied.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litegen.config.families import CogVideoXConfig
from litegen.models.cores import JointAttentionCore
from litegen.models.embeddings import sincos_3d, sinusoidal_embedding, time_mlp, token_grid, unpatchify
from litegen.models.init import Writer, init_parameters, norm_value, normal, xavier_uniform
from litegen.models.layers import LayerNorm32, feed_forward, gated_residual, modulate
from litegen.models.plan import ModelPlan
from litegen.models.rope import RotaryEmbedding3D, apply_rope

PLAN = ModelPlan(
    blocks="transformer_blocks",
    self_attention=(),
    cross_attention=(),
    joint_attention="attn1.core",
    embeddings=("patch_embed", "text_proj", "time_embedding"),
    head="proj_out",
    block_stream=(0, 1),  # video and text both change in every block
)


class ExpertAdaLN(nn.Module):
    """One LayerNorm for both modalities; (shift, scale, gate) for video and for text from temb."""

    def __init__(self, cond_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 6 * dim)
        self.norm = LayerNorm32(dim, eps=eps)

    def forward(self, x: Tensor, text: Tensor, temb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mod = self.linear(F.silu(temb)).float().unsqueeze(1)
        shift, scale, gate, text_shift, text_scale, text_gate = mod.chunk(6, dim=-1)
        return (modulate(self.norm, x, shift, scale), modulate(self.norm, text, text_shift, text_scale),
                gate, text_gate)


class JointAttention(nn.Module):
    """q/k/v shared by both modalities, per-head LayerNorm on q and k, RoPE on video q/k only."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = LayerNorm32(self.head_dim, eps=eps)
        self.norm_k = LayerNorm32(self.head_dim, eps=eps)
        self.core = JointAttentionCore()

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        heads = (self.num_heads, self.head_dim)
        q, k, v = (proj(x).unflatten(-1, heads) for proj in (self.to_q, self.to_k, self.to_v))
        return self.norm_q(q), self.norm_k(k), v

    def forward(self, x: Tensor, text: Tensor, text_mask: Optional[Tensor],
                rope: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        q, k, v = self.qkv(x)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out, text_out = self.core(q, k, v, *self.qkv(text), text_mask)
        return self.to_out(out.flatten(2)), self.to_out(text_out.flatten(2))


class CogVideoXBlock(nn.Module):
    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        self.norm1 = ExpertAdaLN(cfg.time_embed_dim, cfg.dim, cfg.eps)
        self.attn1 = JointAttention(cfg.dim, cfg.num_heads, cfg.qk_norm_eps)
        self.norm2 = ExpertAdaLN(cfg.time_embed_dim, cfg.dim, cfg.eps)
        self.ff = feed_forward(cfg.dim, cfg.ffn_dim)

    def forward(self, x: Tensor, text: Tensor, temb: Tensor, text_mask: Optional[Tensor],
                rope: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """x [B, S, dim] video, text [B, L, dim]; the FFN is shared by both modalities."""
        nx, ntext, gate, text_gate = self.norm1(x, text, temb)
        attn, text_attn = self.attn1(nx, ntext, text_mask, rope)
        x, text = gated_residual(x, attn, gate), gated_residual(text, text_attn, text_gate)
        nx, ntext, gate, text_gate = self.norm2(x, text, temb)
        return gated_residual(x, self.ff(nx), gate), gated_residual(text, self.ff(ntext), text_gate)


class FinalAdaLN(nn.Module):
    """Final LayerNorm modulated by (shift, scale) from temb (that order, as CogVideoX trained it)."""

    def __init__(self, cond_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.norm = LayerNorm32(dim, eps=eps)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        shift, scale = self.linear(F.silu(temb)).float().unsqueeze(1).chunk(2, dim=-1)
        return modulate(self.norm, x, shift, scale)


Corner = tuple[int, int]


def resize_crop_region(grid_hw: Corner, base_hw: Corner) -> tuple[Corner, Corner]:
    """Where a (rows, cols) token grid sits when resized into the trained grid, aspect kept, centred.

    (top, left), (bottom, right) in trained-grid units: the released CogVideoX pipeline's rule.
    """
    (h, w), (base_h, base_w) = grid_hw, base_hw
    if h / w > base_h / base_w:
        size_h, size_w = base_h, int(round(base_h / h * w))
    else:
        size_h, size_w = int(round(base_w / w * h)), base_w
    top, left = int(round((base_h - size_h) / 2.0)), int(round((base_w - size_w) / 2.0))
    return (top, left), (top + size_h, left + size_w)


def rope_positions(grid: tuple[int, int, int], base_hw: tuple[int, int], device=None) -> Tensor:
    """[S, 3] (frame, row, col) positions: rows/cols spread over the crop region (fractional)."""
    t, h, w = grid
    (top, left), (bottom, right) = resize_crop_region((h, w), base_hw)
    axes = [torch.arange(t, device=device, dtype=torch.float64),
            torch.linspace(top, bottom * (h - 1) / h, h, device=device, dtype=torch.float64),
            torch.linspace(left, right * (w - 1) / w, w, device=device, dtype=torch.float64)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


class CogVideoX(nn.Module):
    """forward(x [B, C, T, H, W], t [B] in [0, 1), context [B, L, text_dim], mask [B, L])."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = tuple(cfg.patch_size)
        self.patch_embed = nn.Conv3d(cfg.in_channels, cfg.dim, self.patch_size, self.patch_size)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        self.time_embedding = time_mlp(cfg.dim, cfg.time_embed_dim)
        if cfg.pos_embedding == "learned":
            self.pos_table = nn.Parameter(torch.empty(math.prod(self.sample_grid), cfg.dim))
        hd = cfg.head_dim
        self.rope = (RotaryEmbedding3D(hd, cfg.rope_theta, axis_dims=(hd // 4, 3 * hd // 8, 3 * hd // 8))
                     if cfg.pos_embedding == "rope" else None)
        self.transformer_blocks = nn.ModuleList(CogVideoXBlock(cfg) for _ in range(cfg.num_layers))
        self.norm_final = LayerNorm32(cfg.dim, eps=cfg.eps)
        self.norm_out = FinalAdaLN(cfg.time_embed_dim, cfg.dim, cfg.eps)
        self.proj_out = nn.Linear(cfg.dim, cfg.out_channels * math.prod(self.patch_size))

    @property
    def sample_grid(self) -> tuple[int, int, int]:
        p = self.cfg.patch_size
        return self.cfg.sample_frames, self.cfg.sample_height // p[1], self.cfg.sample_width // p[2]

    def positions(self, grid: tuple[int, int, int], device) -> Tensor:
        """Absolute position table [S, dim] added to the video tokens (sincos or learned)."""
        if self.cfg.pos_embedding == "learned":
            if grid != self.sample_grid:
                raise ValueError(f"a learned position table covers token grid {self.sample_grid} only, got {grid}")
            return self.pos_table
        return sincos_3d(grid, self.cfg.dim, self.cfg.spatial_interpolation_scale,
                         self.cfg.temporal_interpolation_scale, device)

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """Prediction [B, out_channels, T, H, W] in x's dtype (pass t in float32)."""
        grid = token_grid(x.shape[2:], self.patch_size)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        rope = None
        if self.rope is not None:
            base = (self.cfg.sample_height // self.patch_size[1], self.cfg.sample_width // self.patch_size[2])
            rope = self.rope(rope_positions(grid, base, x.device))
        else:
            tokens = tokens + self.positions(grid, x.device).to(tokens.dtype)
        text = self.text_proj(context)
        freqs = sinusoidal_embedding(t.float() * self.cfg.timestep_scale, self.cfg.dim)
        temb = self.time_embedding(freqs.to(x.dtype))
        mask = None if self.cfg.attend_text_padding else context_mask
        out = self.forward_tokens(tokens, rope, text, temb, mask)
        return unpatchify(out, grid, self.patch_size).to(x.dtype)

    def forward_tokens(self, tokens: Tensor, rope: Optional[Tensor], text: Tensor, temb: Tensor,
                       text_mask: Optional[Tensor]) -> Tensor:
        """Blocks and head: video tokens [B, S, dim] (rope [S, ...] or None) -> [B, S, out * patch].

        The token-stack seam (ModelPlan.token_stack). The text stream [B, L, dim] is carried
        through the blocks whole: it meets the video only inside the joint attention cores.
        """
        for block in self.transformer_blocks:
            tokens, text = block(tokens, text, temb, text_mask, rope)
        return self.proj_out(self.norm_out(self.norm_final(tokens), temb))

    def init_weights(self, seed: int, write: Optional[Writer] = None) -> None:
        """Deterministic per-parameter init from (seed, name); see litegen/models/init.py."""
        init_parameters(self, self._initial_value, seed, write)

    def _initial_value(self, module: nn.Module, name: str, shape: tuple[int, ...],
                       gen: torch.Generator) -> Tensor:
        if isinstance(module, nn.LayerNorm):
            return norm_value(name, shape)
        if name == "pos_table":  # start from the fixed table the released 2B uses
            return sincos_3d(self.sample_grid, self.cfg.dim, self.cfg.spatial_interpolation_scale,
                             self.cfg.temporal_interpolation_scale)
        if name.endswith("bias") or name == "proj_out.weight":  # zero head: a fresh model predicts 0
            return torch.zeros(shape)
        if name.startswith("time_embedding."):
            return normal(shape, 0.02, gen)
        return xavier_uniform(shape, gen)
