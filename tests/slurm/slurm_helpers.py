"""A real one-node Slurm for the tests in this folder (the `slurm` fixture). As root,
launch/ci/slurm-setup.sh runs once per session: it installs and starts one (apt-get), or checks
that the running one describes this machine (and restarts it if not). Otherwise a Slurm that
answers is used as it is."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "launch" / "ci" / "slurm-setup.sh"


def slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and bool({"idle", "mixed", "allocated"} & set(proc.stdout.split()))


@pytest.fixture(scope="session")
def slurm() -> None:
    if slurm_answers() and os.geteuid() != 0:
        return  # someone else's Slurm: use it as it is
    if os.geteuid() != 0:
        pytest.skip("no Slurm answers here and starting one needs root: run launch/ci/slurm-setup.sh as root")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("no Slurm answers here and there is no apt-get to install slurm-wlm and munge")
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not slurm_answers():
        pytest.fail(f"launch/ci/slurm-setup.sh failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (there is no accounting, so no sacct)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for_job(job_id: str, done, timeout_s: float, what: str) -> dict[str, str]:
    """Poll until done(fields) is true; fail with the job's state otherwise."""
    deadline = time.monotonic() + timeout_s
    fields = {}
    while time.monotonic() < deadline:
        fields = job_fields(job_id)
        if done(fields):
            return fields
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], timeout=30)
    pytest.fail(f"job {job_id}: {what} not reached after {timeout_s} s; last state {fields.get('JobState')} "
                f"({fields.get('Reason')})")


def submit_dir(tmp_path: Path) -> Path:
    """A directory to submit from, laid out like a checkout: launch/ (linked) and logs/."""
    (tmp_path / "launch").symlink_to(REPO / "launch")
    (tmp_path / "logs").mkdir()
    return tmp_path
