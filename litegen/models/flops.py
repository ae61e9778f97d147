"""Analytic training FLOPs per sample, the numerator of MFU.

Convention (stated once, used everywhere LiteGen reports FLOPs or MFU):

* Only matrix products count: every Linear/Conv as 2*m*n*k, attention scores and the
  attention-weighted sum as 2*Sq*Sk*dim each. Norms, activations, RoPE, softmax and adaLN
  elementwise math are left out (a few percent of real work, nearly free on tensor cores).
* Training = forward + backward = 3 x forward for every product: the usual "6*N per token"
  rule applied per layer type. It slightly over-counts the first layers (patch embedding, first
  text/time Linear), whose inputs need no gradient, by well under 1% at real sizes.
* Each layer is charged for the tokens it actually sees: video linears (self q/k/v/o, cross q/o,
  FFN, patch embedding, head) on S = (T/pt)(H/ph)(W/pw) video tokens; cross k/v and the text MLP on
  all `text_len` text tokens (padding is computed too); time MLP and adaLN projection once per
  sample; self-attention 2*2*S*S*dim and cross-attention 2*2*S*L*dim forward.
* Dense attention over all S x S pairs of one clip; for packed sequences (block-diagonal masks)
  sum this per clip rather than calling it with the packed length.

`cpu_sdpa_flop_formulas()` lets torch's FlopCounterMode count PyTorch's CPU SDPA kernels, which it
does not know (it counts zero for them), so measured and analytic totals can be compared on CPU.
"""

import math

import torch

from litegen.config.model import WanConfig

TRAIN_FACTOR = 3  # forward + backward (grad wrt inputs and wrt weights) = 3 x forward


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attention(q_tokens: int, k_tokens: int, dim: int) -> int:
    return 2 * 2 * q_tokens * k_tokens * dim  # scores (Q K^T) and weighted sum (A V)


def _video_tokens(cfg: WanConfig, latent_shape: tuple[int, int, int, int]) -> int:
    _, *thw = latent_shape
    if any(n % p for n, p in zip(thw, cfg.patch_size)):
        raise ValueError(f"latent (T, H, W)={tuple(thw)} must be divisible by patch_size {cfg.patch_size}")
    return math.prod(n // p for n, p in zip(thw, cfg.patch_size))


def _wan_forward_flops(cfg: WanConfig, latent_shape, text_len: int) -> dict[str, int]:
    s, l, d, layers = _video_tokens(cfg, latent_shape), text_len, cfg.dim, cfg.num_layers
    patch_volume = math.prod(cfg.patch_size)
    return {
        "patch_embed": _linear(s, latent_shape[0] * patch_volume, d),
        "text_embed": _linear(l, cfg.text_dim, d) + _linear(l, d, d),
        "time_embed": _linear(1, cfg.freq_dim, d) + _linear(1, d, d) + _linear(1, d, 6 * d),
        "self_attn_proj": layers * 4 * _linear(s, d, d),
        "self_attn_core": layers * _attention(s, s, d),
        "cross_attn_q_o": layers * 2 * _linear(s, d, d),
        "cross_attn_k_v": layers * 2 * _linear(l, d, d),
        "cross_attn_core": layers * _attention(s, l, d),
        "ffn": layers * 2 * _linear(s, d, cfg.ffn_dim),
        "head": _linear(s, d, cfg.out_channels * patch_volume),
    }


def wan_train_flops(cfg: WanConfig, latent_shape: tuple[int, int, int, int],
                    text_len: int) -> dict[str, int]:
    """Training FLOPs of one sample by part, plus "total". latent_shape is (C, T, H, W)."""
    parts = {name: TRAIN_FACTOR * flops
             for name, flops in _wan_forward_flops(cfg, latent_shape, text_len).items()}
    parts["total"] = sum(parts.values())
    return parts


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d = query_shape
    return 2 * b * h * s_q * key_shape[-2] * (d + value_shape[-1])


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                   **kwargs) -> int:
    return 2 * _sdpa_forward(query_shape, key_shape, value_shape)  # dQ, dK, dV, dP: 4 products


def cpu_sdpa_flop_formulas() -> dict:
    """custom_mapping for FlopCounterMode covering the CPU SDPA kernels it counts as zero."""
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
    }
