"""Training objectives, separate from the networks they train. Chosen by `objective.name`."""

from litegen.objectives.base import Cond, LossOutput, Objective
from litegen.objectives.rectified_flow import RectifiedFlow

OBJECTIVES = {"rectified_flow": RectifiedFlow}


def build_objective(cfg) -> Objective:
    return OBJECTIVES[cfg.name](cfg)


__all__ = ["Cond", "LossOutput", "Objective", "RectifiedFlow", "build_objective"]
