"""Frozen video and text encoders behind one interface, built from VideoEncoderConfig/TextEncoderConfig.

The diffusers/transformers-backed encoders import those libraries only when built, so the pixel
and hashed encoders work without the `hf` extra.
"""

from typing import Union

import torch

from litegen.config.schema import TextEncoderConfig, VideoEncoderConfig
from litegen.encoders.base import TextEncoder, VideoEncoder
from litegen.encoders.diffusers_vae import DiffusersVideoVAE
from litegen.encoders.hashed_text import HashedTextEncoder
from litegen.encoders.hf_text import HFTextEncoder
from litegen.encoders.pixel import PixelSpaceToDepth

Device = Union[str, torch.device]


def build_video_encoder(cfg: VideoEncoderConfig, device: Device = "cpu") -> VideoEncoder:
    if cfg.kind == "pixel":
        # Weight-free: it runs on whatever device the pixels are on.
        return PixelSpaceToDepth(cfg.spatial_factor, cfg.temporal_factor)
    if cfg.kind == "diffusers":
        if not cfg.path:
            raise ValueError("encoders.video.path: the diffusers video VAE needs a local folder")
        return DiffusersVideoVAE(cfg.path, subfolder=cfg.subfolder, dtype=cfg.dtype, device=device)
    raise ValueError(f"encoders.video.kind must be 'pixel' or 'diffusers', got {cfg.kind!r}")


def build_text_encoder(cfg: TextEncoderConfig, device: Device = "cpu") -> TextEncoder:
    if cfg.kind == "hashed":
        return HashedTextEncoder(cfg.dim, cfg.max_length, device=device)
    if cfg.kind == "t5":
        if not cfg.path:
            raise ValueError("encoders.text.path: the t5 text encoder needs a local folder")
        return HFTextEncoder(cfg.path, cfg.max_length, dtype=cfg.dtype, device=device)
    raise ValueError(f"encoders.text.kind must be 'hashed' or 't5', got {cfg.kind!r}")


__all__ = [
    "DiffusersVideoVAE", "HFTextEncoder", "HashedTextEncoder", "PixelSpaceToDepth", "TextEncoder",
    "VideoEncoder", "build_text_encoder", "build_video_encoder",
]
