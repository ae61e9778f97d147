"""What a non-finite loss or gradient does: every rank decides together, before the update.

One all-reduce per step carries each rank's "my loss is non-finite" flag and the (already global)
gradient norm's, so all ranks take the same branch and the error can name the ranks at fault.
Policy `stop` raises before the optimizer touches the weights (the last checkpoint stays the last
good state); `skip` drops the update on every rank and stops after `max_consecutive` in a row.
"""

import logging
import math
from typing import Optional

import torch
import torch.distributed as dist

from litegen.parallel.distributed import DistInfo, is_distributed

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Training stopped on a non-finite loss or gradient; the message names the step."""


def _bad(value: Optional[torch.Tensor]) -> float:
    return 0.0 if value is None or math.isfinite(float(value)) else 1.0


class NonFiniteGuard:
    def __init__(self, policy: str, max_consecutive: int, dist_info: DistInfo):
        self.policy, self.max_consecutive, self.dist = policy, max_consecutive, dist_info
        self.consecutive = 0
        self.skipped_total = 0

    # Checkpointed, so a restart inside a run of bad steps still stops after max_consecutive.
    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive, self.skipped_total = int(state["consecutive"]), int(state["skipped_total"])

    def allows_update(self, step: int, loss_sum: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> bool:
        """True: apply the update of `step`. False (skip): drop it. Raises under `stop`. Collective."""
        world = self.dist.world_size
        local = torch.zeros(world + 1, dtype=torch.float64)
        local[self.dist.rank] = _bad(loss_sum)
        local[world] = _bad(grad_norm)
        if is_distributed():
            local = local.to(self.dist.device)  # the training group's device (NCCL: CUDA)
            dist.all_reduce(local)
        flags = local.tolist()
        bad_ranks = [r for r in range(world) if flags[r] > 0]
        if not bad_ranks and flags[world] == 0:
            self.consecutive = 0
            return True
        what = (f"non-finite loss on rank(s) {bad_ranks}" if bad_ranks else "finite losses") + \
               (", non-finite gradient norm" if flags[world] > 0 else "")
        if self.policy == "stop":
            raise NonFiniteError(f"step {step}: {what}; stopped before the optimizer update, so the "
                                 "weights and the last checkpoint are the last good state "
                                 "(train.nonfinite=skip drops such steps instead)")
        self.consecutive += 1
        self.skipped_total += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(f"step {step}: {what}; {self.consecutive} consecutive steps skipped "
                                 f"(train.max_consecutive_skips={self.max_consecutive}): stopping")
        log.warning("step %d: %s; update skipped on every rank (%d in a row)", step, what, self.consecutive)
        return False
