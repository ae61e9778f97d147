"""Shard writer/reader round trips, atomicity, and the loader's order, buckets, dp split and exact resume.

Elastic resume, sources, bad samples and stages: test_loader_resume.py, test_sources_stages.py.
"""

import glob
import itertools
import json
import os

import pytest
import torch
import webdataset

from litegen.config.schema import DataConfig, SyntheticDataConfig
from litegen.data.generate import generate_synthetic_dataset, render_indexed
from litegen.data.loader import build_loader, expand_shards
from litegen.data.shards import ShardWriter, decode_latent, iter_shard
from data_helpers import epoch_keys, stop_and_resume

SHAPES = [[8, 16, 16], [8, 16, 24]]
NUM_CLIPS = 40


class SpaceToDepth:
    """Stand-in for litegen.encoders.pixel.PixelSpaceToDepth (same methods, factor 2)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = pixels.shape
        x = pixels.reshape(b, c, t, h // 2, 2, w // 2, 2).permute(0, 1, 4, 6, 2, 3, 5)
        return x.reshape(b, c * 4, t, h // 2, w // 2).contiguous()

    def signature(self) -> dict:
        return {"kind": "test-space-to-depth", "spatial_factor": 2}


def synth_cfg(**overrides) -> SyntheticDataConfig:
    return SyntheticDataConfig(**{"num_clips": NUM_CLIPS, "clips_per_shard": 5, "shapes": SHAPES, **overrides})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_synthetic_dataset(synth_cfg(), tmp_path_factory.mktemp("data") / "shapes", SpaceToDepth())


def data_cfg(folder, **overrides) -> DataConfig:
    return DataConfig(**{"shards": f"{folder}/shard-*.tar", "batch_size": 2, "shuffle_buffer": 8,
                         "num_workers": 0, "seed": 3, **overrides})


def take(loader, count: int) -> list[dict]:
    return list(itertools.islice(iter(loader), count))


def assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert [b["keys"] for b in got] == [b["keys"] for b in want]
    for a, b in zip(got, want):
        assert torch.equal(a["latents"], b["latents"]) and a["captions"] == b["captions"]


# ---- writer and generated dataset -------------------------------------------------------------


def test_generated_dataset_layout_and_latents(dataset):
    names = sorted(os.listdir(dataset))
    assert names == ["index.json"] + [f"shard-{i:06d}.tar" for i in range(8)]
    index = json.loads((dataset / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [5] * 8 and index["total_samples"] == NUM_CLIPS
    first = next(iter_shard(dataset / "shard-000000.tar"))
    video, caption, attrs = render_indexed(synth_cfg(), 0)
    pixels = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    assert first.caption == caption and first.meta["attrs"] == attrs
    assert first.meta["video_encoder"] == SpaceToDepth().signature() and first.meta["frames"] == 8
    # Stored as fp16 by default (SyntheticDataConfig.latent_dtype); decoded to float32.
    stored = decode_latent(first.latent_bytes)
    assert torch.equal(stored, SpaceToDepth().encode(pixels)[0].half().float())
    # fp16 storage still decodes to the exact uint8 pixels.
    restored = ((stored.float() + 1.0) * 127.5).round().to(torch.uint8)
    assert torch.equal(restored, SpaceToDepth().encode(torch.from_numpy(video).permute(3, 0, 1, 2)[None])[0].to(torch.uint8))


def written_samples(n: int = 7) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        dtype = torch.bfloat16 if i % 2 else torch.float32
        samples.append({
            "key": f"clip-{i:03d}", "latent": torch.randn(4, 2, 3, 3, generator=gen).to(dtype),
            "caption": f"caption {i} ünïcode", "meta": {"frames": 4, "height": 6, "width": 6, "fps": 8,
                                                        "video_encoder": {"kind": "x"}, "attrs": {"i": i}},
            "text": {"emb": torch.randn(5, 3, generator=gen), "mask": torch.arange(5) < 3},
            "video_bytes": bytes([i]) * 10})
    return samples


def test_written_shards_stream_back_identically(tmp_path):
    samples = written_samples()
    with ShardWriter(tmp_path, max_samples_per_shard=3) as writer:
        for s in samples:
            writer.write(**s)
    assert sorted(glob.glob(f"{tmp_path}/shard-*.tar")) == [f"{tmp_path}/shard-{i:06d}.tar" for i in range(3)]
    expected_meta = {s["key"]: {**s["meta"], "source_id": s["key"], "latent_shape": [4, 2, 3, 3]} for s in samples}

    plain = webdataset.WebDataset(sorted(glob.glob(f"{tmp_path}/shard-*.tar")), shardshuffle=False).decode()
    by_key = {s["__key__"]: s for s in plain}
    for s in samples:
        got = by_key[s["key"]]
        assert got["latent.pth"].dtype == s["latent"].dtype and torch.equal(got["latent.pth"], s["latent"])
        assert got["txt"] == s["caption"] and got["json"] == expected_meta[s["key"]]
        assert torch.equal(got["text.pth"]["emb"], s["text"]["emb"]) and got["mp4"] == s["video_bytes"]

    loader = build_loader(data_cfg(tmp_path, batch_size=1, shuffle_buffer=0), 0, 1)
    batches = {b["keys"][0]: b for b in take(loader, len(samples))}
    assert loader.num_samples == len(samples) and set(batches) == set(expected_meta)
    for s in samples:
        got = batches[s["key"]]
        assert got["latents"].dtype == torch.float32 and torch.equal(got["latents"][0], s["latent"].float())
        assert got["captions"] == [s["caption"]] and got["meta"] == [expected_meta[s["key"]]]
        assert torch.equal(got["text_emb"][0], s["text"]["emb"])
        assert torch.equal(got["text_mask"][0], s["text"]["mask"])


def test_writer_is_atomic(tmp_path):
    samples = written_samples()
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path / "crash", max_samples_per_shard=5) as writer:
            for s in samples:  # the 6th and 7th go into a second, unfinished shard
                writer.write(**s)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path / "crash") == ["shard-000000.tar"]  # no partial shard, no index
    assert len(list(iter_shard(tmp_path / "crash" / "shard-000000.tar"))) == 5

    killed = ShardWriter(tmp_path / "killed", max_samples_per_shard=5)  # never closed, as if killed
    for s in samples[:3]:
        killed.write(**s)
    assert glob.glob(f"{tmp_path}/killed/*") == []
    assert expand_shards(f"{tmp_path}/killed/shard-*.tar", must_exist=False) == []


def test_writer_validation_names_the_key(tmp_path):
    s = written_samples(1)[0]
    with ShardWriter(tmp_path / "a") as writer:
        writer.write(**s)
        with pytest.raises(ValueError, match="clip-000.*duplicate"):
            writer.write(**s)
        with pytest.raises(TypeError, match="'k1'.*latent must be a torch.Tensor"):
            writer.write(**{**s, "key": "k1", "latent": [[1.0]]})
        with pytest.raises(TypeError, match="'k2'.*caption must be a str"):
            writer.write(**{**s, "key": "k2", "caption": b"bytes"})
        with pytest.raises(ValueError, match="'k3'.*lacks \\['fps'\\]"):
            writer.write(**{**s, "key": "k3", "meta": {k: v for k, v in s["meta"].items() if k != "fps"}})
        with pytest.raises(ValueError, match="'k.4'"):
            writer.write(**{**s, "key": "k.4"})
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path / "a")


def test_generation_is_atomic(tmp_path):
    class Failing(SpaceToDepth):
        def encode(self, pixels):
            raise RuntimeError("encoder died")

    with pytest.raises(RuntimeError, match="encoder died"):
        generate_synthetic_dataset(synth_cfg(), tmp_path / "dead", Failing())
    assert os.listdir(tmp_path) == []  # neither the target nor the hidden work folder
    generate_synthetic_dataset(synth_cfg(num_clips=6), tmp_path / "ok", SpaceToDepth())
    assert sorted(os.listdir(tmp_path)) == ["ok"]
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_dataset(synth_cfg(num_clips=6), tmp_path / "ok", SpaceToDepth())


def test_shard_specs(dataset):
    all_shards = [f"{dataset}/shard-{i:06d}.tar" for i in range(8)]
    assert expand_shards(f"{dataset}/shard-*.tar") == all_shards
    assert expand_shards(f"{dataset}/shard-{{000002..000004}}.tar") == all_shards[2:5]
    assert expand_shards(all_shards[7]) == all_shards[7:]
    with pytest.raises(FileNotFoundError, match="nothing-\\*.tar"):
        expand_shards(f"{dataset}/nothing-*.tar")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        expand_shards(f"{dataset}/shard-{{000006..000009}}.tar")


# ---- loader -----------------------------------------------------------------------------------


def test_loader_buckets_and_endless_epochs(dataset):
    loader = build_loader(data_cfg(dataset, batch_size=4), 0, 1)
    batches = take(loader, 25)  # an epoch holds at most 10 batches of 4
    for batch in batches:
        shapes = {tuple(m["latent_shape"]) for m in batch["meta"]}
        assert len(shapes) == 1 and batch["latents"].shape == (4, *shapes.pop())
        assert batch["latents"].dtype == torch.float32 and len(batch["captions"]) == 4
    assert max(e for b in batches for e in b["epochs"]) >= 2
    assert {tuple(b["latents"].shape[1:]) for b in batches} == {(12, 8, 8, 8), (12, 8, 8, 12)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dp_ranks_split_an_epoch_disjointly_and_completely(dataset, num_workers):
    keys = [epoch_keys([build_loader(data_cfg(dataset, batch_size=1, num_workers=num_workers), rank, 2)], 0, 8)
            for rank in range(2)]
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == [f"shapes-{i:06d}" for i in range(NUM_CLIPS)]


@pytest.mark.parametrize("num_workers,dp_rank,dp_size", [(0, 0, 1), (2, 0, 1), (0, 0, 2), (0, 1, 2), (2, 1, 2)])
def test_resume_is_exact(dataset, num_workers, dp_rank, dp_size):
    cfg = data_cfg(dataset, num_workers=num_workers)
    n, m = 7, 12  # spans epoch boundaries: a reader has at most 5 batches of 2 per epoch here
    reference, first, resumed, stopped = stop_and_resume(lambda: build_loader(cfg, dp_rank, dp_size), n, m)
    assert_same_batches(first, reference[:n])
    assert_same_batches(resumed, reference[n:])
    assert_same_batches(take(stopped, m), reference[n:])  # a new iter() also continues, not restarts


def test_resume_refuses_another_stream(dataset):
    state = build_loader(data_cfg(dataset), 0, 2).state_dict()
    with pytest.raises(ValueError, match="seed: saved 3, now 4"):
        build_loader(data_cfg(dataset, seed=4), 0, 2).load_state_dict(state)
    with pytest.raises(ValueError, match="needs every rank's data state"):
        build_loader(data_cfg(dataset), 0, 1).load_state_dict(state)  # one rank's part of dp 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_signature_mismatch_names_shard_and_key(dataset, num_workers):
    good = build_loader(data_cfg(dataset), 0, 1, expected_signature=SpaceToDepth().signature())
    take(good, 3)
    bad = build_loader(data_cfg(dataset, num_workers=num_workers), 0, 1,
                       expected_signature={"kind": "pixel", "spatial_factor": 4})
    with pytest.raises(ValueError, match=r"shard-0000\d\d\.tar: sample 'shapes-0000\d\d'.*[Rr]egenerate"):
        take(bad, 1)
