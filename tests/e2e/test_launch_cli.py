"""End-to-end launch paths without a scheduler: launch/torchrun.sh stopped by a pre-emption
signal and resumed, wandb offline files read back (metrics, sample videos, resumed run id),
and a local Hydra sweep with one run directory per job."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, read_metrics, run_cli, tiny_overrides

import wandb_offline
from litegen.data.video_io import read_video

pytestmark = pytest.mark.slow


def launch_env(nproc: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable,
            "NPROC_PER_NODE": str(nproc), "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wandb_offline_mode(args: list[str]) -> list[str]:
    return [a for a in args if a != "logging.wandb_mode=disabled"] + ["logging.wandb_mode=offline"]


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended early ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no step {step} in {path} after {timeout_s} s")


def test_torchrun_sh_checkpoints_on_sigusr1_exits_75_and_resumes(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    common = ["train.log_every_steps=1", "train.ckpt_every_steps=1000", "train.keep_last_k=0",
              "train.sample.enabled=false", "data.batch_size=2", "parallel.timeout_s=60"]
    proc = subprocess.Popen([str(REPO / "launch/torchrun.sh"),
                             *wandb_offline_mode(tiny_overrides(tiny_shards, run_dir, "train.steps=1000", *common))],
                            cwd=tmp_path, env=launch_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(run_dir, 2, proc)
    proc.send_signal(signal.SIGUSR1)  # to the torchrun agent only: it must pass it on
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, f"{out[-3000:]}\n{err[-3000:]}"
    assert "pre-empted." in out and "SIGUSR1 received" in out
    stopped = read_metrics(run_dir)[-1]["step"]
    assert 2 <= stopped < 1000
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, stopped + 1))
    assert (run_dir / "checkpoints" / f"step-{stopped:07d}" / "COMPLETE").is_file()

    # The resumed run takes the multi-node path of torchrun.sh: two "nodes" on this machine, one
    # process each, meeting at a c10d rendezvous endpoint (the same world size as before).
    resume_args = wandb_offline_mode(tiny_overrides(tiny_shards, run_dir, f"train.steps={stopped + 2}", *common))
    two_nodes = {**launch_env(1), "NNODES": "2", "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}"}
    nodes = [subprocess.Popen([str(REPO / "launch/torchrun.sh"), *resume_args], cwd=tmp_path, env=two_nodes,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(err[-3000:] for _, err in outputs)
    out = "".join(o for o, _ in outputs)  # rank 0 is on whichever node joined first
    assert "world 2 = dp 2" in out and f"at step {stopped}" in out and "done." in out
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, stopped + 3))
    # wandb: the pre-empted run ended with exit code 75, the requeued one continued its id.
    first, second = [wandb_offline.read_records(f) for f in wandb_offline.run_files(run_dir)]
    assert wandb_offline.run_id(first) == wandb_offline.run_id(second)
    assert wandb_offline.of_type(first, "exit")[0].exit_code == 75
    assert wandb_offline.of_type(second, "exit")[0].exit_code == 0
    assert [h["step"] for h in wandb_offline.history(second)] == [stopped + 1, stopped + 2]


def offline(shards: str, run_dir: Path, *extra: str) -> list[str]:
    return wandb_offline_mode(tiny_overrides(
        shards, run_dir, "train.log_every_steps=1", "train.ckpt_every_steps=2", "train.sample.steps=2",
        "train.sample_every_steps=2", "data.batch_size=2", "optim.lr=0.0007", *extra))


def test_wandb_offline_run_holds_metrics_videos_and_continues_its_id(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(offline(tiny_shards, run_dir, "train.steps=4"), cwd=tmp_path)
    second = run_cli(offline(tiny_shards, run_dir, "train.steps=6"), cwd=tmp_path)
    assert "wandb sync" in first.stdout and "at step 4" in second.stdout
    files = wandb_offline.run_files(run_dir)
    assert len(files) == 2
    runs = [wandb_offline.read_records(f) for f in files]
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert [wandb_offline.run_id(r) for r in runs] == [run_id, run_id]
    assert wandb_offline.config(runs[0])["optim"]["lr"] == 0.0007
    rows = [wandb_offline.history(r) for r in runs]
    assert [h["step"] for h in rows[0]] == [1, 2, 3, 4] and [h["step"] for h in rows[1]] == [5, 6]
    for h in rows[0] + rows[1]:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_peak_gib", "step_time_s"):
            assert isinstance(h[key], float), (key, h)
        assert h["data_skipped"] == 0  # the loader counts skipped samples; these shards have none
    videos = [(h["step"], h["sample/path"], f.parent) for h, f in
              [(h, f) for r, f in zip(rows, files) for h in r] if "sample/path" in h]
    assert [v[0] for v in videos] == [2, 4, 6]  # every 2 steps, the end sample of each run
    for step, rel, folder in videos:
        frames, _ = read_video(folder / "files" / rel)
        assert frames.shape[0] == 8  # the clip's frames, from the EMA weights like samples/
        own, _ = read_video(run_dir / "samples" / f"step-{step:07d}.gif")
        assert (frames == own).all()
    # The README's upload command, without the upload (no network here): wandb finds both files.
    wandb_cli = Path(sys.executable).parent / "wandb"
    dry = subprocess.run([str(wandb_cli), "sync", "--dry-run", *map(str, sorted(run_dir.glob("wandb/offline-run-*")))],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    assert dry.returncode == 0 and "Would sync 2 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


def test_local_hydra_sweep_writes_one_run_directory_per_job_and_resumes(tiny_shards, tmp_path):
    sweep = tmp_path / "sweep"

    def sweep_args(steps: int) -> list[str]:
        args = tiny_overrides(tiny_shards, tmp_path / "unused", f"train.steps={steps}",
                              "train.sample.enabled=false", "data.batch_size=2",
                              "train.log_every_steps=1", "train.ckpt_every_steps=2")
        return ["-m", "optim.lr=1e-4,3e-4", f"hydra.sweep.dir={sweep}",
                *[a for a in args if not a.startswith("hydra.run.dir")]]

    run_cli(sweep_args(2), cwd=tmp_path)
    for job, lr in (("0", "0.0001"), ("1", "0.0003")):
        assert f"lr: {lr}" in (sweep / job / "config.yaml").read_text()
        assert [r["step"] for r in read_metrics(sweep / job)] == [1, 2]
        assert (sweep / job / "checkpoints" / "step-0000002" / "COMPLETE").is_file()
    assert (sweep / "multirun.yaml").is_file()
    again = run_cli(sweep_args(3), cwd=tmp_path)  # the same sweep directory: every job resumes
    assert again.stdout.count("at step 2") == 2
    for job in ("0", "1"):
        assert [r["step"] for r in read_metrics(sweep / job)] == [1, 2, 3]
