"""Turn chosen samples into tensors: latents as stored, or raw clips decoded and fitted to a bucket.

The only stage of the loader that touches tensor bytes. A sample whose bytes do not decode raises
BadSample (naming shard and key) for the bad-sample policy to skip or raise.
"""

import io
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from litegen.data.buckets import Shape
from litegen.data.shards import BadSample, RawSample, decode_latent, decode_text
from litegen.data.video_io import read_video


def fit_clip(frames: np.ndarray, shape: Shape) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [frames, height, width, 3]: first frames, resized to cover, centre-cropped."""
    count, height, width = shape
    if frames.shape[0] < count:
        raise ValueError(f"clip has {frames.shape[0]} frames, bucket needs {count}")
    clip = frames[:count]
    h, w = clip.shape[1:3]
    if (h, w) == (height, width):
        return np.ascontiguousarray(clip)
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()
    # antialias: downscaling a high-res source without it aliases fine texture.
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_unit_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, H, W] in [-1, 1] (what video encoders take)."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def decode_pixels(sample: RawSample, shape: Shape) -> torch.Tensor:
    try:
        frames, _ = read_video(io.BytesIO(sample.video_bytes))
        return to_unit_range(fit_clip(frames, shape))
    except Exception as exc:  # PyAV raises its own error types for every kind of broken stream
        raise BadSample(sample.shard, sample.key, "undecodable", f"clip: {exc!r}") from exc


def decode_clip(sample: RawSample, shape: Shape) -> torch.Tensor:
    """Latent [C, T', H', W'] float32 when the sample has one, else pixels [3, T, H, W] for `shape`."""
    if not sample.has_latent:
        return decode_pixels(sample, shape)
    try:
        latent = decode_latent(sample.latent_bytes)
    except Exception as exc:  # torch.load raises pickle/zip/runtime errors on damaged bytes
        raise BadSample(sample.shard, sample.key, "undecodable", f"latent: {exc!r}") from exc
    if tuple(latent.shape) != sample.latent_shape:
        raise BadSample(sample.shard, sample.key, "bad_metadata", f"latent is {tuple(latent.shape)} "
                        f"but its json says {list(sample.latent_shape)}")
    return latent


def decode_caption_embedding(sample: RawSample) -> Optional[dict[str, torch.Tensor]]:
    """The precomputed text embedding {"emb", "mask"}, or None when the sample has none."""
    if sample.text_bytes is None:
        return None
    try:
        return decode_text(sample.text_bytes)
    except Exception as exc:  # torch.load raises pickle/zip/runtime errors on damaged bytes
        raise BadSample(sample.shard, sample.key, "undecodable", f"text embedding: {exc!r}") from exc


def _text(samples: Sequence[RawSample], texts: Sequence[Optional[dict]]) -> dict[str, torch.Tensor]:
    if all(t is None for t in texts):
        return {}
    if any(t is None for t in texts):
        bare = next(s for s, t in zip(samples, texts) if t is None)
        raise ValueError(f"{bare.shard}: sample {bare.key!r} has no text.pth but others in its batch do; "
                         "a dataset must carry text embeddings for all samples or none")
    return {"text_emb": torch.stack([t["emb"].float() for t in texts]),
            "text_mask": torch.stack([t["mask"] for t in texts])}


def assemble(samples: Sequence[RawSample], clips: list[torch.Tensor], texts: Sequence[Optional[dict]],
             tokens: Sequence[int], packed: bool, stage: Optional[str] = None,
             token_budget: int = 0) -> dict[str, Any]:
    """The batch dict: stacked clips (bucket batch) or a list of clips (pack), plus per-sample info."""
    kinds = {s.has_latent for s in samples}
    if len(kinds) != 1:
        raise ValueError(f"{samples[0].shard}: a batch mixes latent and raw (mp4-only) samples; "
                         "a dataset must be all pre-encoded or all raw")
    name = "latents" if kinds.pop() else "pixels"
    batch = {name: clips if packed else torch.stack(clips), "packed": packed,
             "captions": [s.caption for s in samples], "keys": [s.key for s in samples],
             "meta": [s.meta for s in samples], "epochs": [s.epoch for s in samples],
             "sources": [s.source for s in samples], "tokens": list(tokens), "stage": stage,
             "token_budget": token_budget}
    batch.update(_text(samples, texts))
    return batch
