"""Choosing which clips share a micro-batch: NaViT-style packs and plain same-bucket batches.

A pack is several clips (of any buckets) concatenated into one token sequence of at most
`budget` tokens; attention stays within each clip (variable-length attention), so a pack costs
linear layers ~ sum(s_i) and attention ~ sum(s_i^2).

Two steps keep data-parallel ranks balanced on attention cost, not only on tokens:
* each rank's loader fills its pack (choose_pack) steering towards one cost per token, the
  token-weighted mean clip length of its pool, so packs are alike and the pool keeps its mix;
* at every micro-step the ranks exchange clips (litegen/parallel/rebalance.py) as
  litegen.data.balance.balance_clips decides from everyone's clip sizes. Packs of few large
  clips can differ a lot in sum(s_i^2) however well each is filled; only moving clips between
  ranks evens that out.
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
