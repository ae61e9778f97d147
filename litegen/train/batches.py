"""From a loader batch to model inputs: balance packs across ranks, encode raw clips, pack tokens."""

import math
from typing import Union

import torch

from litegen.models import train_flops_per_sample
from litegen.models.embeddings import token_grid
from litegen.models.packed import PackedClips, pack_clips
from litegen.parallel.rebalance import rebalance_packed

Latents = Union[torch.Tensor, PackedClips]


@torch.no_grad()
def encode_pixels(video_encoder, pixels, device: torch.device):
    """Raw clips -> latents through the frozen encoder: one call per clip shape (batched)."""
    if isinstance(pixels, torch.Tensor):  # a bucket batch: one shape
        return video_encoder.encode(pixels.to(device, non_blocking=True)).float()
    groups: dict[tuple, list[int]] = {}
    for i, clip in enumerate(pixels):
        groups.setdefault(tuple(clip.shape), []).append(i)
    latents = [None] * len(pixels)
    for indices in groups.values():
        encoded = video_encoder.encode(torch.stack([pixels[i] for i in indices]).to(device)).float()
        for i, latent in zip(indices, encoded):
            latents[i] = latent
    return latents


def model_inputs(run, batch: dict) -> tuple[dict, Latents]:
    """(batch, latents) for the objective: a [B, C, T, H, W] tensor, or PackedClips for packs.

    Packed batches are first balanced on attention cost across data-parallel ranks (every rank
    calls this at the same micro-step), which may change which clips, captions and keys a rank has.
    """
    device = run.dist.device
    if batch.get("packed") and run.dims.dp > 1:
        # Over data-parallel ranks only: SP peers hold the same pack, and each dp group of peers
        # (one per SP rank) computes the same plan from the same packs.
        batch = rebalance_packed(batch, batch["token_budget"], device, run.dims.group("dp"))
    clips = encode_pixels(run.video_encoder, batch["pixels"], device) if "pixels" in batch else batch["latents"]
    if batch.get("packed"):
        return batch, pack_clips([c.to(device, non_blocking=True) for c in clips], run.cfg.model.patch_size)
    return batch, clips.to(device, non_blocking=True)


def batch_work(model_cfg, latents: Latents, text_len: int) -> tuple[int, int, float]:
    """(clips, tokens, training FLOPs) of one micro-batch, counted clip by clip."""
    if isinstance(latents, PackedClips):
        shapes = latents.clip_shapes()
    else:
        shapes = [tuple(latents.shape[1:])] * latents.shape[0]
    patch = tuple(model_cfg.patch_size)
    tokens = sum(math.prod(token_grid(shape[1:], patch)) for shape in shapes)
    flops = sum(train_flops_per_sample(model_cfg, shape, text_len) for shape in shapes)
    return len(shapes), tokens, flops
