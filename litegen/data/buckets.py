"""Two pure, deterministic stream stages of the loader: a seeded shuffle buffer and shape buckets.

They look only at sample metadata, so a resuming loader can replay them without decoding tensors.
"""

from typing import Callable, Hashable, Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")


def shuffle_stream(items: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """Reservoir-style shuffle: hold buffer_size items, emit a random one as each new one arrives.

    The order depends only on the input order and rng, so replaying it reproduces it exactly.
    """
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        j = int(rng.integers(buffer_size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def bucket_stream(items: Iterable[T], batch_size: int, key: Callable[[T], Hashable]) -> Iterator[list[T]]:
    """Group items into lists of batch_size sharing key(item), emitted as soon as one fills.

    Partly filled buckets are dropped when the input ends: carrying them into the next epoch would
    make an epoch's batches depend on the one before, and resume would have to replay both.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: dict[Hashable, list[T]] = {}
    for item in items:
        bucket = pending.setdefault(key(item), [])
        bucket.append(item)
        if len(bucket) == batch_size:
            del pending[key(item)]
            yield bucket
