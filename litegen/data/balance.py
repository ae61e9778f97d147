"""Dealing one micro-step's clips out to the data-parallel ranks so attention costs are even.

Minimise the costliest rank's sum(s_i^2) with every rank under the token budget: a min-max
partition problem (NP-hard) solved at every packed micro-step, so a heuristic that is cheap and
deterministic (every rank computes the same plan from the same sizes, with no communication):

1. Two starting layouts: the clips where they are, and LPT (costliest clip first, to the cheapest
   rank with room).
2. Descent from each: one of the `partners` costliest ranks moves one clip to, or swaps one with,
   one of the `partners` cheapest when that does not raise the larger of the two costs and evens
   them (lower sum of squared costs), best move first, until none is left. Descending only from
   the single costliest rank (the first version) stalls where two ranks hold two of the largest
   clips each with mid-sized fillers that belong elsewhere.
3. Iterated local search: `search_rounds` times, a few random budget-respecting swaps (seeded,
   so every rank draws the same) of the best layout so far, then descent; kept if the peak drops.

Measured on benchmarks/data.py's 8-rank, 40-step stream (see benchmarks/RESULTS.md): worst step
max/mean 1.066 -> 1.048 (1.050 with seeds 1 and 2), mean 1.026 -> 1.021, about 12 ms per plan in
Python. benchmarks/balance_optimum.py solves the integer program of each step above 1.04: our
plan is optimal on 7 of those 8 steps, and 1.048 against 1.042 on the other.
"""

import random
from typing import Optional, Sequence

import numpy as np

Layout = list[list[int]]  # per rank, indices into the flat list of clip sizes


def balance_clips(tokens: Sequence[Sequence[int]], budget: int, search_rounds: int = 16,
                  partners: int = 8, seed: int = 0) -> list[list[tuple[int, int]]]:
    """tokens[r][i]: tokens of clip i of rank r. Returns, per rank, the (rank, index) of the clips
    it takes; every rank keeps at least one clip and at most `budget` tokens. `partners`: how many
    of the costliest and of the cheapest ranks a descent step pairs (bounds the work on many ranks).
    """
    ids = [(r, i) for r, row in enumerate(tokens) for i in range(len(row))]
    sizes = [int(tokens[r][i]) for r, i in ids]
    ranks = len(tokens)
    stay, first = [], 0
    for row in tokens:
        stay.append(list(range(first, first + len(row))))
        first += len(row)
    search = _Search(sizes, ranks, budget, partners)
    best = None
    for start in (stay, _lpt(sizes, ranks, budget)):
        if start is not None:
            layout = search.descend(start)
            if best is None or search.peak(layout) < search.peak(best):  # ties keep the clips put
                best = layout
    rng = random.Random(seed)
    for _ in range(search_rounds):
        layout = search.descend(search.kick(best, rng))
        if search.peak(layout) < search.peak(best):
            best = layout
    return [sorted(ids[c] for c in clips) for clips in best]


def _lpt(sizes: list[int], ranks: int, budget: int) -> Optional[Layout]:
    """Costliest clip first, to the cheapest rank with room (empty ranks first); None if stuck."""
    cost, used, count = np.zeros(ranks), np.zeros(ranks), np.zeros(ranks, dtype=np.int64)
    held: Layout = [[] for _ in range(ranks)]
    for c in sorted(range(len(sizes)), key=lambda c: (-sizes[c], c)):
        room = used + sizes[c] <= budget
        if not room.any():
            return None
        empty = room & (count == 0)
        dest = int(np.argmax(empty)) if empty.any() else int(np.argmin(np.where(room, cost, np.inf)))
        held[dest].append(c)
        cost[dest] += sizes[c] ** 2
        used[dest] += sizes[c]
        count[dest] += 1
    return held


class _Search:
    """Descent and kicks over layouts of one set of clips."""

    def __init__(self, sizes: list[int], ranks: int, budget: int, partners: int, max_moves: int = 512):
        self.sizes, self.ranks, self.budget = sizes, ranks, budget
        self.partners, self.max_moves = partners, max_moves

    def peak(self, layout: Layout) -> int:
        return max(sum(self.sizes[c] ** 2 for c in clips) for clips in layout)

    def descend(self, start: Layout) -> Layout:
        held = [list(clips) for clips in start]
        cost = [sum(self.sizes[c] ** 2 for c in clips) for clips in held]
        used = [sum(self.sizes[c] for c in clips) for clips in held]
        for _ in range(self.max_moves):
            move = self._best_move(held, cost, used)
            if move is None:
                break
            self._apply(move, held, cost, used)
        return held

    def _best_move(self, held, cost, used):
        """(x, y, clip of x, clip of y or None) among the `partners` costliest ranks x and cheapest
        ranks y: keeps max(cost[x], cost[y]), evens the two most (largest drop of their squares)."""
        sizes, budget = self.sizes, self.budget
        by_cost = sorted(range(self.ranks), key=lambda d: (cost[d], d))
        best, best_gain = None, 0
        for x in by_cost[::-1][:self.partners]:
            for y in by_cost[:self.partners]:
                if y == x:
                    continue
                for a in held[x]:
                    sa = sizes[a]
                    for b in ([None] if len(held[x]) > 1 else []) + held[y]:  # no rank ends up empty
                        sb = 0 if b is None else sizes[b]
                        if sa <= sb or used[y] - sb + sa > budget or used[x] - sa + sb > budget:
                            continue
                        new_x, new_y = cost[x] - sa * sa + sb * sb, cost[y] - sb * sb + sa * sa
                        if new_y > cost[x]:
                            continue
                        gain = cost[x] ** 2 + cost[y] ** 2 - new_x ** 2 - new_y ** 2
                        if gain > best_gain:
                            best, best_gain = (x, y, a, b), gain
        return best

    def _apply(self, move, held, cost, used) -> None:
        hi, lo, a, b = move
        sa, sb = self.sizes[a], 0 if b is None else self.sizes[b]
        held[hi].remove(a)
        held[lo].append(a)
        if b is not None:
            held[lo].remove(b)
            held[hi].append(b)
        cost[hi] += sb * sb - sa * sa
        cost[lo] += sa * sa - sb * sb
        used[hi] += sb - sa
        used[lo] += sa - sb

    def kick(self, layout: Layout, rng: random.Random, swaps: int = 3) -> Layout:
        """A copy with a few random budget-respecting swaps between random pairs of ranks."""
        held = [list(clips) for clips in layout]
        if self.ranks < 2:
            return held
        used = [sum(self.sizes[c] for c in clips) for clips in held]
        for _ in range(swaps):
            x, y = rng.sample(range(self.ranks), 2)
            a, b = rng.choice(held[x]), rng.choice(held[y])
            delta = self.sizes[b] - self.sizes[a]
            if used[x] + delta <= self.budget and used[y] - delta <= self.budget:
                held[x][held[x].index(a)], held[y][held[y].index(b)] = b, a
                used[x] += delta
                used[y] -= delta
        return held
