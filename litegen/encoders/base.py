"""The two interfaces every frozen encoder implements, plus the shape rules and helpers they share.

Encoders are frozen: they never hold grads and always run under `torch.no_grad()`.
"""

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional, Union

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Files that define a pretrained encoder; anything else in the folder (README, images) is ignored.
_IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".pt", ".pth")
_FINGERPRINT_CHUNK_BYTES = 1 << 20


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def folder_fingerprint(folder: Union[str, Path]) -> str:
    """Cheap content identity of a pretrained folder: name, size and first/last MiB of each file.

    Reading whole multi-GiB weight files would make start-up slow; head + tail + size catches a
    different checkpoint in practice. The path itself is left out so a copied folder matches.
    """
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in _IDENTITY_SUFFIXES)
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(_FINGERPRINT_CHUNK_BYTES))
            if size > _FINGERPRINT_CHUNK_BYTES:
                handle.seek(max(_FINGERPRINT_CHUNK_BYTES, size - _FINGERPRINT_CHUNK_BYTES))
                digest.update(handle.read())
    return digest.hexdigest()


class VideoEncoder(ABC):
    """Frozen pixel <-> latent codec for clips shaped [B, 3, T, H, W] with values in [-1, 1].

    Subclasses set `latent_channels`, `spatial_factor`, `temporal_factor` and `causal`. A causal
    encoder (Wan, CogVideoX) encodes the first frame alone, so T' = 1 + (T - 1) / temporal_factor;
    a non-causal one folds whole groups, T' = T / temporal_factor.
    """

    latent_channels: int
    spatial_factor: int
    temporal_factor: int
    causal: bool

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> float latents [B, C, T', H', W']."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T', H', W'] -> float pixels [B, 3, T, H, W], clamped to [-1, 1]."""

    @abstractmethod
    def signature(self) -> dict[str, Any]:
        """JSON-serialisable identity; shards encoded under a different signature are refused."""

    def shape_problem(self, frames: int, height: int, width: int) -> Optional[str]:
        """Why a pixel clip of this shape cannot be encoded, or None if it can."""
        tf, sf = self.temporal_factor, self.spatial_factor
        if frames < 1:
            return f"frames must be >= 1, got {frames}"
        if self.causal and (frames - 1) % tf:
            return f"frames - 1 must be divisible by temporal_factor {tf} (causal encoder), got frames={frames}"
        if not self.causal and frames % tf:
            return f"frames must be divisible by temporal_factor {tf}, got frames={frames}"
        for name, size in (("height", height), ("width", width)):
            if size < 1 or size % sf:
                return f"{name} must be a positive multiple of spatial_factor {sf}, got {name}={size}"
        return None

    def shape_ok(self, frames: int, height: int, width: int) -> bool:
        return self.shape_problem(frames, height, width) is None

    def frames_ok(self, frames: int) -> bool:
        return self.shape_ok(frames, self.spatial_factor, self.spatial_factor)

    def check_shape(self, frames: int, height: int, width: int) -> None:
        problem = self.shape_problem(frames, height, width)
        if problem is not None:
            raise ValueError(f"{type(self).__name__}: {problem}")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latents for a pixel clip of frames x height x width."""
        self.check_shape(frames, height, width)
        tf, sf = self.temporal_factor, self.spatial_factor
        latent_frames = 1 + (frames - 1) // tf if self.causal else frames // tf
        return self.latent_channels, latent_frames, height // sf, width // sf

    def check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: pixels must be [B, 3, T, H, W], got {tuple(pixels.shape)}")
        self.check_shape(*pixels.shape[2:])

    def check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"{type(self).__name__}: latents must be [B, {self.latent_channels}, T', H', W'], "
                             f"got {tuple(latents.shape)}")


class TextEncoder(ABC):
    """Frozen caption encoder: list of captions -> (emb [B, L, dim], mask bool [B, L]).

    L is always `max_length` so batch shapes are static; padded positions are zero and every row,
    even the empty caption "" (the classifier-free-guidance null condition), has a True.
    """

    dim: int
    max_length: int

    @abstractmethod
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings float32 [B, max_length, dim] and mask bool [B, max_length]."""

    @abstractmethod
    def signature(self) -> dict[str, Any]:
        """JSON-serialisable identity; shards encoded under a different signature are refused."""


def zero_padding(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded positions so nothing downstream can read whatever the encoder put there."""
    return emb * mask.unsqueeze(-1).to(emb.dtype)


def check_captions(captions: list[str]) -> None:
    # A bare string would be iterated character by character: a silent, expensive mistake.
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError("captions must be a list of str")
