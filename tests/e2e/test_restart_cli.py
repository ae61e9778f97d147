"""`torchrun --max-restarts=1`: one worker is SIGKILLed at step 5 (after the step-4 checkpoint); the
elastic agent restarts the job, which resumes from the newest complete checkpoint and reaches the
target step with the same losses as an uninterrupted run."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, read_metrics, tiny_overrides

pytestmark = pytest.mark.slow

STEPS = 6


def torchrun(shards: str, run_dir, faults: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LITEGEN_FAULTS": faults}
    args = tiny_overrides(shards, run_dir, f"train.steps={STEPS}", "train.ckpt_every_steps=2",
                          "train.sample.enabled=false", "data.batch_size=2", "train.log_every_steps=1",
                          "parallel=ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--max-restarts=1", "-m", "litegen.train", *args]
    return subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=400)


def test_killed_worker_restarts_and_matches_uninterrupted_run(tiny_shards, tmp_path):
    straight = torchrun(tiny_shards, tmp_path / "straight", "")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = torchrun(tiny_shards, tmp_path / "killed", "kill:1:5")
    out = killed.stdout + killed.stderr
    assert killed.returncode == 0, out[-4000:]
    assert "fault: rank 1 is killed (SIGKILL) at step 5" in out  # the fault really fired
    assert "resumed from" in out and "at step 4" in out, out[-3000:]
    want = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight")}
    got = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "killed")}
    assert sorted(got) == list(range(1, STEPS + 1))  # records after the checkpoint were dropped, then redone
    assert got == want
