"""Analytic training FLOPs of CogVideoX, Vchitect, Snap Video and WorldDreamer.

Same convention as litegen/models/flops.py (read its docstring): matmuls only, 2*m*n*k per
Linear/Conv, 2*2*Sq*Sk*dim per attention core, training = 3 x forward, each layer charged for
the tokens it sees. Per-sample, latent_shape = (C, T, H, W), text_len = padded caption length.
"""

import math

from litegen.config.families import CogVideoXConfig, SnapVideoConfig, VchitectConfig, WorldDreamerConfig
from litegen.models.flops import TRAIN_FACTOR, _attention, _linear, _video_tokens


def _train(forward: dict[str, int]) -> dict[str, int]:
    parts = {name: TRAIN_FACTOR * flops for name, flops in forward.items()}
    parts["total"] = sum(parts.values())
    return parts


def _grid(cfg, latent_shape) -> tuple[int, int, int]:
    _video_tokens(cfg, latent_shape)  # raises on partial patches
    return tuple(n // p for n, p in zip(latent_shape[1:], cfg.patch_size))


def cogvideox_train_flops(cfg: CogVideoXConfig, latent_shape, text_len: int) -> dict[str, int]:
    """Text and video share every layer: the joint sequence is N = S + L tokens."""
    s, l, d, layers = _video_tokens(cfg, latent_shape), text_len, cfg.dim, cfg.num_layers
    n, te, patch_volume = s + l, cfg.time_embed_dim, math.prod(cfg.patch_size)
    return _train({
        "patch_embed": _linear(s, latent_shape[0] * patch_volume, d),
        "text_embed": _linear(l, cfg.text_dim, d),
        "time_embed": (_linear(1, d, te) + _linear(1, te, te) + layers * 2 * _linear(1, te, 6 * d)
                       + _linear(1, te, 2 * d)),
        "attn_proj": layers * 4 * _linear(n, d, d),
        "attn_core": layers * _attention(n, n, d),
        "ffn": layers * 2 * _linear(n, d, cfg.ffn_dim),
        "head": _linear(s, d, cfg.out_channels * patch_volume),
    })


def vchitect_train_flops(cfg: VchitectConfig, latent_shape, text_len: int) -> dict[str, int]:
    """Spatial attention per frame, temporal per position, cross to the text, all on S tokens."""
    t, rows, cols = _grid(cfg, latent_shape)
    s, hw, l, d, layers = t * rows * cols, rows * cols, text_len, cfg.dim, cfg.num_layers
    patch_volume = math.prod(cfg.patch_size)
    return _train({
        "patch_embed": _linear(s, latent_shape[0] * patch_volume, d),
        "text_embed": _linear(l, cfg.text_dim, d) + _linear(1, cfg.text_dim, d) + _linear(1, d, d),
        "time_embed": (_linear(1, cfg.freq_dim, d) + _linear(1, d, d) + layers * _linear(1, d, 6 * d)
                       + _linear(1, d, 2 * d)),
        "attn_proj": layers * (10 * _linear(s, d, d) + 2 * _linear(l, d, d)),
        "spatial_core": layers * t * _attention(hw, hw, d),
        "temporal_core": layers * hw * _attention(t, t, d),
        "cross_core": layers * _attention(s, l, d),
        "ffn": layers * 2 * _linear(s, d, cfg.ffn_dim),
        "head": _linear(s, d, cfg.out_channels * patch_volume),
    })


def snapvideo_train_flops(cfg: SnapVideoConfig, latent_shape, text_len: int) -> dict[str, int]:
    """Patch tokens are touched by read/write/patch FFN only; the latent layers see G*M latents."""
    grid = _grid(cfg, latent_shape)
    s, l, dp, dl = math.prod(grid), text_len, cfg.patch_dim, cfg.dim
    groups = grid[0] // min(cfg.group_frames, grid[0])
    m, n = cfg.latents_per_group, groups * cfg.latents_per_group
    blocks, layers = cfg.num_blocks, cfg.num_blocks * cfg.latent_layers
    patch_volume = math.prod(cfg.patch_size)
    return _train({
        "patch_embed": _linear(s, latent_shape[0] * patch_volume, dp),
        "text_embed": _linear(l, cfg.text_dim, dl) + _linear(l, dl, dl),
        "time_embed": (_linear(1, cfg.freq_dim, dl) + _linear(1, dl, dl) + _linear(1, dl, 6 * dl)
                       + _linear(1, dl, 2 * dp)),
        "read": blocks * (2 * _linear(n, dl, dl) + 2 * _linear(s, dp, dl)
                          + groups * _attention(m, s // groups, dl)),
        "latent_attn_proj": layers * (6 * _linear(n, dl, dl) + 2 * _linear(l, dl, dl)),
        "latent_attn_core": layers * (_attention(n, n, dl) + _attention(n, l, dl)),
        "latent_ffn": layers * 2 * _linear(n, dl, cfg.ffn_dim),
        "write": blocks * (2 * _linear(s, dp, dp) + 2 * _linear(n, dl, dp)
                           + groups * _attention(s // groups, m, dp)),
        "patch_ffn": blocks * 2 * _linear(s, dp, cfg.patch_ffn_dim),
        "head": _linear(s, dp, cfg.out_channels * patch_volume),
    })


def worlddreamer_train_flops(cfg: WorldDreamerConfig, latent_shape, text_len: int) -> dict[str, int]:
    """One token per patch_size latent positions; self-attention in windows of T*wh*ww tokens.

    The token embedding is a lookup (no matmul); the action embedding is left out because the
    trainer passes no actions.
    """
    t, rows, cols = _grid(cfg, latent_shape)
    s, l, d, layers = t * rows * cols, text_len, cfg.dim, cfg.num_layers
    window_tokens = t * min(cfg.window[0], rows) * min(cfg.window[1], cols)
    return _train({
        "text_embed": _linear(l, cfg.text_dim, d) + _linear(l, d, d),
        "self_attn_proj": layers * 4 * _linear(s, d, d),
        "self_attn_core": layers * (s // window_tokens) * _attention(window_tokens, window_tokens, d),
        "cross_attn_q_o": layers * 2 * _linear(s, d, d),
        "cross_attn_k_v": layers * 2 * _linear(l, d, d),
        "cross_attn_core": layers * _attention(s, l, d),
        "ffn": layers * 2 * _linear(s, d, cfg.ffn_dim),
        "head": _linear(s, d, cfg.vocab_size),
    })
