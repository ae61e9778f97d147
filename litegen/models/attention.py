"""Attention dispatch: flash-attn on CUDA in half precision when installed, else PyTorch SDPA.

`AttentionCore` is the seam litegen/parallel replaces with Ulysses or ring attention; every
attention module in litegen/models calls its own core, never `attention` directly.

Packed sequences (several clips in one sequence, litegen/models/packed.py) attend
variable-length: each query only to keys of its own clip, described by `Varlen` (flash-attn's
cu_seqlens convention). On CUDA that is flash-attn's varlen kernel; elsewhere one SDPA call
per clip, or SDPA with a block-diagonal mask when that wastes little (a masked call computes all
Sq x Sk scores, per-clip calls only sum(q_i x k_i)).
"""

import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_FLASH_MAX_HEAD_DIM = 256  # flash-attn 2 kernels exist up to this head size
_MASK_MAX_ELEMENTS = 1 << 26  # block masks above 64 Mi entries: per-clip SDPA calls instead
_MASK_WASTE = 2  # one masked call beats per-clip calls only while it computes <= 2x the scores needed


@dataclass(eq=False)
class Varlen:
    """Clip boundaries of packed queries and keys: clip i is q[cu_q[i]:cu_q[i+1]] -> k[cu_k[i]:cu_k[i+1]]."""

    cu_seqlens_q: Tensor  # int32 [n + 1], starting at 0
    cu_seqlens_k: Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    q_lens: tuple[int, ...] = ()  # the same lengths on the host (no device sync to read them)
    k_lens: tuple[int, ...] = ()
    _mask: Optional[Tensor] = field(default=None, repr=False)

    @classmethod
    def from_lengths(cls, q_lens: list[int], k_lens: list[int], device=None) -> "Varlen":
        def cumulative(lens):
            return torch.tensor([0] + list(lens), dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)
        return cls(cumulative(q_lens), cumulative(k_lens), max(q_lens), max(k_lens),
                   tuple(int(n) for n in q_lens), tuple(int(n) for n in k_lens))

    def segments(self) -> list[tuple[int, int, int, int]]:
        """(q_start, q_end, k_start, k_end) per clip."""
        q = [0, *itertools.accumulate(self.q_lens)]
        k = [0, *itertools.accumulate(self.k_lens)]
        return [(q[i], q[i + 1], k[i], k[i + 1]) for i in range(len(self.q_lens))]

    def block_scores(self) -> int:
        """Scores the clips really need: sum(q_i * k_i)."""
        return sum(q * k for q, k in zip(self.q_lens, self.k_lens))

    def query_segment_ids(self) -> Tensor:
        """long [Sq]: the clip of each query (for self-attention, of each token)."""
        return _segment_ids(self.cu_seqlens_q, self.cu_seqlens_q.device)

    def block_mask(self) -> Tensor:
        """bool [Sq, Sk], True where query and key belong to the same clip (built once, then reused)."""
        if self._mask is None:
            k_ids = _segment_ids(self.cu_seqlens_k, self.cu_seqlens_k.device)
            self._mask = self.query_segment_ids()[:, None] == k_ids[None, :]
        return self._mask


def _segment_ids(cu_seqlens: Tensor, device) -> Tensor:
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)


@functools.lru_cache(maxsize=2)
def _flash(name: str = "flash_attn_func") -> Optional[Callable]:
    """flash_attn_func / flash_attn_varlen_func, or None. Imported lazily: it only exists on CUDA machines."""
    try:
        import flash_attn
    except Exception:  # ImportError, or a broken CUDA build raising at import time
        return None
    return getattr(flash_attn, name, None)


def _flash_attn_func() -> Optional[Callable]:
    return _flash("flash_attn_func")


def _flash_attn_varlen_func() -> Optional[Callable]:
    return _flash("flash_attn_varlen_func")


def attention_backend(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
                      varlen: Optional[Varlen] = None) -> str:
    """Which kernel `attention` uses: "flash", "flash_varlen", "sdpa", "sdpa_mask" or "sdpa_loop"."""
    # flash-attn takes no arbitrary mask (padded text keys go through SDPA), only half
    # precision, and head dims up to 256.
    usable = (attn_mask is None and q.is_cuda and q.dtype in _FLASH_DTYPES
              and k.dtype == q.dtype and v.dtype == q.dtype and q.shape[-1] <= _FLASH_MAX_HEAD_DIM)
    if varlen is None:
        return "flash" if usable and _flash_attn_func() is not None else "sdpa"
    if usable and _flash_attn_varlen_func() is not None:
        return "flash_varlen"
    scores = q.shape[1] * k.shape[1]
    cheap = scores <= _MASK_WASTE * varlen.block_scores() and scores <= _MASK_MAX_ELEMENTS
    return "sdpa_mask" if cheap else "sdpa_loop"


def _sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask)
    return out.transpose(1, 2)


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, varlen: Varlen) -> Tensor:
    """Block-diagonal attention over packed clips: q [1, Sq, H, D], k, v [1, Sk, H, D]."""
    if q.shape[0] != 1:
        raise ValueError(f"packed attention takes one packed sequence (batch 1), got batch {q.shape[0]}")
    backend = attention_backend(q, k, v, varlen=varlen)
    if backend == "flash_varlen":
        out = _flash_attn_varlen_func()(
            q[0], k[0], v[0], varlen.cu_seqlens_q, varlen.cu_seqlens_k, varlen.max_seqlen_q,
            varlen.max_seqlen_k, dropout_p=0.0, causal=False)
        return out[None]
    if backend == "sdpa_mask":
        return _sdpa(q, k, v, varlen.block_mask()[None, None])
    parts = [_sdpa(q[:, qs:qe], k[:, ks:ke], v[:, ks:ke]) for qs, qe, ks, ke in varlen.segments()]
    return torch.cat(parts, dim=1)


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
              varlen: Optional[Varlen] = None) -> Tensor:
    """Softmax(q k^T / sqrt(D)) v with q [B, Sq, H, D], k, v [B, Sk, H, D]; returns [B, Sq, H, D].

    attn_mask: bool, broadcastable to [B, H, Sq, Sk], True = attend. varlen: packed clips (B = 1),
    each query attends only to the keys of its own clip.
    """
    if varlen is not None:
        return varlen_attention(q, k, v, varlen)
    if attention_backend(q, k, v, attn_mask) == "flash":
        return _flash_attn_func()(q, k, v, dropout_p=0.0, causal=False)
    return _sdpa(q, k, v, attn_mask)


class AttentionCore(nn.Module):
    """Parameter-free attention step between the projections; swapped out for parallel variants.

    Parallel variants must pass `varlen` through: Ulysses gathers the whole sequence per head
    group, so the clip boundaries (over the whole sequence) stay valid inside it.
    """

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
                varlen: Optional[Varlen] = None) -> Tensor:
        return attention(q, k, v, attn_mask, varlen)
