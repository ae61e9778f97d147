"""Deterministic, layout-independent weight init shared by every model family.

Each parameter is drawn full-size on CPU from a generator seeded by (seed, canonical name), so the
same seed gives the same weights whether the model is built on CPU, materialised from meta, or
sharded (litegen/parallel passes a `write` that keeps only the local shard).
"""

import hashlib
import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

# (module, canonical parameter name, shape, generator) -> float32 CPU tensor of that shape
InitRule = Callable[[nn.Module, str, tuple[int, ...], torch.Generator], Tensor]
Writer = Callable[[nn.Parameter, Tensor], None]


def canonical_name(name: str) -> str:
    """Drop wrapper components (`_checkpoint_wrapped_module`, `_orig_mod`, ...) from a name.

    Checkpoint wrappers and torch.compile insert them; stripping keeps init (and thus the seed ->
    weights mapping) identical whether or not the model was wrapped first.
    """
    return ".".join(part for part in name.split(".") if part and not part.startswith("_"))


def param_generator(seed: int, name: str) -> torch.Generator:
    # sha256 rather than hash(): Python salts str hashes per process, ranks must agree.
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def xavier_uniform(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    # Conv weights are treated as flattened [out, in * kernel] linears, as Wan initialises them.
    fan_out, fan_in = shape[0], math.prod(shape[1:])
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


def normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    return torch.empty(shape).normal_(0.0, std, generator=gen)


def norm_value(name: str, shape: tuple[int, ...]) -> Tensor:
    """LayerNorm/RMSNorm: weight 1, bias 0."""
    return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)


@torch.no_grad()
def init_parameters(model: nn.Module, rule: InitRule, seed: int, write: Optional[Writer] = None) -> None:
    """Fill every parameter of `model` with `rule(module, name, shape, generator)`."""
    write = write or (lambda param, value: param.copy_(value))
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            name = canonical_name(f"{module_name}.{param_name}")
            write(param, rule(module, name, tuple(param.shape), param_generator(seed, name)))
