"""Run a function on N gloo ranks (spawned processes) and collect what each rank returns.

Workers follow the two rules in notes/cpu-stack.md: a 60 s collective timeout (a dead peer fails
the test instead of hanging it) and barrier -> destroy_process_group -> os._exit at the end (the
interpreter's own teardown of gloo threads aborts a fraction of runs).
"""

import os
import queue as queue_module
import time
import socket
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp

TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, args: tuple, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # 2 cores shared by up to 4 ranks
    code = 0
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=TIMEOUT_S))
        queue.put((rank, "ok", fn(*args)))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # report anything, including a failed assert, to the parent
        queue.put((rank, "error", traceback.format_exc()))
        code = 1
    queue.close()
    queue.join_thread()  # os._exit skips the queue's feeder thread: flush the result first
    os._exit(code)


def _check_alive(procs, results: dict, deadline: float) -> None:
    """Fail fast when a rank died without reporting (crash at start-up, killed) or time is up."""
    for rank, p in enumerate(procs):
        if rank not in results and p.exitcode is not None:
            raise RuntimeError(f"rank {rank} exited with code {p.exitcode} without a result")
    if time.monotonic() > deadline:
        raise TimeoutError(f"ranks {sorted(set(range(len(procs))) - set(results))} gave no result in time")


def run_ranks(fn: Callable, world: int, *args: Any, timeout_s: float = 600) -> list[Any]:
    """fn(*args) on `world` gloo ranks; returns [result of rank 0, rank 1, ...] or raises."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world:
            try:
                rank, status, value = queue.get(timeout=1.0)
            except queue_module.Empty:
                _check_alive(procs, results, deadline)
                continue
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


def extensions_dir() -> str:
    """DeepSpeed JIT-builds a shm comm op on first init (~30 s): build once, into the ignored
    .torch_extensions/ of the checkout, and reuse it in every later test run."""
    return os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".torch_extensions"))
