"""Fault injection for the fault-tolerance tests: faults named in $LITEGEN_FAULTS, else nothing.

`LITEGEN_FAULTS="nan:1:3,sleep:1:3:600"`: `nan:RANK:STEP` makes that rank's loss non-finite at
that step (it flows through backward like a real overflow); `sleep:RANK:STEP:SECONDS` stalls that
rank in the data phase of that step (a hung filesystem read); `kill:RANK:STEP` SIGKILLs that rank
in the data phase of that step, on the first attempt of a torchrun job only (a lost node, not a
bug that would recur after `--max-restarts`). Steps count from 1.
"""

import os
import signal
import sys
import time
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _faults() -> tuple[tuple[str, int, int, float], ...]:
    spec = os.environ.get("LITEGEN_FAULTS", "").strip()
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, rank, step, *rest = item.split(":")
        faults.append((kind, int(rank), int(step), float(rest[0]) if rest else 0.0))
    return tuple(faults)


def _active(kind: str, rank: int, step: int):
    return [f for f in _faults() if f[0] == kind and f[1] == rank and f[2] == step]


def corrupt_loss(loss: torch.Tensor, rank: int, step: int) -> torch.Tensor:
    return loss * float("nan") if _active("nan", rank, step) else loss


def stall(rank: int, step: int) -> None:
    for _, _, _, seconds in _active("sleep", rank, step):
        print(f"fault: rank {rank} sleeps {seconds:g} s in the data phase of step {step} "
              f"at {time.time():.3f}", file=sys.stderr, flush=True)
        time.sleep(seconds)


def kill(rank: int, step: int) -> None:
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if _active("kill", rank, step) and first_attempt:
        print(f"fault: rank {rank} is killed (SIGKILL) at step {step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
