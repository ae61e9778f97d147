"""Exponential moving average of the weights, kept in fp32 beside the model.

Follows whatever holds the weights: plain or FSDP2-sharded parameters (the shadow is then
sharded the same way, DTensors in, DTensors out), or, through `tensors`, another per-rank view
such as DeepSpeed ZeRO-3 partitions (then `per_rank` is True and each rank checkpoints its own).
"""

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import nn

NamedTensors = Callable[[nn.Module], dict[str, torch.Tensor]]


def _trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class EMA:
    def __init__(self, model: nn.Module, decay: float, tensors: Optional[NamedTensors] = None):
        self.decay = decay
        self.per_rank = tensors is not None
        self.tensors = tensors or _trainable_parameters
        current = self.tensors(model)
        self.names = list(current)
        self.shadow = {n: current[n].detach().float().clone() for n in self.names}

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        current = self.tensors(model)
        return [current[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = [p.detach().float() for p in self._params(model)]
        torch._foreach_lerp_(list(self.shadow.values()), current, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for name in self.names:
            self.shadow[name].copy_(state[name])

    @contextmanager
    @torch.no_grad()
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load EMA weights into `model` (for sampling), restoring them afterwards."""
        params = self._params(model)
        backup = [p.detach().clone() for p in params]
        for p, name in zip(params, self.names):
            p.copy_(self.shadow[name])
        try:
            yield model
        finally:
            for p, saved in zip(params, backup):
                p.copy_(saved)
