"""The seam between network and training objective: `objective.loss(model, latents, cond, gen)`."""

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch
from torch import nn


@dataclass
class Cond:
    """Conditioning passed to the network alongside the noised latents."""

    context: torch.Tensor  # [B, L, D] text embeddings
    context_mask: torch.Tensor  # [B, L] bool, True = real token
    actions: Optional[torch.Tensor] = None  # [B, T', action_dim] per token frame (WorldDreamer)

    def __len__(self) -> int:
        return self.context.shape[0]

    def cat(self, other: "Cond") -> "Cond":
        """Stack two conditions along the batch (conditional + unconditional CFG pass)."""
        actions = None
        if self.actions is not None or other.actions is not None:
            if self.actions is None or other.actions is None:
                raise ValueError("cannot batch a condition with actions and one without")
            actions = torch.cat([self.actions, other.actions])
        return Cond(torch.cat([self.context, other.context]),
                    torch.cat([self.context_mask, other.context_mask]), actions)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what backward() is called on
    metrics: dict[str, float] = field(default_factory=dict)  # detached extras for logging


class Objective(Protocol):
    def loss(self, model: nn.Module, latents: torch.Tensor, cond: Cond, generator: torch.Generator,
             stratum: tuple[int, int] = (0, 1)) -> LossOutput:
        """stratum (index, count): this micro-batch's place among all micro-batches of the
        optimizer step over every data-parallel rank (dp_rank * accum + micro, dp * accum); only
        objectives that stratify their draws across the step use it (v_prediction)."""

    def sample(self, model: nn.Module, noise: torch.Tensor, cond: Cond, null_cond: Cond,
               steps: int, guidance_scale: float,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latents shaped like `noise`; stochastic samplers draw from `generator`."""
