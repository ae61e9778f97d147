"""Exact and elastic resume of the loader, in bucket and packed mode, across a stage switch."""

import itertools
import json
from dataclasses import replace

import pytest
import torch

from litegen.config.schema import DataConfig, StageConfig, SyntheticDataConfig, VideoEncoderConfig
from litegen.data.buckets import TokenGeometry
from litegen.data.generate import generate_synthetic_dataset
from litegen.data.loader import build_loader, global_state
from litegen.encoders import build_video_encoder
from data_helpers import epoch_keys, stop_and_resume

NUM_CLIPS, SHARDS = 48, 8
SHAPES = [[8, 16, 16], [8, 16, 24], [4, 16, 16]]
# The pixel encoder (factor 2) and patch (1, 2, 2): 8x16x16 clips are 8*4*4 = 128 tokens,
# 8x16x24 are 192, 4x16x16 are 64.
GEOMETRY = TokenGeometry(spatial_factor=2, patch=(1, 2, 2))
BUCKETS = {"a": [8, 16, 16], "b": [8, 16, 24], "c": [4, 16, 16]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("resume") / "shapes"
    cfg = SyntheticDataConfig(num_clips=NUM_CLIPS, clips_per_shard=NUM_CLIPS // SHARDS, shapes=SHAPES)
    generate_synthetic_dataset(cfg, out, build_video_encoder(VideoEncoderConfig()))
    return str(out / "shard-*.tar")


def cfg(shards: str, **changes) -> DataConfig:
    base = dict(shards=shards, batch_size=2, shuffle_buffer=5, seed=11, buckets=dict(BUCKETS))
    return DataConfig(**{**base, **changes})


def packed_cfg(shards: str, **changes) -> DataConfig:
    # Two stages switching at step 3 (with 2 micro-batches per step: batch 6): bucket batches,
    # then packs of up to 384 tokens.
    stages = [StageConfig(name="short", start_step=0, buckets=["a", "c"], token_budget=0),
              StageConfig(name="packed", start_step=3, token_budget=384, lr_scale=0.5)]
    return cfg(shards, stages=stages, pack_lookahead=2.0, **changes)


def loader(config: DataConfig, rank: int = 0, ranks: int = 1):
    return build_loader(config, rank, ranks, geometry=GEOMETRY, micro_batches_per_step=2)


def take(source, count: int) -> list[dict]:
    return list(itertools.islice(iter(source), count))


def clips(batch: dict) -> list[torch.Tensor]:
    return list(batch["latents"]) if not batch["packed"] else batch["latents"]


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [b["keys"] for b in got] == [b["keys"] for b in want]
    for a, b in zip(got, want):
        assert a["stage"] == b["stage"] and a["captions"] == b["captions"]
        assert all(torch.equal(x, y) for x, y in zip(clips(a), clips(b)))


@pytest.mark.parametrize("num_workers,rank,ranks", [(0, 0, 1), (2, 0, 1), (0, 1, 2), (2, 1, 2)])
def test_packed_resume_across_a_stage_switch_is_exact(shards, num_workers, rank, ranks):
    config = packed_cfg(shards, num_workers=num_workers)
    n, m = 5, 9  # saved inside stage 1 (batch 5 of 6), resumed across the switch into packs
    reference, first, resumed, _ = stop_and_resume(lambda: loader(config, rank, ranks), n, m)
    assert [b["stage"] for b in reference] == ["short"] * 6 + ["packed"] * 8
    for batch in reference[:6]:  # stage 1 takes only buckets a and c
        assert not batch["packed"] and {(m["frames"], m["width"]) for m in batch["meta"]} <= {(8, 16), (4, 16)}
    assert all(b["packed"] and sum(b["tokens"]) <= 384 for b in reference[6:])
    assert_same(first, reference[:n])
    assert_same(resumed, reference[n:])


def test_state_holds_references_not_tensors(shards):
    source = loader(packed_cfg(shards))
    take(source, 8)
    state = source.state_dict()
    assert len(json.dumps(state)) < 20_000
    reader = state["readers"][0]
    assert reader["pool"] and all(len(ref) == 2 for ref in reader["pool"] + reader["shuffle"])


@pytest.mark.parametrize("before,after", [((2, 0), (1, 0)), ((2, 2), (1, 1)), ((1, 2), (2, 0))])
def test_elastic_resume_sees_every_sample_of_the_epoch_once(shards, before, after):
    """(dp ranks, workers) before -> after a resume in the middle of epoch 0, in packed mode."""
    (ranks, workers), (new_ranks, new_workers) = before, after
    config = cfg(shards, token_budget=384, pack_lookahead=2.0, shuffle_buffer=4)
    old = [build_loader(replace(config, num_workers=workers), r, ranks, geometry=GEOMETRY) for r in range(ranks)]
    seen = []
    for source in old:
        for batch in take(source, 3):
            seen += [k for k, e in zip(batch["keys"], batch["epochs"]) if e == 0]
    assert 0 < len(seen) < NUM_CLIPS
    state = json.loads(json.dumps(global_state([x.state_dict() for x in old])))
    new = [build_loader(replace(config, num_workers=new_workers), r, new_ranks, geometry=GEOMETRY)
           for r in range(new_ranks)]
    for source in new:
        source.load_state_dict(state)
        assert source.delivered == 3
    rest = epoch_keys(new, 0, SHARDS)
    assert sorted(seen + rest) == [f"shapes-{i:06d}" for i in range(NUM_CLIPS)]


def test_same_layout_from_global_state_is_exact(shards):
    config = cfg(shards)
    reference = [take(loader(config, r, 2), 7) for r in range(2)]
    first = [loader(config, r, 2) for r in range(2)]
    for source in first:
        take(source, 3)
    state = global_state([x.state_dict() for x in first])
    for r in range(2):
        resumed = loader(config, r, 2)
        resumed.load_state_dict(state)
        assert_same(take(resumed, 4), reference[r][3:])
