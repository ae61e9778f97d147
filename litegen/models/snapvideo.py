"""Snap Video's FIT transformer: patch tokens are read into a smaller set of latent tokens that
carry most of the computation, then written back.

The video's patch tokens are cut into groups of `group_frames` consecutive token frames; each
group owns `latents_per_group` latent tokens (one learned initial set, shared by all groups).
A FIT block reads (each group's latents cross-attend to its patches), computes (`latent_layers`
transformer layers over *all* latents: self-attention with (group, index) RoPE, cross-attention to
the text, FFN, timestep adaLN), then writes (patches cross-attend to their group's latents, plus a
patch FFN). Latents are carried from block to block. Written from the Snap Video and FIT papers'
descriptions; widths and depths of `snapvideo` are ours (see configs/model/snapvideo.yaml).
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn

from litegen.config.families import SnapVideoConfig
from litegen.config.model import WanConfig
from litegen.models.cores import GroupedAttentionCore
from litegen.models.embeddings import sincos_3d, sinusoidal_embedding, text_mlp, time_mlp, token_grid, unpatchify
from litegen.models.init import Writer, init_parameters, norm_value, normal, xavier_uniform
from litegen.models.layers import LayerNorm32, feed_forward, modulate
from litegen.models.plan import ModelPlan, TokenStack
from litegen.models.rope import RotaryEmbedding3D
from litegen.models.wan import WanAttentionBlock

PLAN = ModelPlan(
    blocks="blocks",
    self_attention="latent_layers.*.self_attn.core",
    cross_attention="latent_layers.*.cross_attn.core",
    grouped_attention=("read.core", "write.core"),
    embeddings=("patch_embedding", "latent_init", "text_embedding", "time_embedding", "time_projection"),
    head="head",
    block_stream=(0, 1),  # patches and latents both change in every block
    # Patches and latents are sharded together on group boundaries, so read/write stay local and
    # only the latent layers' self-attention communicates.
    token_stack=TokenStack(sequences=(("patches", 1), ("latents", 1), ("rope", 0)), output="patches",
                           attends="latents", groups="groups"),
)


class GroupedCrossAttention(nn.Module):
    """Queries of each group attend to the keys of the same group; pre-norm on both sides."""

    def __init__(self, q_dim: int, kv_dim: int, width: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.norm_q, self.norm_kv = LayerNorm32(q_dim, eps=eps), LayerNorm32(kv_dim, eps=eps)
        self.q, self.o = nn.Linear(q_dim, width), nn.Linear(width, q_dim)
        self.k, self.v = nn.Linear(kv_dim, width), nn.Linear(kv_dim, width)
        self.core = GroupedAttentionCore()

    def forward(self, queries: Tensor, keys: Tensor, groups: int) -> Tensor:
        """Returns queries + attention output (residual)."""
        heads = (self.num_heads, self.head_dim)
        q = self.q(self.norm_q(queries)).unflatten(-1, heads)
        kv = self.norm_kv(keys)
        out = self.core(q, self.k(kv).unflatten(-1, heads), self.v(kv).unflatten(-1, heads), groups=groups)
        return queries + self.o(out.flatten(2))


def latent_layer_config(cfg: SnapVideoConfig) -> WanConfig:
    """The latent layers are Wan blocks (self-attn, text cross-attn, FFN, adaLN) at latent width."""
    return WanConfig(dim=cfg.dim, num_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim, num_layers=cfg.latent_layers,
                     eps=cfg.eps, qk_norm=True, cross_attn_norm=True)


class FITBlock(nn.Module):
    def __init__(self, cfg: SnapVideoConfig):
        super().__init__()
        self.read = GroupedCrossAttention(cfg.dim, cfg.patch_dim, cfg.dim, cfg.num_heads, cfg.eps)
        layer_cfg = latent_layer_config(cfg)
        self.latent_layers = nn.ModuleList(WanAttentionBlock(layer_cfg) for _ in range(cfg.latent_layers))
        self.write = GroupedCrossAttention(cfg.patch_dim, cfg.dim, cfg.patch_dim, cfg.patch_heads, cfg.eps)
        self.patch_norm = LayerNorm32(cfg.patch_dim, eps=cfg.eps)
        self.patch_ffn = feed_forward(cfg.patch_dim, cfg.patch_ffn_dim)

    def forward(self, patches: Tensor, latents: Tensor, groups: int, e6: Tensor, text: Tensor,
                text_mask: Tensor, rope: Tensor) -> tuple[Tensor, Tensor]:
        latents = self.read(latents, patches, groups)
        for layer in self.latent_layers:
            latents = layer(latents, e6.unsqueeze(1), text, text_mask, rope)  # [B, 1, 6, dim]: one t per clip
        patches = self.write(patches, latents, groups)
        return patches + self.patch_ffn(self.patch_norm(patches)), latents


class SnapVideoHead(nn.Module):
    """Patch tokens -> latent patches, modulated (shift, scale) by the timestep embedding."""

    def __init__(self, patch_dim: int, cond_dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm = LayerNorm32(patch_dim, eps=eps, elementwise_affine=False)
        self.modulation = nn.Linear(cond_dim, 2 * patch_dim)
        self.head = nn.Linear(patch_dim, out_features)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = self.modulation(e).float().unsqueeze(1).chunk(2, dim=-1)
        return self.head(modulate(self.norm, x, shift, scale))


class SnapVideo(nn.Module):
    """forward(x [B, C, T, H, W], t [B], context [B, L, text_dim], mask [B, L]).

    With objective=edm, t is EDM's c_noise = ln(sigma)/4 (any real number).
    """

    def __init__(self, cfg: SnapVideoConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = tuple(cfg.patch_size)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, cfg.patch_dim, self.patch_size, self.patch_size)
        self.latent_init = nn.Parameter(torch.empty(cfg.latents_per_group, cfg.dim))
        self.text_embedding = text_mlp(cfg.text_dim, cfg.dim)
        self.time_embedding = time_mlp(cfg.freq_dim, cfg.dim)
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.rope = RotaryEmbedding3D(cfg.head_dim, cfg.rope_theta)
        self.blocks = nn.ModuleList(FITBlock(cfg) for _ in range(cfg.num_blocks))
        self.head = SnapVideoHead(cfg.patch_dim, cfg.dim, cfg.out_channels * math.prod(self.patch_size), cfg.eps)

    def groups(self, grid: tuple[int, int, int]) -> int:
        frames_per_group = min(self.cfg.group_frames, grid[0])
        if grid[0] % frames_per_group:
            raise ValueError(f"{grid[0]} token frames do not split into groups of {frames_per_group} "
                             "(model.group_frames)")
        return grid[0] // frames_per_group

    def latent_rope(self, groups: int, device) -> Tensor:
        """RoPE positions of the latents: (group, index in group, 0)."""
        return self.rope(torch.stack(torch.meshgrid(
            torch.arange(groups, device=device), torch.arange(self.cfg.latents_per_group, device=device),
            torch.zeros(1, dtype=torch.long, device=device), indexing="ij"), dim=-1).reshape(-1, 3))

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        grid = token_grid(x.shape[2:], self.patch_size)
        groups = self.groups(grid)
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)
        patches = patches + sincos_3d(grid, self.cfg.patch_dim, device=x.device).to(patches.dtype)
        latents = self.latent_init.to(x.dtype).repeat(x.shape[0], groups, 1)
        e = self.time_embedding(sinusoidal_embedding(t.float() * self.cfg.timestep_scale,
                                                     self.cfg.freq_dim).to(x.dtype))
        e6 = self.time_projection(e).unflatten(1, (6, -1))
        text = self.text_embedding(context)
        rope = self.latent_rope(groups, x.device)
        out = self.forward_tokens(patches, latents, rope, groups, e, e6, text, context_mask)
        return unpatchify(out, grid, self.patch_size).to(x.dtype)

    def forward_tokens(self, patches: Tensor, latents: Tensor, rope: Tensor, groups: int, e: Tensor,
                       e6: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """FIT blocks and head: patches [B, G*N, patch_dim], latents [B, G*M, dim] with their rope
        [G*M, ...] in `groups` groups -> [B, G*N, out * patch volume].

        The token-stack seam (ModelPlan.token_stack): sequence parallelism gives each rank whole
        groups of patches and latents.
        """
        for block in self.blocks:
            patches, latents = block(patches, latents, groups, e6, text, text_mask, rope)
        return self.head(patches, e)

    def init_weights(self, seed: int, write: Optional[Writer] = None) -> None:
        """Deterministic per-parameter init from (seed, name); see litegen/models/init.py."""
        init_parameters(self, initial_value, seed, write)


def initial_value(module: nn.Module, name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return norm_value(name, shape)
    if name.endswith("bias") or name == "head.head.weight":  # zero head: a fresh model predicts 0
        return torch.zeros(shape)
    if name == "latent_init" or name.startswith(("text_embedding.", "time_embedding.", "head.modulation")):
        return normal(shape, 0.02, gen)
    if name.endswith("modulation"):  # the Wan latent layers' per-block modulation offsets
        return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    return xavier_uniform(shape, gen)
