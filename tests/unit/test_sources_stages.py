"""Shard specs (globs, brace ranges, pipe: commands), weighted sources, stages and their validation."""

import itertools
from collections import Counter

import numpy as np
import pytest

from litegen.config import ConfigError, compose
from litegen.config.schema import DataConfig, SourceConfig, StageConfig, SyntheticDataConfig, VideoEncoderConfig
from litegen.data.generate import generate_synthetic_dataset
from litegen.data.loader import build_loader
from litegen.data.schedule import build_schedule
from litegen.data.sources import Source, UnitSequence, build_sources, expand_spec
from litegen.encoders import build_video_encoder


def make(folder, clips: int, per_shard: int, shapes, seed: int = 0) -> str:
    cfg = SyntheticDataConfig(num_clips=clips, clips_per_shard=per_shard, shapes=shapes, seed=seed)
    generate_synthetic_dataset(cfg, folder, build_video_encoder(VideoEncoderConfig()))
    return str(folder)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    big = make(root / "big", 40, 4, [[4, 16, 16]], seed=1)  # 10 shards of 4
    small = make(root / "small", 24, 8, [[4, 16, 16]], seed=2)  # 3 shards of 8
    return big, small


def test_pipe_specs_brace_expand_and_stream(two_sets):
    big, _ = two_sets
    spec = f"pipe:cat {big}/shard-{{000000..000009}}.tar"
    assert expand_spec(spec)[:2] == [f"pipe:cat {big}/shard-000000.tar", f"pipe:cat {big}/shard-000001.tar"]
    piped = build_loader(DataConfig(shards=spec, batch_size=4, shuffle_buffer=0), 0, 1)
    local = build_loader(DataConfig(shards=f"{big}/shard-*.tar", batch_size=4, shuffle_buffer=0), 0, 1)
    a, b = (list(itertools.islice(iter(x), 12)) for x in (piped, local))
    assert [x["keys"] for x in a] == [x["keys"] for x in b]  # same names -> same order


def test_failing_pipe_command_is_a_bad_shard(two_sets, tmp_path):
    big, _ = two_sets
    cfg = DataConfig(shards=f"pipe:cat {big}/shard-00000{{0..1}}.tar; exit 3", batch_size=1, shuffle_buffer=0,
                     bad_sample="raise")
    with pytest.raises(ValueError, match="exit 3.*pipe command failed: command exited with status 3"):
        list(itertools.islice(iter(build_loader(cfg, 0, 1)), 5))  # fails when the first shard ends


def test_every_source_epoch_is_a_permutation_and_weights_are_sample_shares(two_sets):
    big, small = two_sets
    data = DataConfig(sources=[SourceConfig(shards=f"{big}/shard-*.tar", weight=3.0, name="big"),
                               SourceConfig(shards=f"{small}/shard-*.tar", weight=1.0, name="small")])
    sources = build_sources(data)
    assert [s.samples_per_shard for s in sources] == [4.0, 8.0]
    units = UnitSequence(sources, seed=5)
    drawn = [units.unit(u) for u in range(3000)]
    for s, source in enumerate(sources):
        mine = [x for x in drawn if x.source == s]
        n = len(source.shards)
        for epoch in range(len(mine) // n):
            assert sorted(x.shard for x in mine[epoch * n:(epoch + 1) * n]) == sorted(source.shards)
            assert {x.epoch for x in mine[epoch * n:(epoch + 1) * n]} == {epoch}
    # Per sample: 3:1. The small source's shards hold twice the samples, so it is drawn 1/7 of units.
    samples = Counter()
    for x in drawn:
        samples[x.source] += sources[x.source].samples_per_shard
    assert abs(samples[0] / (samples[0] + samples[1]) - 0.75) < 0.03
    assert units.unit(2999) == UnitSequence(sources, seed=5).unit(2999)  # random access, same answer


def test_loader_mixes_sources_by_weight(two_sets):
    big, small = two_sets
    data = DataConfig(sources=[SourceConfig(shards=f"{big}/shard-*.tar", weight=1.0, name="big"),
                               SourceConfig(shards=f"{small}/shard-*.tar", weight=1.0, name="small")],
                      batch_size=2, shuffle_buffer=8)
    batches = list(itertools.islice(iter(build_loader(data, 0, 1)), 120))
    counts = Counter(s for b in batches for s in b["sources"])
    assert abs(counts["big"] / sum(counts.values()) - 0.5) < 0.1


def test_schedule_stages_and_lr_scale():
    data = DataConfig(batch_size=3, token_budget=64, buckets={"a": [4, 16, 16], "b": [8, 16, 16]},
                      stages=[StageConfig(name="one", buckets=["a"]),
                              StageConfig(name="two", start_step=10, token_budget=0, lr_scale=0.25)])
    schedule = build_schedule(data)
    assert [schedule.stage_at(s).name for s in (0, 9, 10, 99)] == ["one", "one", "two", "two"]
    one, two = schedule.stages
    assert one.shapes == ((4, 16, 16),) and one.token_budget == 64 and one.packed  # inherits the budget
    assert two.shapes == ((4, 16, 16), (8, 16, 16)) and not two.packed and two.batch_size == 3
    assert schedule.lr_scale(9) == 1.0 and schedule.lr_scale(10) == 0.25


def test_a_stage_matching_no_sample_fails_instead_of_hanging(two_sets):
    big, _ = two_sets
    data = DataConfig(shards=f"{big}/shard-*.tar", buckets={"huge": [8, 64, 64]}, batch_size=1)
    with pytest.raises(RuntimeError, match="without one usable sample for stage 'default'.*8, 64, 64"):
        list(itertools.islice(iter(build_loader(data, 0, 1)), 1))


@pytest.mark.parametrize("overrides, field, message", [
    (["+data.buckets={a:[8,32,32]}", "+data.stages=[{name:s,buckets:[nope]}]"], "data.stages[0].buckets",
     "unknown bucket"),
    (["+data.buckets={odd:[8,30,32]}"], "data.buckets.odd", "must divide"),
    (["+data.buckets={a:[8,32,32]}", "data.token_budget=100"], "data.token_budget", "cannot hold bucket"),
    (["+data.buckets={a:[8,32,32]}", "+data.stages=[{name:x,start_step:5}]"], "data.stages[0].start_step",
     "first stage must start at step 0"),
    (["+data.stages=[{name:x},{name:y,start_step:0}]"], "data.stages", "must increase"),
    (["data.bad_sample=ignore"], "data.bad_sample", "must be one of"),
    (["+data.sources=[{shards:a.tar,weight:0}]"], "data.sources[0].weight", "must be > 0"),
    (["data.pack_fill=1.5"], "data.pack_fill", "(0, 1]"),
    (["data.token_budget=4096", "experiment=cogvideox_tiny"], "data.token_budget", "the Wan family with rectified_flow"),
])
def test_data_config_mistakes_name_their_field(overrides, field, message):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    text = str(err.value)
    assert field in text and message in text, text


@pytest.mark.parametrize("layout", [["parallel.sp_ring=2"], ["parallel.sp_ring=2", "parallel.sp_ulysses=2"]])
def test_packing_composes_with_ring_and_2d_sequence_parallelism(layout):
    cfg = compose(["data.token_budget=4096", *layout])
    assert cfg.data.token_budget == 4096 and cfg.parallel.sp_ring == 2


def test_unit_sequence_rejects_empty_sources():
    with pytest.raises(ValueError, match="at least one shard"):
        UnitSequence([Source("x", (), 1.0)], seed=0)
    assert np.isclose(sum(UnitSequence([Source("a", ("p",), 1.0), Source("b", ("q",), 3.0)], 0).probs), 1.0)
