"""End-to-end: the new families train through `python -m litegen.train` and write their sample GIF,
also under torchrun DDP on 2 gloo ranks (explicit uniform timesteps split by data-parallel rank)."""

import pytest
from conftest import read_metrics, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def family_overrides(shards, run_dir, experiment, *extra):
    base = tiny_overrides(shards, run_dir, "train.steps=2", "train.log_every_steps=1", "train.ckpt_every_steps=2",
                          "data.batch_size=2", "train.sample.steps=2", *extra)
    return [f"experiment={experiment}" if o == "experiment=tiny" else o for o in base]


def test_token_family_trains_and_writes_a_sample_clip(tiny_shards, tmp_path):
    run_dir = tmp_path / "wd"
    proc = run_cli(family_overrides(tiny_shards, run_dir, "worlddreamer_tiny"), cwd=tmp_path)
    assert "worlddreamer_tiny (worlddreamer)" in proc.stdout and "masked_tokens" in proc.stdout
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert (run_dir / "samples" / "step-0000002.gif").stat().st_size > 1000


def test_cogvideox_under_ddp_on_two_ranks(tiny_shards, tmp_path):
    run_dir = tmp_path / "cog"
    proc = run_cli(family_overrides(tiny_shards, run_dir, "cogvideox_tiny", "parallel.timeout_s=60"),
                   cwd=tmp_path, nproc=2)
    assert "world 2 = dp 2" in proc.stdout
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)
    assert (run_dir / "samples" / "step-0000002.gif").is_file()
