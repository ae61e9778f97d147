"""Training objectives, separate from the networks they train. Chosen by `objective.name`."""

from litegen.objectives.base import Cond, LossOutput, Objective
from litegen.objectives.edm import EDM
from litegen.objectives.masked_tokens import MaskedTokens
from litegen.objectives.rectified_flow import RectifiedFlow
from litegen.objectives.v_prediction import VPrediction

OBJECTIVES = {"rectified_flow": RectifiedFlow, "v_prediction": VPrediction, "edm": EDM,
              "masked_tokens": MaskedTokens}


def build_objective(cfg) -> Objective:
    return OBJECTIVES[cfg.name](cfg)


__all__ = ["Cond", "EDM", "LossOutput", "MaskedTokens", "Objective", "RectifiedFlow", "VPrediction",
           "build_objective"]
