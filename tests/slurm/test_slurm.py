"""launch/slurm.sbatch and the submitit sweep launcher against a real (local, one-node) Slurm:
a tiny CPU run submitted and checked, a job pre-empted by `scancel --signal=USR1` that
checkpoints, requeues itself (`scontrol requeue`) and resumes, and a Hydra sweep sent to Slurm."""

import os
import re
import subprocess
import sys
import time

import pytest
from conftest import read_metrics, tiny_overrides
from slurm_helpers import REPO, job_fields, slurm, submit_dir, wait_for_job  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm")]


def job_env(nproc: int) -> dict:
    # sbatch exports the submitting environment to the job (--export=ALL, Slurm's default).
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO),
            "NPROC_PER_NODE": str(nproc), "OMP_NUM_THREADS": "1"}


def test_sbatch_runs_the_tiny_experiment_on_two_processes(tiny_shards, tmp_path):
    cwd = submit_dir(tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    proc = subprocess.run(["sbatch", "--parsable", "--wait", "--nodes=1", "launch/slurm.sbatch",
                           *tiny_overrides(tiny_shards, run_dir, "train.steps=3", "train.log_every_steps=1",
                                           "train.ckpt_every_steps=3", "train.sample.steps=2",
                                           "data.batch_size=2", "parallel.timeout_s=60")],
                          cwd=cwd, env=job_env(2), capture_output=True, text=True, timeout=900)
    job_id = proc.stdout.strip().split(";")[0]
    log = (cwd / "logs" / f"litegen-{job_id}.out").read_text()
    assert proc.returncode == 0, log[-4000:]
    assert f"job {job_id} restart 0: 1 node(s)" in log and "world 2 = dp 2" in log and "done." in log
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "step-0000003" / "COMPLETE").read_text().count('"world_size": 2') == 1
    assert (run_dir / "samples" / "step-0000003.gif").stat().st_size > 1000
    assert job_fields(job_id)["JobState"] == "COMPLETED"


def wait_for_metrics(run_dir, step: int, job_id: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        state = job_fields(job_id).get("JobState")
        if state not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {job_id} is {state} before step {step}")
        time.sleep(0.2)
    pytest.fail(f"job {job_id}: no step {step} after {timeout_s} s")


def test_sbatch_job_preempted_by_signal_checkpoints_requeues_and_resumes(tiny_shards, tmp_path):
    cwd = submit_dir(tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    steps = 30  # long enough to signal it midway; the requeued job runs the same command
    proc = subprocess.run(["sbatch", "--parsable", "launch/slurm.sbatch",
                           *tiny_overrides(tiny_shards, run_dir, f"train.steps={steps}", "train.log_every_steps=1",
                                           "train.ckpt_every_steps=1000", "train.keep_last_k=0",
                                           "train.sample.enabled=false", "data.batch_size=2",
                                           "parallel.timeout_s=60")],
                          cwd=cwd, env=job_env(2), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    wait_for_metrics(run_dir, 2, job_id)
    # What a scheduler's pre-emption warning does: SIGUSR1 to every process of the job's steps.
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=60)
    wait_for_job(job_id, lambda f: int(f.get("Restarts", 0)) >= 1 and f["JobState"] == "PENDING",
                 300, "requeued (Restarts=1, PENDING)")
    # A requeued job waits for a begin time about two minutes ahead; start it now. But not within
    # the second of the requeue: slurmd refuses a credential issued in the second its previous
    # one was revoked (whole-second timestamps), and the job would fail to start.
    time.sleep(2.5)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=60)
    fields = wait_for_job(job_id, lambda f: f["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING",
                                                                   "REQUEUED", "COMPLETING"),
                          600, "finished")
    log = (cwd / "logs" / f"litegen-{job_id}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-4000:]
    assert "pre-empted." in log and f"requeueing job {job_id}" in log
    assert f"job {job_id} restart 1:" in log and "done." in log
    stopped = int(re.search(r"stopped\s+at step (\d+) of", log).group(1))
    assert 2 <= stopped < steps
    assert f"at step {stopped}" in log.split(f"job {job_id} restart 1:")[1]  # resumed there
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, steps + 1))
    for step in (stopped, steps):
        assert (run_dir / "checkpoints" / f"step-{step:07d}" / "COMPLETE").is_file()


def test_hydra_sweep_through_submitit_slurm(tiny_shards, tmp_path):
    """Each sweep job is a Slurm job of 2 tasks: one trainer process per task (gloo, DDP)."""
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_overrides(tiny_shards, tmp_path / "unused", "train.steps=2",
                                      "train.sample.enabled=false", "data.batch_size=2",
                                      "train.log_every_steps=1", "train.ckpt_every_steps=2",
                                      "parallel=ddp", "parallel.timeout_s=60")
            if not a.startswith("hydra.run.dir")]
    proc = subprocess.run([sys.executable, "-m", "litegen.train", "-m", "hydra/launcher=submitit_slurm",
                           "hydra.launcher.timeout_min=15", "hydra.launcher.tasks_per_node=2",
                           "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}",
                           "optim.lr=1e-4,3e-4", *args],
                          cwd=tmp_path, env=job_env(1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    for job, lr in (("0", "0.0001"), ("1", "0.0003")):
        assert f"lr: {lr}" in (sweep / job / "config.yaml").read_text()
        assert [r["step"] for r in read_metrics(sweep / job)] == [1, 2]
        marker = (sweep / job / "checkpoints" / "step-0000002" / "COMPLETE").read_text()
        assert '"world_size": 2' in marker
    logs = sorted((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 2 and all("world 2 = dp 2" in log.read_text() for log in logs)


def job_folders(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*") if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []


def test_submitit_preemption_signal_checkpoints_before_submitit_requeues(tiny_shards, tmp_path):
    """submitit's own pre-emption signal (USR2): our checkpoint first, then its requeue, then resume."""
    sweep, steps = tmp_path / "sweep", 30
    args = [a for a in tiny_overrides(tiny_shards, tmp_path / "unused", f"train.steps={steps}",
                                      "train.sample.enabled=false", "data.batch_size=2",
                                      "train.log_every_steps=1", "train.ckpt_every_steps=1000",
                                      "train.keep_last_k=0")
            if not a.startswith("hydra.run.dir")]
    launcher = subprocess.Popen([sys.executable, "-m", "litegen.train", "-m", "hydra/launcher=submitit_slurm",
                                 "hydra.launcher.timeout_min=15", f"hydra.sweep.dir={sweep}", "optim.lr=2e-4",
                                 *args], cwd=tmp_path, env=job_env(1), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        # submitit's folder per job is named by the Slurm job id (one job: no array suffix); its
        # submission pickles (hex uuids, which may start with a digit) sit beside it.
        while not job_folders(sweep / ".submitit") and time.monotonic() < deadline:
            time.sleep(0.2)
        job_id = job_folders(sweep / ".submitit")[0]
        wait_for_metrics(sweep / "0", 2, job_id)
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)
        wait_for_job(job_id, lambda f: int(f.get("Restarts", 0)) >= 1 and f["JobState"] == "PENDING",
                     300, "requeued by submitit")
        time.sleep(2.5)  # see the sbatch requeue test: not within the second of the requeue
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=60)
        out, err = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out[-3000:] + err[-4000:]
    log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    stopped = int(re.search(r"stopped\s+at step (\d+) of", log).group(1))
    assert "SIGUSR2 received" in log and f"at step {stopped}" in log.split("pre-empted.")[1]
    assert [r["step"] for r in read_metrics(sweep / "0")] == list(range(1, steps + 1))
    assert (sweep / "0" / "checkpoints" / f"step-{stopped:07d}" / "COMPLETE").is_file()
