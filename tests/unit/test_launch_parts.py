"""Pieces behind launch/ecosystem: metrics extras (memory, data skips), the start summary's
tokens/step, loading a run's config.yaml back."""

import os
import subprocess
import sys
from pathlib import Path

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from litegen.config import ConfigError, compose
from litegen.config.load import load_run_config
from litegen.parallel.distributed import DistInfo
from litegen.train.metrics import Meter
from litegen.train.summary import first_latent_shape, tokens_per_step
from litegen.train.trainer import data_skipped


REPO = Path(__file__).resolve().parents[2]


class CountingLoader:
    def skip_counts(self) -> dict[str, int]:
        return {"corrupt": 2, "too_short": 3}


def test_data_skips_are_summed_when_the_loader_counts_them():
    assert data_skipped(CountingLoader()) == 5
    assert data_skipped(object()) is None


def test_meter_record_has_memory_and_data_skips():
    meter = Meter(DistInfo(0, 1, 0, torch.device("cpu")), peak_tflops=1.0)
    meter.add_micro(torch.tensor(0.5), samples=2, tokens=100, flops=1e9)
    meter.end_step()
    record = meter.summary(step=1, lr=1e-4, grad_norm=0.3, data_skipped=5)
    assert record["data_skipped"] == 5 and record["loss"] == 0.5
    assert 0.01 < record["mem_peak_gib"] < 64  # this process's peak resident memory
    assert "data_skipped" not in meter.summary(step=2, lr=1e-4, grad_norm=0.3)


def test_peak_memory_on_cpu_grows_with_a_large_allocation():
    # A fresh process: this one's peak may already sit above anything allocated here. Its peak
    # must not include this (pytest) process's: ru_maxrss would, VmHWM does not.
    script = ("import torch; from litegen.train.memstats import peak_memory_gib as p\n"
              "cpu = torch.device('cpu'); before = p(cpu); block = torch.ones(2**29 // 4)\n"
              "print(p(cpu) - before)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    # The 0.5 GiB block, less whatever the peak already held above the resident set before it.
    assert 0.35 < float(out) < 0.6


def test_first_latent_shape_reads_the_first_sample(tiny_shards):
    assert first_latent_shape(tiny_shards) in ((12, 8, 16, 16), (12, 8, 16, 24))
    assert first_latent_shape("/nonexistent/shard-*.tar") is None


def summary_run(shards: str, *overrides: str) -> SimpleNamespace:
    """What tokens_per_step reads of a run: config, mesh sizes, the video encoder's factors."""
    cfg = compose(["experiment=tiny", f"data.shards={shards}", "train.grad_accum_steps=2", *overrides])
    encoder = SimpleNamespace(spatial_factor=2, temporal_factor=2, causal=False)  # 8x32x32 -> 4x16x16
    return SimpleNamespace(cfg=cfg, dims=SimpleNamespace(dp=3), video_encoder=encoder)


def test_tokens_per_step_for_buckets_packs_and_the_first_sample(tiny_shards):
    # tiny: patch (1, 2, 2); 4x16x16 latent -> 256 tokens, 4x16x24 -> 384; 8 clips x 2 accum x 3 dp.
    buckets = tokens_per_step(summary_run(tiny_shards, "+data.buckets.a=[8,32,32]", "+data.buckets.b=[8,32,48]"))
    assert buckets.startswith("12,288 to 18,432 (48 clips x 256/384 tokens per bucket")
    packed = tokens_per_step(summary_run(tiny_shards, "data.token_budget=1000"))
    assert packed.startswith("<= 6,000 (packs of <= 1,000 tokens x 6 micro-batches")
    # No buckets: the shard's first latent, [12, 8, 16, 16] or [12, 8, 16, 24]: 512 or 768 tokens.
    first = tokens_per_step(summary_run(tiny_shards))
    assert first.split(" (")[0] in ("24,576", "36,864") and "first sample" in first
    assert "unknown" in tokens_per_step(summary_run("/nonexistent/shard-*.tar"))


def test_run_config_round_trips_for_every_family(tmp_path):
    for experiment in ("tiny", "cogvideox_tiny", "worlddreamer_tiny", "snapvideo_tiny", "vchitect_tiny"):
        cfg = compose([f"experiment={experiment}", "optim.lr=0.0042"])
        path = tmp_path / f"{experiment}.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        loaded = load_run_config(path)
        assert loaded == cfg and type(loaded.model) is type(cfg.model)


def test_run_config_with_an_unknown_family_fails_naming_it(tmp_path):
    path = tmp_path / "config.yaml"
    node = OmegaConf.structured(compose(["experiment=tiny"]))
    node.model.family = "nope"
    path.write_text(OmegaConf.to_yaml(node))
    with pytest.raises(ConfigError, match="model.family"):
        load_run_config(path)
