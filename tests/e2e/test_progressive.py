"""End-to-end data path: a 2-stage progressive run resumed inside stage 2, and a packed run
resumed on more ranks (elastic, with clips exchanged between ranks)."""

import shutil

import pytest
from conftest import read_metrics, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def progressive(shards: str, run_dir, *extra: str) -> list[str]:
    return ["experiment=tiny_progressive", f"data.shards={shards}", "data.generate_if_missing=false",
            "logging.wandb_mode=disabled", "train.sample.enabled=false", f"hydra.run.dir={run_dir}", *extra]


def test_two_stage_schedule_resumes_inside_stage_two(tiny_shards, tmp_path):
    run_dir = tmp_path / "progressive"
    # Small packs (2-3 clips) keep the run quick; the switch is at step 3, the checkpoint at 4.
    args = progressive(tiny_shards, run_dir, "train.steps=6", "data.stages.1.start_step=3",
                       "data.stages.0.token_budget=1024", "data.stages.1.token_budget=1536",
                       "train.ckpt_every_steps=4", "train.log_every_steps=1", "optim.warmup_steps=2")
    first = run_cli(args, cwd=tmp_path)
    assert "stage 'short' from step 0" in first.stdout and "stage 'all_shapes' from step 3" in first.stdout
    straight = read_metrics(run_dir)
    # Stage 2 halves the LR: without lr_scale the cosine alone would leave 87% of step 2's value.
    assert straight[2]["lr"] < 0.6 * straight[1]["lr"]
    # As if the run had died after step 5: the same command resumes from step 4, inside stage 2.
    shutil.rmtree(run_dir / "checkpoints" / "step-0000006")
    second = run_cli(args, cwd=tmp_path)
    assert "at step 4" in second.stdout and "stage 'all_shapes' from step 4" in second.stdout
    resumed = read_metrics(run_dir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in straight]


def test_packed_run_resumes_on_more_ranks(tiny_shards, tmp_path):
    # Elastic growth through the trainer (1 -> 2 processes); shrinking a loader state saved by two
    # processes is tested in tests/dist and tests/unit/test_loader_resume.py.
    run_dir = tmp_path / "elastic"
    common = ["data.token_budget=2048", "train.log_every_steps=2", "train.sample.enabled=false",
              "parallel.timeout_s=60"]
    one = run_cli(tiny_overrides(tiny_shards, run_dir, "train.steps=2", *common), cwd=tmp_path)
    assert "world 1 = dp 1" in one.stdout
    two = run_cli(tiny_overrides(tiny_shards, run_dir, "train.steps=4", *common), cwd=tmp_path, nproc=2)
    assert "world 2 = dp 2" in two.stdout and "at step 2" in two.stdout
    assert '"world_size": 2' in (run_dir / "checkpoints" / "step-0000004" / "COMPLETE").read_text()
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4] and all(r["loss"] == r["loss"] for r in records)
