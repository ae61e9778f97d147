"""Model registry: each family is a small record (builder, parallelism plan, FLOPs formula).

A new family adds one entry to FAMILIES; nothing here imports torch.distributed.
"""

from dataclasses import dataclass
from typing import Callable

from torch import nn

from litegen.config.model import ModelConfig
from litegen.models import cogvideox, snapvideo, vchitect, worlddreamer
from litegen.models.family_flops import (cogvideox_train_flops, snapvideo_train_flops,
                                         vchitect_train_flops, worlddreamer_train_flops)
from litegen.models.flops import wan_train_flops
from litegen.models.plan import ModelPlan
from litegen.models.wan import PLAN as WAN_PLAN, WanDiT


@dataclass(frozen=True)
class ModelFamily:
    build: Callable[[ModelConfig], nn.Module]
    plan: ModelPlan
    # (cfg, latent_shape (C, T, H, W), text_len) -> {part: FLOPs, ..., "total": FLOPs}
    train_flops: Callable[[ModelConfig, tuple[int, int, int, int], int], dict[str, int]]


FAMILIES: dict[str, ModelFamily] = {
    "wan": ModelFamily(build=WanDiT, plan=WAN_PLAN, train_flops=wan_train_flops),
    "cogvideox": ModelFamily(build=cogvideox.CogVideoX, plan=cogvideox.PLAN,
                             train_flops=cogvideox_train_flops),
    "vchitect": ModelFamily(build=vchitect.Vchitect, plan=vchitect.PLAN, train_flops=vchitect_train_flops),
    "snapvideo": ModelFamily(build=snapvideo.SnapVideo, plan=snapvideo.PLAN,
                             train_flops=snapvideo_train_flops),
    "worlddreamer": ModelFamily(build=worlddreamer.WorldDreamer, plan=worlddreamer.PLAN,
                                train_flops=worlddreamer_train_flops),
}


def model_family(cfg: ModelConfig) -> ModelFamily:
    if cfg.family not in FAMILIES:
        raise ValueError(f"model.family={cfg.family!r} is not registered; known: {sorted(FAMILIES)}")
    return FAMILIES[cfg.family]


def build_model(cfg: ModelConfig) -> nn.Module:
    """Construct on the current default device; wrap in `torch.device("meta")` for big configs."""
    return model_family(cfg).build(cfg)


def model_plan(cfg: ModelConfig) -> ModelPlan:
    return model_family(cfg).plan


def count_params(model: nn.Module) -> int:
    """Parameters counted once each (shared ones too); works on meta and on sharded models."""
    return sum(p.numel() for p in model.parameters())


def train_flops_per_sample(cfg: ModelConfig, latent_shape: tuple[int, int, int, int],
                           text_len: int) -> int:
    """Analytic forward+backward FLOPs for one sample; see litegen/models/flops.py for the rules."""
    return model_family(cfg).train_flops(cfg, latent_shape, text_len)["total"]


__all__ = ["FAMILIES", "ModelFamily", "ModelPlan", "WanDiT", "build_model", "count_params",
           "model_family", "model_plan", "train_flops_per_sample"]
