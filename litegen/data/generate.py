"""Render the synthetic moving-shapes dataset, encode it to latents and write it as shards.

Generation is atomic: it writes into a hidden sibling folder and renames it into place at the end,
so a killed run never leaves a folder that looks complete.
"""

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator, Protocol, Union

import numpy as np
import torch

from litegen.config.schema import SyntheticDataConfig
from litegen.data.shards import ShardWriter
from litegen.data.synthetic import render_clip
from litegen.encoders.base import DTYPES
from litegen.train.console import Progress

PathLike = Union[str, Path]
CLIPS_PER_CHUNK = 256  # rendered before encoding; bounds memory while giving the encoder batches
ENCODE_BATCH_CLIPS = 64


class ClipEncoder(Protocol):
    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...  # [B,3,T,H,W] in [-1,1] -> [B,C,T',H',W']
    def signature(self) -> dict[str, Any]: ...


def generate_synthetic_dataset(cfg: SyntheticDataConfig, out_dir: PathLike, video_encoder: ClipEncoder) -> Path:
    """Write cfg.num_clips encoded clips (shapes cycling through cfg.shapes) as shards in out_dir."""
    out_dir = Path(out_dir)
    _check_target(out_dir)
    tmp_dir = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        _write_all(cfg, tmp_dir, video_encoder)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked above); os.replace cannot replace a directory
        os.replace(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty; delete it to regenerate")


def _write_all(cfg: SyntheticDataConfig, tmp_dir: Path, encoder: ClipEncoder) -> None:
    info = {"generator": "litegen.data.generate", "synthetic": dataclasses.asdict(cfg),
            "video_encoder": encoder.signature()}
    with ShardWriter(tmp_dir, cfg.clips_per_shard, info=info) as writer, \
            Progress(cfg.num_clips, "synthetic clips", "clips", stream=sys.stderr, plain_steps=10) as progress:
        for start in range(0, cfg.num_clips, CLIPS_PER_CHUNK):
            indices = range(start, min(start + CLIPS_PER_CHUNK, cfg.num_clips))
            for index, latent, caption, meta in _encode_chunk(cfg, indices, encoder):
                writer.write(clip_key(index), latent, caption, meta)
            progress.update(len(indices))


def clip_key(index: int) -> str:
    return f"shapes-{index:06d}"


def render_indexed(cfg: SyntheticDataConfig, index: int) -> tuple[np.ndarray, str, dict]:
    """Clip `index` of the dataset; its own seeded rng makes it independent of chunking and order."""
    frames, height, width = cfg.shapes[index % len(cfg.shapes)]
    return render_clip(np.random.default_rng([cfg.seed, index]), frames, height, width,
                       cfg.position_jitter)


def _encode_chunk(cfg: SyntheticDataConfig, indices: range, encoder: ClipEncoder) -> Iterator[tuple]:
    """(index, latent, caption, meta) in index order; clips are encoded in same-shape batches."""
    clips = {i: render_indexed(cfg, i) for i in indices}
    signature = encoder.signature()
    latents: dict[int, torch.Tensor] = {}
    for group in _same_shape_groups(clips):
        pixels = torch.from_numpy(np.stack([clips[i][0] for i in group])).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            encoded = encoder.encode(pixels.float() / 127.5 - 1.0)
        latents.update(zip(group, encoded.to(DTYPES[cfg.latent_dtype])))
    for i in indices:
        video, caption, attrs = clips[i]
        meta = {"frames": video.shape[0], "height": video.shape[1], "width": video.shape[2], "fps": cfg.fps,
                "source_id": f"synthetic:{cfg.seed}:{i}", "video_encoder": signature, "attrs": attrs}
        # Written in index order, so every shard mixes all shapes rather than holding one bucket.
        yield i, latents[i], caption, meta


def _same_shape_groups(clips: dict[int, tuple]) -> Iterator[list[int]]:
    by_shape: dict[tuple, list[int]] = {}
    for i, (video, _, _) in clips.items():
        by_shape.setdefault(video.shape, []).append(i)
    for group in by_shape.values():
        for start in range(0, len(group), ENCODE_BATCH_CLIPS):
            yield group[start:start + ENCODE_BATCH_CLIPS]
