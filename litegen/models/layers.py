"""Transformer building blocks: fp32 norms, adaLN modulation, self-/cross-attention, feed-forward.

Attribute names (q, k, v, o, norm_q, norm_k) follow the original Wan repo so its checkpoints load
by key. Attention math goes through each module's `core`, the seam litegen/parallel swaps.
"""

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from litegen.models.attention import AttentionCore, Varlen
from litegen.models.rope import apply_rope


def _float_or_none(p: Optional[Tensor]) -> Optional[Tensor]:
    return None if p is None else p.float()


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (bf16 statistics drift over depth)."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, _float_or_none(self.weight),
                           _float_or_none(self.bias), self.eps)
        return out.to(x.dtype)


class RMSNorm32(nn.RMSNorm):
    """RMSNorm computed in float32, returned in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.rms_norm(x.float(), self.normalized_shape, _float_or_none(self.weight), self.eps)
        return out.to(x.dtype)


def modulate(norm: nn.Module, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: norm(x) * (1 + scale) + shift in float32, back in x's dtype.

    shift/scale [B, 1, dim] (one timestep per sequence) or [B, S, dim] (per token, packed clips).
    """
    return (norm(x.float()) * (1 + scale) + shift).to(x.dtype)


def gated_residual(x: Tensor, branch: Tensor, gate: Tensor) -> Tensor:
    """x + branch * gate, summed in float32 so a bf16 residual stream loses no small updates."""
    return (x.float() + branch.float() * gate).to(x.dtype)


def feed_forward(dim: int, ffn_dim: int) -> nn.Sequential:
    """Linear, GELU(tanh), Linear; Sequential so keys read ffn.0 / ffn.2 as in Wan."""
    return nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))


def _core(core: nn.Module, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
          varlen: Optional[Varlen]) -> Tensor:
    # Unpacked calls keep the original core signature, so cores written without `varlen`
    # (parallel wrappers) still work there; packed clips need a core that takes it.
    if varlen is None:
        return core(q, k, v, attn_mask=attn_mask) if attn_mask is not None else core(q, k, v)
    return core(q, k, v, attn_mask=attn_mask, varlen=varlen)


class _Attention(nn.Module):
    """Shared projections: q/k/v/o Linear(dim, dim) and RMSNorm over the full width on q and k."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        # Wan normalises across all heads at once (one RMS over dim), not per head.
        self.norm_q = RMSNorm32(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm32(dim, eps=eps) if qk_norm else nn.Identity()
        self.core = AttentionCore()

    def split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))


class SelfAttention(_Attention):
    """Full 3D self-attention over video tokens with rotary positions on q and k."""

    def forward(self, x: Tensor, rope: Tensor, varlen: Optional[Varlen] = None) -> Tensor:
        q = apply_rope(self.split_heads(self.norm_q(self.q(x))), rope)
        k = apply_rope(self.split_heads(self.norm_k(self.k(x))), rope)
        out = _core(self.core, q, k, self.split_heads(self.v(x)), None, varlen)
        return self.o(out.flatten(2))


class CrossAttention(_Attention):
    """Video tokens attend to text tokens; padded text keys are masked out.

    Packed clips pass their captions' real tokens concatenated (context [1, Lt, dim], no mask)
    and `varlen` pairing each clip with its caption.
    """

    def forward(self, x: Tensor, context: Tensor, context_mask: Optional[Tensor],
                varlen: Optional[Varlen] = None) -> Tensor:
        q = self.split_heads(self.norm_q(self.q(x)))
        k = self.split_heads(self.norm_k(self.k(context)))
        v = self.split_heads(self.v(context))
        mask = None if varlen is not None else context_mask[:, None, None, :]  # [B, 1, 1, L]
        out = _core(self.core, q, k, v, mask, varlen)
        return self.o(out.flatten(2))
