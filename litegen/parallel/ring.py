"""Ring attention: K/V blocks travel around the ring, partial results merge by log-sum-exp.

Each of P ranks keeps its s queries and, over P steps, sees every rank's s keys/values: the block
for the next step is in flight (batched send/recv) while the current one is computed. Block
results (out_j, lse_j) merge exactly: out = sum_j exp(lse_j - lse) out_j with lse = logsumexp_j.

Backward is a second trip around the ring (custom autograd, nothing is all-gathered): each block's
gradients come from the attention kernel's own backward given the *global* out and lse, dQ stays
home, and dK/dV accumulate in a buffer that travels with their block and returns to its owner.

Block kernels: PyTorch's fused CPU flash kernel on CPU (tested here), the memory-efficient kernel
on CUDA (both return the log-sum-exp and have a backward that accepts it). Masks are additive
biases with a large finite negative value, so fully masked blocks merge with weight 0, not NaN:
padded keys (key_valid) or, for packed clips (segments), the keys of other clips, which turns each
ring step's block into its piece of the block-diagonal mask.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from litegen.parallel import comm

_LSE_ALIGN = 32  # the CUDA memory-efficient kernel pads its log-sum-exp rows to this length


def key_bias(key_valid: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """[B, Sk] bool (True = real key) -> additive [B, 1, 1, Sk] bias in `dtype`, or None."""
    if key_valid is None:
        return None
    masked = torch.finfo(dtype).min / 2  # finite: exp(masked - lse) underflows to exactly 0
    bias = torch.zeros(key_valid.shape, dtype=dtype, device=key_valid.device)
    return bias.masked_fill(~key_valid, masked)[:, None, None, :]


def _cuda_bias(bias: Optional[Tensor], q: Tensor, k: Tensor) -> Optional[Tensor]:
    # The memory-efficient kernel wants a dense [B, H, Sq, Sk] bias whose rows are 16-aligned.
    if bias is None:
        return None
    b, h, sq, sk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    aligned = -(-sk // 16) * 16
    dense = torch.empty(b, h, sq, aligned, dtype=q.dtype, device=q.device)[..., :sk]
    return dense.copy_(bias.expand(b, h, sq, sk))


def block_forward(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Attention of one query block on one key block, [B, H, S, D]; returns (out, lse fp32 [B, H, Sq])."""
    if q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, _cuda_bias(bias, q, k), True)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)
    return out, lse[..., :q.shape[2]].float()


def block_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                   out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of one block pair, given the global out and lse of the query block."""
    if q.is_cuda:
        aligned = -(-q.shape[2] // _LSE_ALIGN) * _LSE_ALIGN
        lse = F.pad(lse, (0, aligned - q.shape[2]))
        unused = torch.empty((), dtype=torch.int64, device=q.device)  # philox state: no dropout
        grads = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            dout, q, k, v, _cuda_bias(bias, q, k), out, lse, unused, unused, 0.0,
            [True, True, True, False])
        return grads[0], grads[1], grads[2]
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, q, k, v, out, lse, 0.0, False, attn_mask=bias)


def merge(out: Optional[Tensor], lse: Optional[Tensor], block_out: Tensor,
          block_lse: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two softmax-normalised partial results over disjoint key sets (fp32)."""
    block_out = block_out.float()
    if out is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    out = out * torch.exp(lse - new_lse)[..., None] + block_out * torch.exp(block_lse - new_lse)[..., None]
    return out, new_lse


def segment_bias(segments: Tensor, me: int, owner: int, block: int, dtype: torch.dtype) -> Tensor:
    """Additive [1, 1, s, s] bias letting query block `me` see key block `owner` only within a clip.

    segments: long [P*s], the clip of every token of the whole (padded) sequence in ring order.
    A query row whose clip has no key in this block is fully masked here and merges with weight 0;
    every query sees its own clip (itself at least) in its own block, so no row is masked everywhere.
    """
    same = segments[me * block:(me + 1) * block, None] == segments[None, owner * block:(owner + 1) * block]
    bias = torch.zeros(same.shape, dtype=dtype, device=segments.device)
    return bias.masked_fill(~same, torch.finfo(dtype).min / 2)[None, None]


def _owner_bias(key_valid: Optional[Tensor], segments: Optional[Tensor], me: int, owner: int,
                block: int, dtype) -> Optional[Tensor]:
    """Bias for query block `me` against the key block that started on ring rank `owner`."""
    if segments is not None:
        return segment_bias(segments, me, owner, block, dtype)
    if key_valid is None:
        return None
    return key_bias(key_valid[:, owner * block:(owner + 1) * block], dtype)


def _ring_forward(q: Tensor, k: Tensor, v: Tensor, group, key_valid, segments) -> tuple[Tensor, Tensor]:
    world, me = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    kv, out, lse = torch.stack([k, v]), None, None
    for step in range(world):
        if step + 1 < world:
            incoming, requests = comm.ring_exchange(kv, group)  # next block travels during compute
        bias = _owner_bias(key_valid, segments, me, (me - step) % world, k.shape[2], q.dtype)
        out, lse = merge(out, lse, *block_forward(q, kv[0], kv[1], bias))
        if step + 1 < world:
            comm.wait_all(requests)
            kv = incoming
    return out.to(q.dtype), lse


def _ring_backward(dout, q, k, v, out, lse, group, key_valid, segments) -> tuple[Tensor, Tensor, Tensor]:
    world, me = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    kv = torch.stack([k, v])
    dq = torch.zeros_like(q, dtype=torch.float32)
    dkv = torch.zeros_like(kv, dtype=torch.float32)  # gradients of the block we hold right now
    for step in range(world):
        if step + 1 < world:
            incoming, requests = comm.ring_exchange(kv, group)
        bias = _owner_bias(key_valid, segments, me, (me - step) % world, k.shape[2], q.dtype)
        dq_j, dk_j, dv_j = block_backward(dout, q, kv[0], kv[1], bias, out, lse)
        dq += dq_j
        dkv[0] += dk_j
        dkv[1] += dv_j
        if step + 1 < world:
            comm.wait_all(requests)
            kv = incoming
        # dK/dV follow their block to the next rank; after the last step this hop takes them home.
        dkv, requests = comm.ring_exchange(dkv, group)
        comm.wait_all(requests)
    return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, group, key_valid: Optional[Tensor],
                segments: Optional[Tensor]) -> Tensor:
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # kernels want [B, H, S, D]
        out, lse = _ring_forward(q, k, v, group, key_valid, segments)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.key_valid, ctx.segments = group, key_valid, segments
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dout = dout.transpose(1, 2).contiguous()
        grads = _ring_backward(dout, q, k, v, out, lse, ctx.group, ctx.key_valid, ctx.segments)
        return (*(g.transpose(1, 2) for g in grads), None, None, None)


def ring_attention(q: Tensor, k: Tensor, v: Tensor, group, key_valid: Optional[Tensor] = None,
                   segments: Optional[Tensor] = None) -> Tensor:
    """Attention over a sequence sharded in equal blocks across `group`; [B, s, H, D] -> [B, s, H, D].

    key_valid [B, P*s] bool (True = real key) covers the whole sequence in ring-rank order.
    segments [P*s] long (packed clips, variable-length attention): the clip of each token of the
    whole sequence in ring-rank order; a query attends only keys of its own clip. One or the other.
    """
    if key_valid is not None and segments is not None:
        raise ValueError("ring_attention takes key_valid or segments, not both (make padding its own clip)")
    return _RingAttention.apply(q, k, v, group, key_valid, segments)


def ring_bytes_per_rank(batch: int, local_tokens: int, heads: int, head_dim: int, world: int,
                        element_size: int) -> dict[str, int]:
    """Bytes one rank sends per ring attention call.

    Forward: its K and V block goes P-1 hops. Backward: K/V again P-1 hops, plus the fp32 dK/dV
    accumulator P hops (the last one home to the block's owner).
    """
    block = batch * local_tokens * heads * head_dim
    kv = 2 * block * element_size * (world - 1)
    return {"forward": kv, "backward": kv + 2 * block * 4 * world}
