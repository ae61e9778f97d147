"""Cost of the per-step pre-emption agreement (`Preemption.agreed_stop`: one int all-reduce).

    torchrun --standalone --nproc-per-node 2 benchmarks/preemption.py [--calls 2000]

Uses the trainer's own process-group setup: gloo on CPU; on GPUs NCCL is the default group and
the flag goes through the separate gloo group `cpu_group()` creates (no GPU stream sync). Rank 0
prints the median and 99th percentile per call, after 100 warm-up calls. No signal is sent, so
every call is the common case: all ranks agree to continue.
"""

import argparse
import statistics
import time

import torch.distributed as dist

from litegen.parallel.distributed import init_distributed, shutdown
from litegen.train.preemption import Preemption, cpu_group


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    info = init_distributed("auto", timeout_s=120)
    if not dist.is_initialized():
        raise SystemExit("run under torchrun with --nproc-per-node >= 2")
    preemption = Preemption([], cpu_group())
    for _ in range(100):
        preemption.agreed_stop()
    times_us = []
    for _ in range(args.calls):
        start = time.perf_counter()
        stop = preemption.agreed_stop()
        times_us.append((time.perf_counter() - start) * 1e6)
        assert not stop
    if info.is_main:
        times_us.sort()
        print(f"agreed_stop over {dist.get_world_size()} ranks ({dist.get_backend()} default group, "
              f"device {info.device.type}): median {statistics.median(times_us):.0f} us, "
              f"p99 {times_us[int(0.99 * len(times_us))]:.0f} us per call ({args.calls} calls)")
    shutdown(0)


if __name__ == "__main__":
    main()
