"""Choosing which clips share a micro-batch: NaViT-style packs and plain same-bucket batches.

A pack is several clips (of any buckets) concatenated into one token sequence of at most
`budget` tokens; attention stays within each clip (variable-length attention), so a pack costs
linear layers ~ sum(s_i) and attention ~ sum(s_i^2).

Two steps keep data-parallel ranks balanced on attention cost, not only on tokens:
* each rank's loader fills its pack (choose_pack) steering towards one cost per token, the
  token-weighted mean clip length of its pool, so packs are alike and the pool keeps its mix;
* at every micro-step the ranks exchange clips (litegen/parallel/rebalance.py) as balance_clips
  decides from everyone's clip sizes: largest attention cost first, to the cheapest rank with
  token room. Packs of few large clips can differ a lot in sum(s_i^2) however well each is
  filled; only moving clips between ranks evens that out.
"""

from collections import Counter
from typing import Hashable, Optional, Sequence

import numpy as np


def choose_pack(tokens: Sequence[int], budget: int) -> list[int]:
    """Indices into `tokens` (the pool, oldest first) of one pack of at most `budget` tokens.

    The oldest clip always goes in (no clip waits forever); then, while some clip still fits,
    the one closest to the mean length the rest of the pack should have to land on the target
    cost (remaining cost / remaining tokens); ties go to the older clip.
    """
    sizes = np.asarray(tokens, dtype=np.float64)
    if sizes.size == 0 or sizes[0] > budget:
        raise ValueError(f"the oldest clip ({sizes[0] if sizes.size else 'none'} tokens) does not fit "
                         f"a pack of {budget} tokens")
    target_cost = budget * float((sizes**2).sum() / sizes.sum())
    chosen = [0]
    free = np.ones(sizes.size, dtype=bool)
    free[0] = False
    room, cost_left = budget - sizes[0], target_cost - sizes[0] ** 2
    while True:
        candidates = np.flatnonzero(free & (sizes <= room))
        if candidates.size == 0:
            return chosen
        wanted = cost_left / room
        pick = int(candidates[np.argmin(np.abs(sizes[candidates] - wanted))])  # argmin: first = oldest
        chosen.append(pick)
        free[pick] = False
        room, cost_left = room - sizes[pick], cost_left - sizes[pick] ** 2


def first_fit_pack(tokens: Sequence[int], budget: int) -> list[int]:
    """The naive packer (for comparison): clips in arrival order until the next one does not fit."""
    chosen, used = [], 0
    for i, size in enumerate(tokens):
        if used + size > budget:
            break
        chosen.append(i)
        used += size
    return chosen


def ready_bucket(buckets: Sequence[Hashable], batch_size: int) -> Optional[Hashable]:
    """The first bucket (in pool order) holding batch_size clips, or None."""
    counts = Counter(buckets)
    for bucket in buckets:
        if counts[bucket] >= batch_size:
            return bucket
    return None


def pack_cost(tokens: Sequence[int]) -> tuple[int, int]:
    """(tokens, attention cost sum(s_i^2)) of one pack."""
    return int(sum(tokens)), int(sum(s * s for s in tokens))


def balance_clips(tokens: Sequence[Sequence[int]], budget: int, max_moves: int = 256,
                  partners: int = 8) -> list[list[tuple[int, int]]]:
    """Deal clips out to ranks so their attention costs sum(s_i^2) are as even as possible.

    tokens[r][i]: tokens of clip i of rank r. Returns, per rank, the (rank, index) of the clips it
    takes. First LPT (costliest clip first, to the cheapest rank with room under `budget`); if
    that cannot keep every rank under budget, the clips stay where they are (a layout the budget
    allows, and kept unless LPT lowers the peak). Then rounds of local search: the costliest rank makes the one move or swap with one
    of the `partners` cheapest ranks that lowers the larger of the two costs most, never past
    `budget`, until none helps. Pure and deterministic: every rank computes the same answer.
    """
    size = [[int(s) for s in row] for row in tokens]
    held = [[(r, i) for i in range(len(row))] for r, row in enumerate(size)]
    dealt = _lpt(size, budget)
    if dealt is not None and _peak(dealt, size) < _peak(held, size):  # move clips only when it pays
        held = dealt
    cost = [sum(size[r][i] ** 2 for r, i in clips) for clips in held]
    used = [sum(size[r][i] for r, i in clips) for clips in held]
    for _ in range(max_moves):
        hi = max(range(len(held)), key=lambda d: (cost[d], -d))
        move = _best_move(hi, held, size, cost, used, budget, partners)
        if move is None:
            break
        _apply(hi, *move, held, size, cost, used)
    return [sorted(clips) for clips in held]


def _peak(held: list[list[tuple[int, int]]], size: list[list[int]]) -> int:
    return max(sum(size[r][i] ** 2 for r, i in clips) for clips in held)


def _lpt(size: list[list[int]], budget: int) -> Optional[list[list[tuple[int, int]]]]:
    """Longest-processing-time assignment by s^2 under the token budget; None if a clip fits nowhere."""
    ranks = len(size)
    order = sorted(((s * s, r, i) for r, row in enumerate(size) for i, s in enumerate(row)),
                   key=lambda item: (-item[0], item[1], item[2]))
    cost, used = [0] * ranks, [0] * ranks
    held: list[list[tuple[int, int]]] = [[] for _ in range(ranks)]
    for clip_cost, r, i in order:
        room = [d for d in range(ranks) if used[d] + size[r][i] <= budget]
        if not room:
            return None
        # Empty ranks first: every rank must keep at least one clip.
        dest = min(room, key=lambda d: (bool(held[d]), cost[d], d != r, d))
        held[dest].append((r, i))
        cost[dest] += clip_cost
        used[dest] += size[r][i]
    return held


def _best_move(hi, held, size, cost, used, budget, partners):
    """(lo, clip from hi, clip from lo or None) lowering max(cost[hi], cost[lo]) most, or None."""
    best, best_peak = None, cost[hi]
    cheapest = sorted((d for d in range(len(held)) if d != hi), key=lambda d: (cost[d], d))[:partners]
    for lo in cheapest:
        for a in held[hi]:
            sa = size[a[0]][a[1]]
            options = [None] if len(held[hi]) > 1 else []  # a rank never ends up empty
            options += held[lo]
            for b in options:
                sb = 0 if b is None else size[b[0]][b[1]]
                if used[lo] - sb + sa > budget or used[hi] - sa + sb > budget:
                    continue
                peak = max(cost[hi] - sa * sa + sb * sb, cost[lo] - sb * sb + sa * sa)
                if peak < best_peak:
                    best, best_peak = (lo, a, b), peak
    return best


def _apply(hi, lo, a, b, held, size, cost, used) -> None:
    sa = size[a[0]][a[1]]
    sb = 0 if b is None else size[b[0]][b[1]]
    held[hi].remove(a)
    held[lo].append(a)
    if b is not None:
        held[lo].remove(b)
        held[hi].append(b)
    cost[hi] += sb * sb - sa * sa
    cost[lo] += sa * sa - sb * sb
    used[hi] += sb - sa
    used[lo] += sa - sb
