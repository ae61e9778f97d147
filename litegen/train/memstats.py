"""Peak memory per log window: CUDA memory allocated by tensors, or the process's resident set."""

import resource
from pathlib import Path

import torch
import torch.distributed as dist

from litegen.parallel.distributed import is_distributed

_GIB = 2**30


def peak_resident_bytes() -> int:
    """This process's peak resident set. Linux: VmHWM of its own address space. Not ru_maxrss:
    that carries over exec from the parent (a process started by a 1 GiB pytest reports >= 1 GiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of the busiest rank since the last call: CUDA memory allocated by tensors on a
    GPU; on CPU the process's peak resident set (it never resets, so it is the peak so far)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        peak = peak_resident_bytes()
    if is_distributed():
        t = torch.tensor([float(peak)], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        peak = t.item()
    return peak / _GIB
