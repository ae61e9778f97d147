"""A rank that stalls (sleeps in its data phase at step 3) ends the torchrun job: non-zero exit
within train.step_timeout_s plus a margin, a message naming the stalled rank and phase, and no
process of the job left behind."""

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow

TIMEOUT_S = 4
MARGIN_S = 30  # watchdog poll + torchrun tearing down the other worker, on a loaded 2-core machine


def _tagged_pids(tag: str) -> list[int]:
    """Live processes started with LITEGEN_TEST_TAG=tag in their environment."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"LITEGEN_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_stalled_rank_ends_the_job_naming_rank_and_phase(tiny_shards, tmp_path):
    tag = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LITEGEN_TEST_TAG": tag,
           "LITEGEN_FAULTS": "sleep:1:3:300"}
    args = tiny_overrides(tiny_shards, tmp_path / "run", "train.steps=8", "train.sample.enabled=false",
                          f"train.step_timeout_s={TIMEOUT_S}", "parallel.timeout_s=120",
                          "data.batch_size=2", "train.log_every_steps=1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "litegen.train", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    ended = time.time()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    stall = re.search(r"fault: rank 1 sleeps 300 s in the data phase of step 3 at ([\d.]+)", out)
    assert stall, out[-3000:]
    assert ended - float(stall.group(1)) < TIMEOUT_S + MARGIN_S
    message = re.search(r"error: watchdog on rank (\d): .*Stalled: rank\(s\) \[1\] in phase 'data' of step 3", out)
    assert message, out[-3000:]
    assert "exitcode  : 124" in out or "exitcode: 124" in out.replace(" ", ""), out[-2000:]
    time.sleep(1)
    assert _tagged_pids(tag) == []  # no orphan worker (or DataLoader worker) survives the job
