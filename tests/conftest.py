"""Shared fixtures: a small generated dataset (once per session) and a CLI runner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from litegen.config import SyntheticDataConfig, VideoEncoderConfig
from litegen.data.generate import generate_synthetic_dataset
from litegen.encoders import build_video_encoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> str:
    """64 clips of the default shapes in 4 shards; returns the shard glob."""
    out = tmp_path_factory.mktemp("data") / "shapes"
    cfg = SyntheticDataConfig(num_clips=64, clips_per_shard=16,
                              shapes=[[8, 32, 32], [8, 32, 48]])
    generate_synthetic_dataset(cfg, out, build_video_encoder(VideoEncoderConfig()))
    return str(out / "shard-*.tar")


def tiny_overrides(shards: str, run_dir: Path, *extra: str) -> list[str]:
    """The tiny experiment, made quick: existing shards, no wandb, a short sample."""
    return ["experiment=tiny", f"data.shards={shards}", "data.generate_if_missing=false",
            "logging.wandb_mode=disabled", "train.sample.steps=4", f"hydra.run.dir={run_dir}",
            *extra]


def run_cli(args: list[str], cwd: Path, nproc: int = 1, timeout_s: int = 300) -> subprocess.CompletedProcess:
    """`python -m litegen.train ARGS` (under torchrun when nproc > 1); fails the test on error."""
    launcher = [sys.executable, "-m", "litegen.train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={nproc}", "-m", "litegen.train"]
    # One thread per process: 2 cores, and oversubscription makes multi-rank tests crawl.
    # PYTHONPATH: the subprocess runs from a temp dir and must import this checkout's litegen.
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(launcher + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        pytest.fail(f"litegen.train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
