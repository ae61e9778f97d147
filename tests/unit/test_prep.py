"""The prep tool on real MP4 files written here with PyAV: shards, skip report, encoding, resume."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import webdataset

from conftest import REPO
from litegen.config.schema import DataConfig
from litegen.data.loader import build_loader
from litegen.data.video_io import write_video
from litegen.tools.prep import Options, list_inputs, run_prep

BUCKETS = ((8, 32, 32), (8, 32, 48), (4, 32, 32))
# name: (frames, fps, height, width, colour); all but the last two are usable.
CLIPS = {"wide": (24, 24, 48, 64, (200, 40, 40)), "square": (16, 8, 40, 40, (40, 200, 40)),
         "portrait": (12, 12, 64, 40, (40, 40, 200)), "halfsec": (5, 10, 32, 32, (200, 200, 40)),
         "long": (40, 8, 36, 52, (40, 200, 200)), "plain": (8, 8, 32, 32, (120, 120, 120)),
         "short": (2, 8, 32, 32, (0, 0, 0)), "uncaptioned": (8, 8, 32, 32, (9, 9, 9))}


def solid(frames, height, width, colour):
    clip = np.empty((frames, height, width, 3), np.uint8)
    clip[:] = colour
    clip[:, : height // 4, : width // 4] = 255 - np.array(colour, np.uint8)  # a corner patch
    return clip


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    rows = []
    for name, (frames, fps, h, w, colour) in CLIPS.items():
        write_video(folder / f"{name}.mp4", solid(frames, h, w, colour), fps)
        if name != "uncaptioned":
            (folder / f"{name}.txt").write_text(f"a {name} clip")
        rows.append({"path": f"{name}.mp4", "caption": "" if name == "uncaptioned" else f"a {name} clip"})
    (folder / "broken.mp4").write_bytes(b"this is not a video" * 50)
    (folder / "broken.txt").write_text("a broken file")
    rows.append({"path": "broken.mp4", "caption": "a broken file"})
    (folder / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def reasons(report):
    return {os.path.basename(s["input"]): s["reason"].split(":")[0] for s in report["skipped"]}


def test_folder_and_list_inputs_agree(videos):
    from_folder = {os.path.basename(i.path): i.caption for i in list_inputs(videos)}
    from_list = {os.path.basename(i.path): i.caption for i in list_inputs(videos / "list.jsonl")}
    assert from_folder["wide.mp4"] == from_list["wide.mp4"] == "a wide clip"
    assert from_folder["uncaptioned.mp4"] is None and from_list["uncaptioned.mp4"] == ""


@pytest.fixture(scope="module")
def raw_shards(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    report = run_prep(list_inputs(videos), out, Options(fps=8, buckets=BUCKETS), workers=2, max_samples_per_shard=2)
    return out, report


def test_shards_report_and_buckets(raw_shards):
    out, report = raw_shards
    assert reasons(report) == {"broken.mp4": "unreadable", "short.mp4": "too short", "uncaptioned.mp4": "no caption"}
    assert report["samples"] == 6 and report["shards"] == 3
    assert sorted(os.listdir(out)) == ["index.json", "prep-report.json"] + [f"shard-{i:06d}.tar" for i in range(3)]
    plain = {s["__key__"]: s for s in webdataset.WebDataset(str(out / "shard-{000000..000002}.tar"),
                                                              shardshuffle=False).decode()}
    shapes = {k.split("-", 1)[1]: (s["json"]["frames"], s["json"]["height"], s["json"]["width"]) for k, s in plain.items()}
    # 24 frames at 24 fps = 1 s -> 8 frames at 8 fps; 48x64 (4:3) -> the 3:2 bucket; 5 frames at 10 fps
    # -> 4 at 8 fps -> the 4-frame bucket; 64x40 portrait has no portrait bucket -> square.
    assert shapes == {"wide": (8, 32, 48), "square": (8, 32, 32), "portrait": (8, 32, 32), "halfsec": (4, 32, 32),
                      "long": (8, 32, 48), "plain": (8, 32, 32)}
    assert all(s["txt"].startswith("a ") and len(s["mp4"]) > 100 for s in plain.values())


def test_our_loader_decodes_raw_clips_to_their_buckets(raw_shards):
    out, _ = raw_shards
    data = DataConfig(shards=str(out / "shard-*.tar"), batch_size=1, shuffle_buffer=0)
    for batch in itertools.islice(iter(build_loader(data, 0, 1)), 6):
        meta, pixels = batch["meta"][0], batch["pixels"][0]
        assert pixels.shape == (3, meta["frames"], meta["height"], meta["width"])
        name = batch["keys"][0].split("-", 1)[1]
        colour = np.array(CLIPS[name][4]) / 127.5 - 1
        centre = pixels[:, :, -4:, -4:].mean(dim=(1, 2, 3)).numpy()  # away from the corner patch
        assert np.abs(centre - colour).max() < 0.1, (name, centre, colour)


def test_encoded_shards_carry_latents_and_caption_embeddings(videos, tmp_path):
    items = [i for i in list_inputs(videos) if os.path.basename(i.path) in ("wide.mp4", "plain.mp4")]
    report = run_prep(items, tmp_path, Options(fps=8, buckets=BUCKETS, encode=True, latent_dtype="fp32"), workers=0)
    assert report["samples"] == 2
    data = DataConfig(shards=str(tmp_path / "shard-*.tar"), batch_size=1, shuffle_buffer=0)
    batches = list(itertools.islice(iter(build_loader(data, 0, 1)), 2))
    for batch in batches:
        meta = batch["meta"][0]
        # The default pixel encoder (factor 2): 12 channels at half resolution; hashed text, 32 x 64.
        assert batch["latents"].shape == (1, 12, meta["frames"], meta["height"] // 2, meta["width"] // 2)
        assert batch["text_emb"].shape == (1, 32, 64) and bool(batch["text_mask"][0, 0])
        assert meta["video_encoder"]["kind"] == "pixel" and "mp4" not in meta


def test_interrupted_run_resumes_without_duplicating_shards(videos, raw_shards, tmp_path):
    reference, _ = raw_shards
    out = tmp_path / "out"
    items = list_inputs(videos)

    def crash_after_first(entry):
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        run_prep(items, out, Options(fps=8, buckets=BUCKETS), workers=0, max_samples_per_shard=2,
                 on_shard=crash_after_first)
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar"]
    (out / ".shard-000001.tar.partial").write_bytes(b"half a shard")  # as a SIGKILL would leave it
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "litegen.tools.prep", "--input", str(videos), "--out", str(out),
                           "--fps", "8", "--buckets", "8x32x32,8x32x48,4x32x32", "--workers", "0",
                           "--max-samples-per-shard", "2"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 samples in 3 shards" in proc.stdout and "no caption" in proc.stdout
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first  # the finished shard was kept
    names = sorted(os.listdir(out))
    assert names == ["index.json", "prep-report.json"] + [f"shard-{i:06d}.tar" for i in range(3)]

    def keys(folder):
        return [s["__key__"] for s in webdataset.WebDataset(str(folder / "shard-{000000..000002}.tar"),
                                                            shardshuffle=False)]
    assert keys(out) == keys(reference) and len(set(keys(out))) == 6
