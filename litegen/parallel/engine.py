"""The backend-specific half of a training step: backward, accumulation, clip + optimizer step.

The trainer talks to one of these and never to DDP/FSDP/DeepSpeed directly. `TorchSteps`
covers one process, DDP and FSDP2 (plain autograd + torch.optim); DeepSpeed has its own in
litegen/parallel/deepspeed.py with the same methods.
"""

import contextlib
import math
from typing import Any, ContextManager

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from litegen.train.checkpoint import ModelOptimState


class TorchSteps:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer  # model: what forward goes through

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def accumulate(self, last: bool) -> ContextManager:
        """Context for one micro-batch's backward; only the last one of a step syncs gradients."""
        if last or not hasattr(self.model, "no_sync"):
            # FSDP2 reduce-scatters every micro-batch on purpose: skipping it would keep a full,
            # unsharded gradient per rank until the last micro-batch.
            return contextlib.nullcontext()
        return self.model.no_sync()  # DDP: all-reduce once, on the last micro-batch

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self, clip_norm: float) -> Tensor:
        """Clip (clip_norm <= 0: only measure) and step; returns the pre-clip gradient norm."""
        norm = self.clip(clip_norm)
        self.apply()
        return norm

    def clip(self, clip_norm: float) -> Tensor:
        """Clip (clip_norm <= 0: only measure); the pre-clip norm, known before the update."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm > 0 else math.inf)
        if isinstance(norm, DTensor):  # FSDP2: the norm of sharded gradients, reduced on demand
            norm = norm.full_tensor()
        return norm

    def apply(self) -> None:
        """The optimizer update (after clip, once the step is known to be finite)."""
        self.optimizer.step()

    def checkpoint_state(self) -> Any:
        return ModelOptimState(self.model, self.optimizer)

