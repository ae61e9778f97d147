"""Data path: synthetic clips, video files, latent shards (writer + reader) and the resumable loader."""

from litegen.data.generate import generate_synthetic_dataset
from litegen.data.loader import ReaderPlan, ShardLoader, build_loader, global_state
from litegen.data.shards import BadSample, RawSample, ShardWriter, expand_shards, read_index
from litegen.data.synthetic import COLOURS, MOTIONS, SHAPES, render_clip
from litegen.data.video_io import read_video, tile_clips, upscale_nearest, write_video

__all__ = [
    "BadSample", "COLOURS", "MOTIONS", "RawSample", "ReaderPlan", "SHAPES", "ShardLoader", "ShardWriter",
    "build_loader", "global_state",
    "expand_shards", "generate_synthetic_dataset", "read_index", "read_video", "render_clip", "tile_clips",
    "upscale_nearest", "write_video",
]
