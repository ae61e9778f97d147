"""The collectives sequence parallelism uses, each counting the bytes this rank sends.

Counting happens where the data leaves the rank (chunks addressed to other ranks, tensors passed
to a peer), so tests and benchmarks can hold the traffic of Ulysses and ring attention against
the analytic formulas in `sp_bytes`.
"""

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

_sent_bytes: Counter = Counter()  # kind -> bytes sent by this rank since the last reset


@contextmanager
def count_bytes() -> Iterator[Counter]:
    """Yield a Counter, filled on exit with the bytes sent per collective kind during the block."""
    before = Counter(_sent_bytes)
    result: Counter = Counter()
    try:
        yield result
    finally:
        result.update(_sent_bytes - before)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def all_to_all(output: Tensor, input: Tensor, group) -> None:
    """all_to_all_single with equal splits along dim 0: chunk j of `input` goes to group rank j."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    chunks = input.chunk(world)
    _sent_bytes["all_to_all"] += sum(_nbytes(c) for j, c in enumerate(chunks) if j != me)
    dist.all_to_all_single(output, input, group=group)


def all_gather(output: Tensor, input: Tensor, group) -> None:
    """Every rank receives every rank's `input`, stacked along dim 0 of `output`."""
    _sent_bytes["all_gather"] += _nbytes(input) * (dist.get_world_size(group) - 1)
    # all_gather_single is the new name (2.13 deprecates all_gather_into_tensor); older torch lacks it.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, input, group=group)


def reduce_scatter(output: Tensor, input: Tensor, group) -> None:
    """Sum `input` over the group; this rank keeps chunk `rank` of the sum along dim 0 in `output`."""
    world, me = dist.get_world_size(group), dist.get_rank(group)
    _sent_bytes["reduce_scatter"] += sum(_nbytes(c) for j, c in enumerate(input.chunk(world)) if j != me)
    # reduce_scatter_single is the new name (2.13 deprecates reduce_scatter_tensor).
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(output, input, group=group)


def ring_exchange(send: Tensor, group) -> tuple[Tensor, list]:
    """Start passing `send` to the next rank of the ring and receiving the previous rank's.

    Returns (receive buffer, requests to wait on). Both directions go in one batched P2P call,
    so neither side blocks on the other's posting order.
    """
    world, me = dist.get_world_size(group), dist.get_rank(group)
    recv = torch.empty_like(send)
    next_rank = dist.get_global_rank(group, (me + 1) % world)
    prev_rank = dist.get_global_rank(group, (me - 1) % world)
    ops = [dist.P2POp(dist.isend, send, next_rank, group), dist.P2POp(dist.irecv, recv, prev_rank, group)]
    _sent_bytes["ring"] += _nbytes(send)
    return recv, dist.batch_isend_irecv(ops)


def wait_all(requests: list) -> None:
    for request in requests:
        request.wait()
