"""Packed clips under sequence parallelism, the pure parts: clip boundaries per SP chunk.

A rank's cross-attention runs on its chunk of the queries with boundaries recut for the chunk
(litegen/parallel/packed.py); its rows must equal the same rows of the whole sequence's
attention, also for a clip straddling the chunk edge, a clip with no query in the chunk, and the
SP padding at the end. Ulysses self-attention runs over the whole padded sequence with the padding
as one more clip; the real tokens must not see it. The 2-rank runs are in tests/dist/test_packed_sp.py.
"""

import inspect

import pytest
import torch

import litegen.models.attention as attention_module
from litegen.models.attention import Varlen, attention
from litegen.parallel.packed import local_varlen, query_chunk, with_padding_clip

CLIPS = [12, 9, 4]  # 25 tokens: padded to 26 over 2 ranks, clip 1 ([12, 21)) straddles token 13
CAPTIONS = [5, 2, 3]


def lens(varlen: Varlen) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return varlen.q_lens, varlen.k_lens


def test_query_chunk_recuts_queries_and_keeps_keys():
    cross = Varlen.from_lengths(CLIPS, CAPTIONS)
    first, second = query_chunk(cross, 0, 13), query_chunk(cross, 13, 26)
    assert lens(first) == ((12, 1, 0), (5, 2, 3))  # clip 1 starts at the last token of chunk 0
    assert lens(second) == ((0, 8, 4 + 1), (5, 2, 3))  # the padding token joins the last clip
    assert first.cu_seqlens_q.tolist() == [0, 12, 13, 13] and first.max_seqlen_q == 12
    assert second.cu_seqlens_q.tolist() == [0, 0, 8, 13] and second.max_seqlen_q == 8
    assert second.cu_seqlens_k.tolist() == [0, 5, 7, 10] and second.max_seqlen_k == 5
    assert lens(query_chunk(cross, 4, 8)) == ((4, 0, 0), (5, 2, 3))  # a chunk inside one clip
    assert lens(query_chunk(cross, 24, 28)) == ((0, 0, 4), (5, 2, 3))  # one real token + 3 padding


def test_with_padding_clip_adds_one_clip_only_when_padded():
    self_varlen = Varlen.from_lengths(CLIPS, CLIPS)
    assert with_padding_clip(self_varlen, 25) is self_varlen
    padded = with_padding_clip(self_varlen, 28)
    assert lens(padded) == ((12, 9, 4, 3), (12, 9, 4, 3))
    assert local_varlen(self_varlen, "self", 26, 13, 26).q_lens == (12, 9, 4, 1)  # whole, not cut
    with pytest.raises(ValueError, match="pair the sequence with itself"):
        with_padding_clip(Varlen.from_lengths(CLIPS, CAPTIONS), 26)
    with pytest.raises(ValueError, match="unknown varlen kind"):
        local_varlen(self_varlen, "ring", 26, 0, 13)


def qkv(q_len: int, k_len: int, heads: int = 2, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, q_len, heads, dim, generator=gen), torch.randn(1, k_len, heads, dim, generator=gen),
            torch.randn(1, k_len, heads, dim, generator=gen))


@pytest.mark.parametrize("per_clip_calls", [False, True])  # SDPA with a block mask, or one call per clip
@pytest.mark.parametrize("world", [2, 3, 4])
def test_chunked_cross_attention_equals_the_whole_sequence_rows(per_clip_calls, world, monkeypatch):
    if per_clip_calls:
        monkeypatch.setattr(attention_module, "_MASK_WASTE", 0)
    length = sum(CLIPS)
    chunk = -(-length // world)
    padded = chunk * world
    q, k, v = qkv(padded, sum(CAPTIONS))
    whole = attention(q[:, :length], k, v, varlen=Varlen.from_lengths(CLIPS, CAPTIONS))
    cross = Varlen.from_lengths(CLIPS, CAPTIONS)
    for rank in range(world):
        start = rank * chunk
        out = attention(q[:, start:start + chunk], k, v, varlen=query_chunk(cross, start, start + chunk))
        assert out.shape[1] == chunk and torch.isfinite(out).all()
        real = max(0, min(start + chunk, length) - start)
        torch.testing.assert_close(out[:, :real], whole[:, start:start + real], rtol=1e-6, atol=1e-6)


def test_padding_clip_is_invisible_to_real_tokens():
    length, padded = sum(CLIPS), sum(CLIPS) + 3
    q, k, v = qkv(padded, padded, seed=1)
    whole = attention(q[:, :length], k[:, :length], v[:, :length], varlen=Varlen.from_lengths(CLIPS, CLIPS))
    out = attention(q, k, v, varlen=with_padding_clip(Varlen.from_lengths(CLIPS, CLIPS), padded))
    torch.testing.assert_close(out[:, :length], whole, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(out).all()


def test_segment_bias_masks_each_ring_block_to_the_queries_clips():
    from litegen.parallel.ring import segment_bias

    segments = Varlen.from_lengths([2, 3, 1], [2, 3, 1]).query_segment_ids()  # 6 tokens, 2 blocks of 3
    assert segments.tolist() == [0, 0, 1, 1, 1, 2]
    bias = segment_bias(segments, me=0, owner=1, block=3, dtype=torch.float32)[0, 0]
    # Queries of clips 0, 0, 1 against keys of clips 1, 1, 2: only the clip-1 query sees two keys.
    assert (bias == 0).tolist() == [[False] * 3, [False] * 3, [True, True, False]]
    assert bias.min() == torch.finfo(torch.float32).min / 2  # finite: a fully masked row merges with weight 0


def test_wan_plan_names_a_packed_seam_with_real_arguments():
    from litegen.models.wan import PLAN, WanDiT

    spec = PLAN.packed_token_stack
    assert PLAN.token_stacks() == (PLAN.token_stack, spec)
    parameters = inspect.signature(getattr(WanDiT, spec.method)).parameters
    named = [name for name, _ in spec.sequences] + [name for name, _ in spec.varlens]
    assert set(named) <= set(parameters) and {spec.output, spec.attends} <= set(parameters)
    assert dict(spec.varlens) == {"self_varlen": "self", "cross_varlen": "cross"}


def test_per_token_backward_is_reproducible_with_threads():
    """Per-clip time embeddings spread over a pack's tokens: the gradient must be bitwise equal
    from run to run with 2 threads (a gather's accumulating backward was not; exact resume needs it)."""
    from litegen.models.packed import pack_layout, per_token

    layout = pack_layout([(4, 12, 8), (4, 20, 10), (3, 8, 8), (1, 6, 6)])  # 1412 tokens
    gen = torch.Generator().manual_seed(0)
    values, grad = torch.randn(4, 6, 96, generator=gen), torch.randn(1412, 6, 96, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(20):
            x = values.clone().requires_grad_()
            per_token(x, layout).backward(grad)
            grads.append(x.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads)
    assert torch.allclose(grads[0], torch.stack([grad[layout.segment_ids == i].sum(0) for i in range(4)]), atol=1e-4)
