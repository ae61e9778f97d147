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


def attempt_prefix() -> str:
    """A store-key prefix unique to this torchrun attempt ("" where none is needed).

    torchrun's agent keeps one TCP store for all restarts of a job (TORCHELASTIC_USE_AGENT_STORE)
    and never clears it, so a restarted worker can read a key its dead predecessor wrote, e.g. a
    peer address for gloo's connectFullMesh, and time out connecting to it (pytorch#135712).
    On one node every worker of an attempt has the same TORCHELASTIC_RESTART_COUNT, so it names
    the attempt. Across nodes the counts can differ (an agent that restarts because another
    node failed does not count it); there launch/torchrun.sh gives each attempt a fresh store
    instead (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) and no prefix is used.
    """
    if not _agent_store_shared() or _multi_node():
        return ""
    return f"litegen/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def _agent_store_shared() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _multi_node() -> bool:
    return os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE")


def warn_if_restarts_share_store() -> None:
    if _agent_store_shared() and _multi_node() and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        print("warning: torchrun --max-restarts across nodes with the agent's shared store can "
              "hand a restarted worker a dead worker's address (pytorch#135712); launch with "
              "launch/torchrun.sh or set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun",
              file=sys.stderr, flush=True)


def job_store(timeout_s: float, wait_for_workers: bool = True):
    """A client of the job's c10d store (torchrun's agent or rank 0 hosts it), keys scoped to
    this attempt; None in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "MASTER_ADDR" not in os.environ:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=wait_for_workers)
    prefix = attempt_prefix()
    return dist.PrefixStore(prefix, store) if prefix else store


def init_distributed(dist_backend: str = "auto", timeout_s: int = 600) -> DistInfo:
    """Join the process group torchrun/slurm set up through env vars; a single process skips it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = dist_backend if dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        warn_if_restarts_share_store()
        # Our own store client only where torchrun's needs its keys scoped to the attempt.
        store = job_store(timeout_s) if attempt_prefix() else None
        # A finite timeout turns a dead peer into an error instead of gloo's 30-minute wait.
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None,
                                store=store, rank=rank if store else -1,
                                world_size=world_size if store else -1)
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
