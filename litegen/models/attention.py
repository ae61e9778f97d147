"""Attention dispatch: flash-attn on CUDA in half precision when installed, else PyTorch SDPA.

`AttentionCore` is the seam litegen/parallel replaces with Ulysses or ring attention; every
attention module in litegen/models calls its own core, never `attention` directly.
"""

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_FLASH_MAX_HEAD_DIM = 256  # flash-attn 2 kernels exist up to this head size


@functools.lru_cache(maxsize=1)
def _flash_attn_func() -> Optional[Callable]:
    """flash_attn_func, or None. Imported lazily and once: it only exists on CUDA machines."""
    try:
        from flash_attn import flash_attn_func
    except Exception:  # ImportError, or a broken CUDA build raising at import time
        return None
    return flash_attn_func


def attention_backend(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> str:
    """Which kernel `attention` uses for these tensors: "flash" or "sdpa"."""
    # flash_attn_func takes no arbitrary mask (padded text keys go through SDPA), only half
    # precision, and head dims up to 256.
    usable = (attn_mask is None and q.is_cuda and q.dtype in _FLASH_DTYPES
              and k.dtype == q.dtype and v.dtype == q.dtype and q.shape[-1] <= _FLASH_MAX_HEAD_DIM)
    return "flash" if usable and _flash_attn_func() is not None else "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Softmax(q k^T / sqrt(D)) v with q [B, Sq, H, D], k, v [B, Sk, H, D]; returns [B, Sq, H, D].

    attn_mask: bool, broadcastable to [B, H, Sq, Sk], True = attend.
    """
    if attention_backend(q, k, v, attn_mask) == "flash":
        return _flash_attn_func()(q, k, v, dropout_p=0.0, causal=False)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask)
    return out.transpose(1, 2)


class AttentionCore(nn.Module):
    """Parameter-free attention step between the projections; swapped out for parallel variants."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        return attention(q, k, v, attn_mask)
