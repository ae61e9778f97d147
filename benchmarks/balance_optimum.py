"""How far litegen.data.balance.balance_clips is from the best possible plan, on the packed stream of
benchmarks/data.py (same data, ranks, steps and token budget).

The optimum of one step is an integer program over clip-size classes (clips of one size are
interchangeable): x[r][s] clips of size s on rank r, every clip placed, every rank non-empty and
within the token budget, minimise the largest sum(s^2). Solved with PuLP's bundled CBC, which is
not a LiteGen dependency: `pip install pulp` first.

    python benchmarks/balance_optimum.py            # steps where our plan exceeds 1.04
"""

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import torch

from data import packed_steps, packing_args, render_shards
from litegen.data.balance import balance_clips


def optimum(step: list[list[int]], budget: int) -> float:
    import pulp

    ranks, count = len(step), Counter(s for rank in step for s in rank)
    prob = pulp.LpProblem("balance", pulp.LpMinimize)
    x = {(r, s): pulp.LpVariable(f"x_{r}_{s}", 0, n, cat="Integer") for r in range(ranks) for s, n in count.items()}
    peak = pulp.LpVariable("peak")
    prob += peak
    for s, n in count.items():
        prob += pulp.lpSum(x[r, s] for r in range(ranks)) == n
    for r in range(ranks):
        prob += pulp.lpSum(x[r, s] * s for s in count) <= budget
        prob += pulp.lpSum(x[r, s] * s * s for s in count) <= peak
        prob += pulp.lpSum(x[r, s] for s in count) >= 1
    prob.solve(pulp.PULP_CBC_CMD(msg=0, timeLimit=120))
    return pulp.value(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    packing_args(parser)
    parser.add_argument("--above", type=float, default=1.04, help="solve the steps whose plan exceeds this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = render_shards(Path(tmp) / "bench", args.clips)
        steps = packed_steps(shards, args.ranks, args.steps, args.token_budget)
    print("step  ours (max/mean)  optimum (max/mean)")
    for k, step in enumerate(steps):
        mean = sum(s * s for rank in step for s in rank) / len(step)
        plan = balance_clips(step, args.token_budget)
        ours = max(sum(step[r][i] ** 2 for r, i in rank) for rank in plan) / mean
        if ours > args.above:
            print(f"{k:4d}  {ours:15.4f}  {optimum(step, args.token_budget) / mean:18.4f}")


if __name__ == "__main__":
    main()
