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
