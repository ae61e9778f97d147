"""Per-step randomness derived from (seed, rank, step, micro-step): nothing to save, exact on resume."""

import hashlib

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that changes completely when any part changes (unlike seed + rank + step)."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def step_generator(seed: int, rank: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """Generator for one micro-step's noise, timesteps and caption dropout."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, rank, step, micro))
    return gen


def micro_batch_generator(seed: int, step: int, dp_rank: int, micro: int, accum: int,
                          device: torch.device) -> torch.Generator:
    """Generator for one micro-batch, keyed by its global index dp_rank * accum + micro.

    Sequence-parallel peers share a dp_rank, so they draw the same noise for their shared sample;
    and one process accumulating k micro-batches draws what k data-parallel ranks would.
    """
    return step_generator(seed, dp_rank * accum + micro, step, 0, device)
