"""Generate a viewable clip from the (EMA) weights: prompts -> latents -> pixels -> GIF/MP4."""

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from litegen.config import SampleConfig
from litegen.data.video_io import tile_clips, upscale_nearest, write_video
from litegen.train.conditioning import encode_captions
from litegen.train.console import Progress

MIN_VIEW_PX = 256  # tiny clips are upscaled (nearest) so a 32-pixel clip is viewable


def to_uint8_clips(pixels: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, T, H, W] in [-1, 1] -> B arrays of [T, H, W, 3] uint8."""
    scaled = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [clip.permute(1, 2, 3, 0).cpu().numpy() for clip in scaled]


@torch.no_grad()
def sample_latents(net: nn.Module, objective, video_encoder, text_encoder, cfg: SampleConfig,
                   device: torch.device) -> torch.Tensor:
    cond = encode_captions(text_encoder, list(cfg.prompts), device)
    null_cond = encode_captions(text_encoder, [""] * len(cfg.prompts), device)
    shape = (len(cfg.prompts), *video_encoder.latent_shape(cfg.frames, cfg.height, cfg.width))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    noise = torch.randn(shape, generator=gen, device=device)
    return objective.sample(net, noise, cond, null_cond, cfg.steps, cfg.guidance_scale, generator=gen)


def save_clip_grid(pixels: torch.Tensor, path: Path, fps: int) -> Path:
    clips = to_uint8_clips(pixels)
    grid = tile_clips(clips, cols=math.ceil(math.sqrt(len(clips))))
    factor = max(1, math.ceil(MIN_VIEW_PX / max(grid.shape[1], grid.shape[2])))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, upscale_nearest(grid, factor), fps)
    return path


@contextmanager
def evaluation_progress(net: nn.Module, enabled: bool):
    """A live count of the network's forward calls while sampling (a terminal only).

    Counted with a forward hook, since samplers differ in calls per step (CFG batching, Heun).
    """
    progress = Progress(total=None, desc="sampling", unit="eval", enabled=enabled)
    handle = net.register_forward_hook(lambda *_: progress.update())
    try:
        yield progress
    finally:
        handle.remove()
        progress.close()


def generate_sample(net: nn.Module, objective, video_encoder, text_encoder, cfg: SampleConfig,
                    device: torch.device, out_dir: Path, step: int, write: bool = True,
                    name: Optional[str] = None) -> Optional[Path]:
    """Sample one clip per prompt, tile them into one video, write it and the prompts beside it.

    write=False only takes part in the sampling (ranks that share sharded weights) and returns None.
    The file is out_dir/<name or step-NNNNNNN>.<format>.
    """
    was_training = net.training
    net.eval()
    try:
        with evaluation_progress(net, enabled=write):
            latents = sample_latents(net, objective, video_encoder, text_encoder, cfg, device)
    finally:
        net.train(was_training)
    if not write:
        return None
    pixels = video_encoder.decode(latents)
    path = save_clip_grid(pixels, out_dir / f"{name or f'step-{step:07d}'}.{cfg.format}", cfg.fps)
    path.with_suffix(".txt").write_text("".join(p + "\n" for p in cfg.prompts))
    return path
