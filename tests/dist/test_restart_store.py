"""A torchrun restart reuses the agent's c10d store, which still holds the dead attempt's keys
(pytorch#135712). Replayed deterministically: attempt 0 runs to completion against a store this
test hosts, then attempt 1 starts with rank 1 late, so rank 0 would read rank 1's stale gloo
address (the CI failure this replays) if keys were not scoped to the attempt, and time out
connecting to a closed port."""

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
import torch.distributed as dist
from conftest import REPO

pytestmark = pytest.mark.slow

WORKER = """
import os, sys, time
import torch, torch.distributed as dist
from litegen.parallel.distributed import init_distributed, shutdown
if os.environ["RANK"] == "1":
    time.sleep(float(os.environ["RANK1_DELAY_S"]))
info = init_distributed("gloo", timeout_s=int(os.environ["INIT_TIMEOUT_S"]))
t = torch.tensor([info.rank + 1.0])
dist.all_reduce(t)
assert t.item() == 3.0, t
print("reduced", t.item(), flush=True)
shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_attempt(port: int, restart_count: int, rank1_delay_s: float) -> list[subprocess.CompletedProcess]:
    procs = []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": str(restart_count),
               "TORCHELASTIC_MAX_RESTARTS": "1", "RANK1_DELAY_S": str(rank1_delay_s),
               "INIT_TIMEOUT_S": "20"}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]


def test_restarted_attempt_ignores_the_dead_attempts_store_keys():
    port = free_port()
    agent_store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                                timeout=timedelta(seconds=60))  # the agent's: outlives attempts
    for restart_count, delay_s in ((0, 0.0), (1, 3.0)):
        results = run_attempt(port, restart_count, delay_s)
        for rank, r in enumerate(results):
            assert r.returncode == 0, f"attempt {restart_count} rank {rank}:\n{r.stderr[-3000:]}"
            assert "reduced 3.0" in r.stdout
    agent_store.set("done", "1")  # the server lived through both attempts, as the agent's does
