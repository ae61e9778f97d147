"""Process-group lifecycle and the few collectives the trainer needs, safe in one process too."""

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(dist_backend: str = "auto", timeout_s: int = 600) -> DistInfo:
    """Join the process group torchrun/slurm set up through env vars; a single process skips it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = dist_backend if dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        # A finite timeout turns a dead peer into an error instead of gloo's 30-minute wait.
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device, group=None) -> list[float]:
    """Sum a few scalars over the ranks of `group` (default: all) in one collective."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return t.tolist()


def shutdown(exit_code: int = 0, exit_process: bool = True) -> None:
    """Leave the process group and exit.

    Multi-process runs exit with os._exit after destroy_process_group: letting the interpreter
    tear down gloo threads aborts a fraction of runs with SIGABRT (see notes/cpu-stack.md).
    exit_process=False returns instead, for a caller that must run on (submitit writes each
    task's result after the function returns).
    """
    if not is_distributed():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    if exit_process:
        os._exit(exit_code)
