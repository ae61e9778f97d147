"""Clip boundaries of packed sequences (models/attention.Varlen) under sequence parallelism.

SP cuts the packed sequence, padded at its end to equal chunks, into one contiguous chunk per
rank. Self-attention boundaries stay global, with the padding as one more clip: Ulysses sees the
whole padded sequence again (for a subset of heads), and ring attention turns them into each ring
step's block of the mask. Cross-attention runs on the local chunk of queries, so its query side
is recut for the chunk while the text keys stay whole.
"""

import itertools

from litegen.models.attention import Varlen


def _device(varlen: Varlen):
    return varlen.cu_seqlens_q.device


def with_padding_clip(varlen: Varlen, padded: int) -> Varlen:
    """Self-attention boundaries over the sequence padded to `padded` tokens.

    The padding tokens form their own clip: real tokens never attend to them, and they attend
    only to each other, so their (discarded) outputs stay finite and their gradients are zero.
    """
    length = sum(varlen.q_lens)
    if sum(varlen.k_lens) != length:
        raise ValueError(f"self-attention boundaries must pair the sequence with itself, got "
                         f"{length} queries and {sum(varlen.k_lens)} keys")
    if padded < length:
        raise ValueError(f"cannot pad {length} packed tokens to {padded}")
    if padded == length:
        return varlen
    pad = padded - length
    return Varlen.from_lengths([*varlen.q_lens, pad], [*varlen.k_lens, pad], device=_device(varlen))


def query_chunk(varlen: Varlen, start: int, end: int) -> Varlen:
    """Boundaries for the queries [start, end) of the (padded) sequence against all of the keys.

    Clip i keeps its keys; its queries are the part of [q_start_i, q_end_i) inside the chunk (zero
    when the clip lies elsewhere, partial when it straddles a chunk edge). Queries past the last
    clip are SP padding: they join the last clip, so they attend real keys and stay finite.
    """
    if not 0 <= start <= end:
        raise ValueError(f"invalid query chunk [{start}, {end})")
    bounds = [0, *itertools.accumulate(varlen.q_lens)]
    local = [max(0, min(hi, end) - max(lo, start)) for lo, hi in zip(bounds, bounds[1:])]
    local[-1] += max(0, end - max(start, bounds[-1]))  # padding queries in this chunk
    return Varlen.from_lengths(local, list(varlen.k_lens), device=_device(varlen))


def local_varlen(varlen: Varlen, kind: str, padded: int, start: int, end: int) -> Varlen:
    """This rank's boundaries of kind "self" (whole, padded) or "cross" (queries [start, end))."""
    if kind == "self":
        return with_padding_clip(varlen, padded)
    if kind == "cross":
        return query_chunk(varlen, start, end)
    raise ValueError(f"unknown varlen kind {kind!r}: expected 'self' or 'cross' (see models/plan.TokenStack)")
