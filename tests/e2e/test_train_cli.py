"""End-to-end: the CLI trains, writes the run-directory contract, resumes exactly, runs DDP."""

import pytest
from conftest import read_metrics, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def test_tiny_trains_and_loss_falls(tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(tiny_overrides(tiny_shards, run_dir, "train.steps=40", "train.log_every_steps=1",
                           "train.ckpt_every_steps=20", "optim.warmup_steps=5"), cwd=tmp_path)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 41))
    for key in ("loss", "lr", "tokens_per_s", "grad_norm", "mfu"):
        assert all(r[key] is not None for r in records), key
    first, last = records[:5], records[-5:]
    assert sum(r["loss"] for r in last) < 0.8 * sum(r["loss"] for r in first)
    assert (run_dir / "config.yaml").read_text().count("run_name: tiny") == 1
    for step in (20, 40):
        assert (run_dir / "checkpoints" / f"step-{step:07d}" / "COMPLETE").is_file()
    sample = run_dir / "samples" / "step-0000040.gif"
    assert sample.is_file() and sample.stat().st_size > 1000


def test_resume_matches_uninterrupted_run(tiny_shards, tmp_path):
    # Constant LR after warmup, so stopping at step 3 and asking for 6 later is the same
    # schedule as one 6-step run (the cosine horizon would otherwise differ).
    common = ["train.log_every_steps=1", "train.ckpt_every_steps=3", "optim.schedule=constant",
              "optim.warmup_steps=2", "train.sample.enabled=false"]
    straight = tmp_path / "straight"
    run_cli(tiny_overrides(tiny_shards, straight, "train.steps=6", *common), cwd=tmp_path)
    resumed = tmp_path / "resumed"
    run_cli(tiny_overrides(tiny_shards, resumed, "train.steps=3", *common), cwd=tmp_path)
    second = run_cli(tiny_overrides(tiny_shards, resumed, "train.steps=6", *common), cwd=tmp_path)
    assert "resumed from" in second.stdout and "at step 3" in second.stdout
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]


def test_torchrun_ddp_two_processes(tiny_shards, tmp_path):
    run_dir = tmp_path / "ddp"
    proc = run_cli(tiny_overrides(tiny_shards, run_dir, "parallel=ddp", "train.steps=4", "train.log_every_steps=2",
                                  "train.ckpt_every_steps=2", "train.sample.enabled=false",
                                  "parallel.timeout_s=60"), cwd=tmp_path, nproc=2)
    assert "world 2 = dp 2" in proc.stdout
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["loss"] == r["loss"] for r in records)  # finite, not NaN
    marker = (run_dir / "checkpoints" / "step-0000004" / "COMPLETE").read_text()
    assert '"world_size": 2' in marker
    # Both ranks wrote their data-loader state into the checkpoint.
    resumed = run_cli(tiny_overrides(tiny_shards, run_dir, "parallel=ddp", "train.steps=6", "train.log_every_steps=2",
                                     "train.sample.enabled=false", "parallel.timeout_s=60"),
                      cwd=tmp_path, nproc=2)
    assert "at step 4" in resumed.stdout
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 4, 6]


def test_wandb_offline_run_is_written_and_resumed(tiny_shards, tmp_path):
    # The quick start logs to wandb offline by default; a resumed run continues the same run id.
    run_dir = tmp_path / "wb"
    args = ["train.steps=2", "train.log_every_steps=1", "train.sample.enabled=false"]
    overrides = [o for o in tiny_overrides(tiny_shards, run_dir, *args) if "wandb_mode" not in o]
    run_cli(overrides + ["logging.wandb_mode=offline"], cwd=tmp_path)
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 1
    more = [o if o != "train.steps=2" else "train.steps=3" for o in overrides]
    run_cli(more + ["logging.wandb_mode=offline"], cwd=tmp_path)
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
