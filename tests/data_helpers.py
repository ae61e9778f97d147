"""Helpers shared by the data tests: stepping loaders through one epoch, stopping and resuming."""

import itertools
import json


def epoch_keys(loaders: list, epoch: int, units_per_epoch: int, limit: int = 400) -> list[str]:
    """Keys of `epoch` delivered by stepping `loaders` (one per dp rank) in lock step, until no
    reader of any of them holds or will read a unit of that epoch (single-source datasets:
    units [epoch * units_per_epoch, (epoch + 1) * units_per_epoch) are that epoch)."""
    end = (epoch + 1) * units_per_epoch
    keys, iters = [], [iter(x) for x in loaders]
    for _ in range(limit):
        for it in iters:
            batch = next(it)
            keys += [k for k, e in zip(batch["keys"], batch["epochs"]) if e == epoch]
        readers = [r for x in loaders for r in x.state_dict()["readers"]]
        if all(r["next_unit"] >= end and all(u >= end for u, _ in r["queue"] + r["shuffle"] + r["pool"])
               for r in readers):
            return keys
    raise AssertionError(f"epoch {epoch} did not finish within {limit} steps")


def stop_and_resume(build, n: int, m: int) -> tuple[list[dict], list[dict], list[dict], object]:
    """An uninterrupted stream of n + m batches, the first n of a loader stopped there, and m more
    from a new loader resumed from its state (passed through JSON, as a checkpoint holds it).
    Returns (reference, first, resumed, the stopped loader)."""
    reference = list(itertools.islice(iter(build()), n + m))
    stopped = build()
    first = list(itertools.islice(iter(stopped), n))
    resumed = build()
    resumed.load_state_dict(json.loads(json.dumps(stopped.state_dict())))
    return reference, first, list(itertools.islice(iter(resumed), m)), stopped
