"""Pieces of fault tolerance on one process: the non-finite guard, the watchdog's diagnosis and
exit, fault-injection parsing."""

import os
import subprocess
import sys
import time

import pytest
import torch

from litegen.parallel.distributed import DistInfo
from litegen.train import faults
from litegen.train.checkpoint import Checkpointer
from litegen.train.nonfinite import NonFiniteError, NonFiniteGuard
from litegen.train.watchdog import HANG_EXIT_CODE, laggards

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_guard_stop_raises_naming_the_step():
    guard = NonFiniteGuard("stop", 3, SINGLE)
    assert guard.allows_update(1, torch.tensor(0.5), torch.tensor(2.0))
    with pytest.raises(NonFiniteError, match=r"^step 2: non-finite loss on rank\(s\) \[0\]"):
        guard.allows_update(2, torch.tensor(float("nan")), torch.tensor(1.0))
    with pytest.raises(NonFiniteError, match=r"^step 3: finite losses, non-finite gradient norm"):
        guard.allows_update(3, torch.tensor(1.0), torch.tensor(float("inf")))


def test_guard_skip_counts_consecutive_and_resets():
    guard = NonFiniteGuard("skip", 2, SINGLE)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert not guard.allows_update(1, nan, one)
    assert guard.allows_update(2, one, one) and guard.consecutive == 0  # a good step resets the run
    assert not guard.allows_update(3, one, nan)
    with pytest.raises(NonFiniteError, match="2 consecutive steps skipped"):
        guard.allows_update(4, nan, nan)
    assert guard.skipped_total == 3


def test_guard_resumed_from_a_checkpoint_keeps_counting_the_run(tmp_path):
    guard = NonFiniteGuard("skip", 3, SINGLE)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert not guard.allows_update(1, nan, one) and not guard.allows_update(2, nan, one)
    path = Checkpointer(tmp_path, keep_last_k=0, dist_info=SINGLE).save(2, {"nonfinite": guard})
    resumed = NonFiniteGuard("skip", 3, SINGLE)
    Checkpointer(tmp_path, keep_last_k=0, dist_info=SINGLE).load(path, {"nonfinite": resumed})
    assert (resumed.consecutive, resumed.skipped_total) == (2, 2)
    with pytest.raises(NonFiniteError, match="3 consecutive steps skipped"):
        resumed.allows_update(3, nan, one)  # the third in a row, across the restart


def test_guard_without_a_norm_checks_the_loss():  # DeepSpeed: the norm comes after the step
    assert NonFiniteGuard("stop", 1, SINGLE).allows_update(1, torch.tensor(1.0), None)


def test_laggards_are_the_ranks_furthest_behind():
    assert laggards({0: (3, "forward_backward"), 1: (3, "data"), 2: (3, "optimizer")}) == [1]
    assert laggards({0: (4, "data"), 1: (3, "checkpoint")}) == [1]
    assert laggards({0: (3, "forward_backward"), 1: (3, "forward_backward")}) == [0, 1]


def test_watchdog_exits_the_process_naming_the_phase():
    code = ("import time, torch; from litegen.parallel.distributed import DistInfo;"
            "from litegen.train.watchdog import Watchdog;"
            "w = Watchdog(0.5, DistInfo(0, 1, 0, torch.device('cpu')));"
            "w.phase('checkpoint', 7); w.start(); time.sleep(30)")
    env = {**os.environ, "PYTHONPATH": REPO, "WORLD_SIZE": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == HANG_EXIT_CODE, proc.stderr[-2000:]
    assert "phase 'checkpoint' of step 7 ran" in proc.stderr and "Stalled: rank(s) [0]" in proc.stderr
    assert "time.sleep" in proc.stderr or "<string>" in proc.stderr  # the stack dump
    assert time.monotonic() - start < 25


def test_watchdog_stops_watching_when_the_loop_ends():
    from litegen.train.watchdog import Watchdog

    dog = Watchdog(0.2, SINGLE)
    with dog.watching():
        dog.phase("data", 1)
    time.sleep(0.5)  # had it kept watching, it would have ended this process
    assert dog._thread is None


def test_fault_spec_parsing(monkeypatch):
    monkeypatch.setenv("LITEGEN_FAULTS", "nan:1:3, sleep:0:2:0.01")
    faults._faults.cache_clear()
    try:
        assert torch.isnan(faults.corrupt_loss(torch.tensor(1.0), rank=1, step=3))
        assert faults.corrupt_loss(torch.tensor(1.0), rank=0, step=3) == 1.0
        faults.stall(0, 2)  # sleeps 10 ms
    finally:
        monkeypatch.delenv("LITEGEN_FAULTS")
        faults._faults.cache_clear()
    assert faults._faults() == ()
