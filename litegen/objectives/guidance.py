"""Classifier-free guidance: caption dropout during training, guided prediction at sampling."""

import torch
from torch import nn

from litegen.objectives.base import Cond


def drop_captions(captions: list[str], prob: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by "" (the null condition) with probability `prob`."""
    if prob <= 0.0:
        return list(captions)
    drop = torch.rand(len(captions), generator=generator, device=generator.device) < prob
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


def guided_prediction(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond,
                      null_cond: Cond, scale: float) -> torch.Tensor:
    """pred_uncond + scale * (pred_cond - pred_uncond), both halves in one batched call.

    Any output affine in the clean data given (x_t, t) - velocity, noise or data - guides alike.
    """
    if scale == 1.0:
        return model(x, t, cond.context, cond.context_mask)
    both = cond.cat(null_cond)
    pred = model(torch.cat([x, x]), torch.cat([t, t]), both.context, both.context_mask)
    pred_cond, pred_uncond = pred.chunk(2)
    return pred_uncond + scale * (pred_cond - pred_uncond)
