"""Read and write clips as uint8 [T, H, W, 3] arrays (GIF or MP4 through PyAV), tile and enlarge them.

GIFs are lossless for clips of at most 256 distinct colours (the synthetic shapes); MP4 is H.264
yuv420p, which halves chroma resolution, so sharp colour edges come back blurred.
"""

import io
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Union

import av
import numpy as np

PathLike = Union[str, Path]
MP4_CRF = 18  # visually lossless for previews; samples are judged by eye, not by PSNR
_PALETTE_SIZE = 256
_NEAREST_CHUNK = 16384  # colours per distance block when quantising: ~16 MiB of float32


def write_video(path: PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 [T, H, W, 3] as .gif or .mp4 (chosen by suffix); returns the path."""
    path = Path(path)
    frames = _check_frames(frames)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"{path}: unsupported video suffix {suffix!r}; use .gif or .mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        if suffix == ".gif":
            _encode_gif(container, frames, fps)
        else:
            _encode_mp4(container, frames, fps)
    return path


def encode_mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """uint8 [T, H, W, 3] as H.264 MP4 bytes (what shards store as a sample's `mp4`)."""
    frames = _check_frames(frames)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        _encode_mp4(container, frames, fps)
    return buffer.getvalue()


def read_video(path: Union[PathLike, BinaryIO]) -> tuple[np.ndarray, float]:
    """Decode every frame of a video file (or file object) as uint8 [T, H, W, 3] and its frame rate."""
    with av.open(path if hasattr(path, "read") else str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.guessed_rate or stream.average_rate or stream.base_rate
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames), float(rate) if rate else 0.0


def tile_clips(clips: list[np.ndarray], cols: int, gap_px: int = 2) -> np.ndarray:
    """Lay equally long clips out in a grid (row-major) so several samples fit in one file.

    Clips of different sizes sit in the top-left corner of cells as big as the largest clip.
    """
    if not clips:
        raise ValueError("tile_clips needs at least one clip")
    clips = [_check_frames(c) for c in clips]
    lengths = {c.shape[0] for c in clips}
    if len(lengths) != 1:
        raise ValueError(f"tile_clips needs clips of equal length, got frame counts {sorted(lengths)}")
    cols = max(1, min(cols, len(clips)))
    rows = -(-len(clips) // cols)
    cell_h = max(c.shape[1] for c in clips) + gap_px
    cell_w = max(c.shape[2] for c in clips) + gap_px
    grid = np.zeros((clips[0].shape[0], rows * cell_h - gap_px, cols * cell_w - gap_px, 3), np.uint8)
    for i, clip in enumerate(clips):
        y, x = (i // cols) * cell_h, (i % cols) * cell_w
        grid[:, y:y + clip.shape[1], x:x + clip.shape[2]] = clip
    return grid


def upscale_nearest(frames: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge [T, H, W, C] by an integer factor, each pixel becoming a factor x factor block."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return np.repeat(np.repeat(frames, factor, axis=1), factor, axis=2)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


def _rate(fps: float) -> Fraction:
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def _encode_gif(container, frames: np.ndarray, fps: float) -> None:
    # One palette for the whole clip, so colours do not flicker between frames.
    indices, palette = palette_indices(frames)
    stream = container.add_stream("gif", rate=_rate(fps))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "pal8"
    for image in indices:
        frame = av.VideoFrame.from_ndarray((image, palette), format="pal8")
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def _encode_mp4(container, frames: np.ndarray, fps: float) -> None:
    frames = _pad_even(frames)  # yuv420p stores chroma per 2x2 block: libx264 refuses odd sizes
    stream = container.add_stream("libx264", rate=_rate(fps))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    stream.options = {"crf": str(MP4_CRF)}
    for image in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode())


def _pad_even(frames: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def palette_indices(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 indices [T, H, W], ARGB palette uint8 [256, 4]) for a pal8 GIF.

    Exact when the clip has <= 256 colours; otherwise the 256 most common colours at 5 bits per
    channel, each pixel mapped to its nearest one.
    """
    rgb = frames.reshape(-1, 3).astype(np.int64)
    codes, inverse = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2], return_inverse=True)
    colours = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1)
    if len(colours) <= _PALETTE_SIZE:
        table, lookup = colours, np.arange(len(colours))
    else:
        table = _frequent_colours(colours, np.bincount(inverse.ravel(), minlength=len(codes)))
        lookup = _nearest(colours, table)
    palette = np.zeros((_PALETTE_SIZE, 4), np.uint8)
    palette[:, 0] = 255  # opaque
    palette[:len(table), 1:] = table
    return lookup[inverse.ravel()].astype(np.uint8).reshape(frames.shape[:3]), palette


def _frequent_colours(colours: np.ndarray, counts: np.ndarray) -> np.ndarray:
    coarse = (colours >> 3 << 3) + 4  # centre of each 5-bit bin
    bins, where = np.unique((coarse[:, 0] << 16) | (coarse[:, 1] << 8) | coarse[:, 2], return_inverse=True)
    top = np.argsort(-np.bincount(where.ravel(), weights=counts), kind="stable")[:_PALETTE_SIZE]
    chosen = bins[top]
    return np.stack([(chosen >> 16) & 255, (chosen >> 8) & 255, chosen & 255], axis=1)


def _nearest(colours: np.ndarray, table: np.ndarray) -> np.ndarray:
    table_f = table.astype(np.float32)
    out = np.empty(len(colours), np.int64)
    for start in range(0, len(colours), _NEAREST_CHUNK):
        block = colours[start:start + _NEAREST_CHUNK].astype(np.float32)
        dist = ((block[:, None, :] - table_f[None, :, :]) ** 2).sum(-1)
        out[start:start + _NEAREST_CHUNK] = dist.argmin(1)
    return out
