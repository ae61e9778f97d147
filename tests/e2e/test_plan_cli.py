"""The dry run plans full-size models for worlds this machine does not have, without weights."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def run_plan(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "litegen.tools.plan", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def bytes_line(stdout: str, name: str) -> int:
    return int(re.search(rf"^  {name} +([\d,]+) ", stdout, re.M).group(1).replace(",", ""))


def test_plan_wan_1_3b_on_256_ranks_with_2d_sp():
    proc = run_plan("world_size=256", "model=wan_1_3b", "parallel.sp_ulysses=4", "parallel.sp_ring=2",
                    "batch=1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "params: 1418996800" in out.splitlines()
    assert "mesh: world 256 = dp_replicate(1) x dp_shard(32) x sp_ring(2) x sp_ulysses(4)" in out
    assert "32760 per clip" in out and "4095 per rank" in out
    assert "q/k/v per rank: [1, 4095, 12, 128]" in out
    assert "after Ulysses all-to-all: [1, 16380, 3, 128]" in out
    # FSDP2 over all 256 ranks: a 1/256 share of fp32 parameters, plus per-tensor padding.
    share = 1418996800 * 4 / 256
    assert share <= bytes_line(out, "parameters") <= 1.1 * share
    assert bytes_line(out, "optimizer") == 2 * bytes_line(out, "parameters")


def test_plan_refuses_heads_that_do_not_split():
    proc = run_plan("world_size=256", "model=wan_1_3b", "parallel.sp_ulysses=8")
    assert proc.returncode == 2
    assert "12 heads cannot split 8 ways" in proc.stderr and "use sp_ulysses=4, sp_ring=2" in proc.stderr


def test_plan_wan_14b_deepspeed_zero3():
    proc = run_plan("world_size=64", "model=wan_14b", "parallel=deepspeed", "parallel.zero_stage=3")
    assert proc.returncode == 0, proc.stderr
    assert "params: 14288491584" in proc.stdout.splitlines()
    assert bytes_line(proc.stdout, "parameters") == 4 * -(-14288491584 // 64)
