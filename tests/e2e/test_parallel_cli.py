"""End-to-end: torchrun with FSDP2 + Ulysses trains, checkpoints and samples collectively."""

import pytest
from conftest import read_metrics, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def test_torchrun_fsdp2_ulysses_trains_and_samples(tiny_shards, tmp_path):
    run_dir = tmp_path / "sp"
    proc = run_cli(tiny_overrides(tiny_shards, run_dir, "parallel=fsdp2", "parallel.sp_ulysses=2",
                                  "train.steps=3", "train.log_every_steps=1", "train.ckpt_every_steps=3",
                                  "train.sample.steps=2", "data.batch_size=2", "parallel.timeout_s=60"),
                   cwd=tmp_path, nproc=2)
    assert "dp 1 x sp 2 (ring 1 x ulysses 2, fsdp2)" in proc.stdout
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0.0 < r["loss"] < 10.0 for r in records)
    # Tokens are counted once per sample, not once per SP rank: 2 clips of 8x16x16 (512 tokens)
    # or 8x16x24 (768 tokens) latents per step.
    for r in records:
        assert min(abs(r["tokens_per_s"] * r["step_time_s"] - t) for t in (1024, 1536)) < 1e-3 * 1024
    assert (run_dir / "checkpoints" / "step-0000003" / "COMPLETE").is_file()
    sample = run_dir / "samples" / "step-0000003.gif"
    assert sample.is_file() and sample.stat().st_size > 1000


def test_torchrun_packed_batches_under_ulysses_train(tiny_shards, tmp_path):
    run_dir = tmp_path / "packed-sp"
    proc = run_cli(tiny_overrides(tiny_shards, run_dir, "data=shapes_packed", "data.token_budget=2048",
                                  "parallel.sp_ulysses=2", "train.steps=3", "train.log_every_steps=1",
                                  "train.ckpt_every_steps=3", "train.sample.enabled=false",
                                  "parallel.timeout_s=60"),
                   cwd=tmp_path, nproc=2)
    assert "dp 1 x sp 2 (ring 1 x ulysses 2, fsdp2)" in proc.stdout and "packs of <= 2048 tokens" in proc.stdout
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0.0 < r["loss"] < 10.0 and r["grad_norm"] > 0 for r in records)
    # A pack is whole clips of 512 (8x32x32) or 768 (8x32x48) tokens, counted once for the SP group.
    for r in records:
        tokens = round(r["tokens_per_s"] * r["step_time_s"])
        assert 512 <= tokens <= 2048 and any(abs(tokens - 512 * a - 768 * b) <= 2
                                             for a in range(5) for b in range(3)), tokens
    assert (run_dir / "checkpoints" / "step-0000003" / "COMPLETE").is_file()
