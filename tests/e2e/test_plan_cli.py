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


# Every family's full-size config with a sequence-parallel layout its attention kinds allow.
FAMILY_PLANS = {
    "cogvideox_2b": ["parallel.sp_ulysses=2", "parallel.sp_ring=2"],  # 30 heads
    "cogvideox_5b": ["parallel.sp_ulysses=4", "parallel.sp_ring=2"],
    "vchitect_2b": ["parallel.sp_ulysses=8"],
    "snapvideo": ["parallel.sp_ulysses=4", "parallel.sp_ring=2"],
    "worlddreamer": ["parallel.sp_ulysses=8"],
}

# One subprocess plans them all (a fresh fake world each), then rebuilds each planned model to
# check nothing left the meta device, and reports its peak memory.
FAMILY_SCRIPT = """
import json, resource, sys
import torch.distributed as dist
from litegen.config import ConfigError
from litegen.parallel.dims import ParallelDims
from litegen.tools.plan import PlanRequest, build_planned_model, compose_for_plan, plan

report = {}
for name, layout in json.loads(sys.argv[1]).items():
    overrides = [f"model={name}", *layout]
    lines = plan(PlanRequest(64, 0, None, 1, overrides))
    cfg = compose_for_plan(overrides)
    dims = ParallelDims.from_config(cfg.parallel, 64, num_heads=cfg.model.num_heads)
    dims.build_mesh("cpu")
    net = build_planned_model(cfg, dims, 0)
    on_meta = all(p.is_meta for p in net.parameters())
    dist.destroy_process_group()
    report[name] = {"lines": lines, "on_meta": on_meta}
try:
    plan(PlanRequest(64, 0, None, 1, ["model=vchitect_2b", "parallel.sp_ring=2"]))
except ConfigError as e:
    report["refused"] = str(e)
report["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(report))
"""


def test_plan_every_family_full_size_on_meta():
    import json

    import torch

    from litegen.models import build_model, count_params
    from litegen.tools.plan import compose_for_plan

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FAMILY_SCRIPT, json.dumps(FAMILY_PLANS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, layout in FAMILY_PLANS.items():
        with torch.device("meta"):
            expected = count_params(build_model(compose_for_plan([f"model={name}"]).model))
        lines = report[name]["lines"]
        assert f"params: {expected}" in lines, (name, lines[:3])
        assert report[name]["on_meta"], name
        ring = next(o for o in [*layout, "parallel.sp_ring=1"] if "sp_ring" in o).split("=")[1]
        assert any(f"x sp_ring({ring}) x" in line for line in lines), (name, lines)
    # 5 full-size families (1.7B to 5.6B parameters, 22 GB in fp32 for the largest): planned
    # without ever holding one in memory.
    assert report["maxrss_kib"] < 3 * 2**20, report["maxrss_kib"]
    assert "model.family=vchitect" in report["refused"] and "Ulysses only" in report["refused"]
