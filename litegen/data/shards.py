"""The latent shard format: the writer every producer uses and the reader the loader streams from.

Shards are WebDataset tar files (`shard-000000.tar`, ...). Each sample is a group of tar members
sharing a key (`<key>.<part>`):

    __key__      unique id of the sample (e.g. the source id); no "." allowed
    latent.pth   torch.save'd tensor [C, T', H', W'], float32 / bfloat16 / float16
    txt          caption, utf-8
    json         metadata: frames, height, width, fps (the pixel clip), source_id, and for latent
                 samples latent_shape [C, T', H', W'] and video_encoder (the encoder's signature
                 dict); optional attrs, optional text_encoder (signature, when text.pth is present)
    text.pth     optional: precomputed caption embedding {"emb": [L, D], "mask": [L]}
    mp4          the clip (H.264); optional when latent.pth is present, else required (raw
                 samples are decoded and encoded online by the loader / trainer)

Next to the shards, `index.json` lists every shard with its sample count:
    {"format": "litegen.shards.v1", "shards": [{"name": ..., "samples": ...}], "total_samples": N,
     "info": {...producer's notes...}}

A shard is written as a hidden `.shard-000000.tar.partial` and renamed when complete, so a crash
never leaves a truncated `shard-*.tar` for a glob to pick up; index.json appears only on a clean close.
"""

import glob
import io
import json
import os
import tarfile
from zlib import error as zlib_error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import braceexpand  # a webdataset dependency, so always installed alongside it
import torch
import webdataset

PathLike = Union[str, Path]
INDEX_NAME = "index.json"
INDEX_FORMAT = "litegen.shards.v1"
DEFAULT_PATTERN = "shard-%06d.tar"
REQUIRED_META = ("frames", "height", "width", "fps")
LATENT_META = ("video_encoder",)  # required in addition when the sample carries a latent
LATENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_REQUIRED_PARTS = ("txt", "json")
_CLIP_PARTS = ("latent.pth", "mp4")  # at least one


class ShardWriter:
    """Writes samples into numbered, atomically renamed shards of at most max_samples_per_shard.

    Use as a context manager: a clean exit finishes the last shard and writes index.json; an
    exception deletes the unfinished shard and writes no index (finished shards stay valid).
    A shard is finished at max_samples_per_shard samples or before it would pass
    max_bytes_per_shard. `done_shards` continues an interrupted writer: those shards (entries of
    `shards`) are kept and numbering goes on after them; `on_shard(entry)` runs after each rename.
    """

    def __init__(self, out_dir: PathLike, max_samples_per_shard: int = 256, pattern: str = DEFAULT_PATTERN,
                 info: Optional[dict] = None, max_bytes_per_shard: Optional[int] = None,
                 done_shards: Optional[list[dict]] = None, on_shard: Optional[Callable[[dict], None]] = None):
        if max_samples_per_shard < 1:
            raise ValueError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict[str, Any]] = [dict(e) for e in done_shards or []]  # finished: {"name", "samples"}
        self._refuse_existing(pattern)
        self.max_samples_per_shard = max_samples_per_shard
        self.max_bytes_per_shard = max_bytes_per_shard
        self.pattern = pattern
        self.info = dict(info or {})
        self.on_shard = on_shard
        self._keys: set[str] = set()
        self._file = self._tar = self._partial = None
        self._count = self._bytes = 0

    def _refuse_existing(self, pattern: str) -> None:
        # Shard numbers restart at len(done_shards): writing over existing shards would silently
        # replace them.
        first = self.out_dir / (pattern % len(self.shards))
        if first.exists() or (self.out_dir / INDEX_NAME).exists():
            raise FileExistsError(f"{self.out_dir} already holds shards; write into an empty folder")

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: str, latent: Optional[torch.Tensor], caption: str, meta: dict,
              text: Optional[dict] = None, video_bytes: Optional[bytes] = None) -> None:
        """Validate and append one sample; opens the next shard when the current one is full."""
        if key in self._keys:
            raise ValueError(f"sample {key!r}: duplicate key (keys must be unique across the dataset)")
        sample = encode_sample(key, latent, caption, meta, text, video_bytes)
        size = sum(len(v) for k, v in sample.items() if k != "__key__")
        if self._tar is None or self._full(size):
            self._finish_shard()
            self._open_shard()
        self._tar.write(sample)
        self._keys.add(key)
        self._count += 1
        self._bytes += size

    def _full(self, next_bytes: int) -> bool:
        if self._count >= self.max_samples_per_shard:
            return True
        return self.max_bytes_per_shard is not None and self._bytes + next_bytes > self.max_bytes_per_shard

    @property
    def total_samples(self) -> int:
        return len(self._keys)

    def close(self) -> Path:
        """Finish the open shard and write index.json; returns the index path."""
        self._finish_shard()
        index = {"format": INDEX_FORMAT, "shards": self.shards,
                 "total_samples": sum(s["samples"] for s in self.shards), "info": self.info}
        path = self.out_dir / INDEX_NAME
        _atomic_write_bytes(path, json.dumps(index, indent=1, sort_keys=True).encode())
        return path

    def abort(self) -> None:
        """Drop the unfinished shard; finished shards stay, index.json is not written."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._partial.unlink(missing_ok=True)
        self._file = self._tar = self._partial = None

    def _open_shard(self) -> None:
        name = self.pattern % len(self.shards)
        self._partial = self.out_dir / f".{name}.partial"
        self._file = open(self._partial, "wb")
        # mtime fixed so identical samples give byte-identical shards.
        self._tar = webdataset.TarWriter(self._file, encoder=False, mtime=0.0)
        self._count = self._bytes = 0

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()  # does not close a file object it was handed
        self._file.flush()
        os.fsync(self._file.fileno())  # the rename must not become visible before the bytes
        self._file.close()
        name = self.pattern % len(self.shards)
        os.replace(self._partial, self.out_dir / name)
        self.shards.append({"name": name, "samples": self._count})
        self._file = self._tar = self._partial = None
        if self.on_shard is not None:
            self.on_shard(dict(self.shards[-1]))


def encode_sample(key: str, latent: Optional[torch.Tensor], caption: str, meta: dict,
                  text: Optional[dict] = None, video_bytes: Optional[bytes] = None) -> dict[str, Any]:
    """Check one sample against the schema and turn it into the {part: bytes} dict a tar takes."""
    _check_key(key)
    if latent is None and video_bytes is None:
        raise ValueError(f"sample {key!r}: needs a latent, the clip's video bytes, or both")
    if latent is not None:
        _check_latent(key, latent)
    if not isinstance(caption, str):
        raise TypeError(f"sample {key!r}: caption must be a str, got {type(caption).__name__}")
    sample = {"__key__": key, "txt": caption.encode("utf-8"), "json": _meta_bytes(key, latent, meta)}
    if latent is not None:
        sample["latent.pth"] = _tensor_bytes(latent)
    if text is not None:
        _check_text(key, text)
        sample["text.pth"] = _tensor_bytes({k: text[k] for k in ("emb", "mask")})
    if video_bytes is not None:
        if not isinstance(video_bytes, (bytes, bytearray)):
            raise TypeError(f"sample {key!r}: video_bytes must be bytes, got {type(video_bytes).__name__}")
        sample["mp4"] = bytes(video_bytes)
    return sample


def _check_key(key: Any) -> None:
    # WebDataset splits member names at the first "." of the basename into key and part, and skips
    # "__...__" names as tar metadata.
    if not isinstance(key, str) or not key or "." in key or key.startswith("_") or key != key.strip():
        raise ValueError(f"sample key {key!r}: must be a non-empty str without '.', leading '_' or spaces")


def _check_latent(key: str, latent: Any) -> None:
    if not isinstance(latent, torch.Tensor):
        raise TypeError(f"sample {key!r}: latent must be a torch.Tensor, got {type(latent).__name__}")
    if latent.ndim != 4 or latent.dtype not in LATENT_DTYPES:
        raise ValueError(f"sample {key!r}: latent must be [C, T', H', W'] float32/bfloat16/float16, "
                         f"got {latent.dtype} {tuple(latent.shape)}")


def _check_text(key: str, text: Any) -> None:
    emb, mask = (text.get("emb"), text.get("mask")) if isinstance(text, dict) else (None, None)
    if not (isinstance(emb, torch.Tensor) and isinstance(mask, torch.Tensor)):
        raise TypeError(f"sample {key!r}: text must be a dict with tensors 'emb' [L, D] and 'mask' [L]")
    if emb.ndim != 2 or mask.shape != emb.shape[:1]:
        raise ValueError(f"sample {key!r}: text emb must be [L, D] and mask [L], "
                         f"got {tuple(emb.shape)} and {tuple(mask.shape)}")


def _meta_bytes(key: str, latent: Optional[torch.Tensor], meta: Any) -> bytes:
    if not isinstance(meta, dict):
        raise TypeError(f"sample {key!r}: meta must be a dict, got {type(meta).__name__}")
    required = REQUIRED_META + (LATENT_META if latent is not None else ())
    missing = [name for name in required if name not in meta]
    if missing:
        raise ValueError(f"sample {key!r}: meta lacks {missing} (required: {list(required)})")
    full = {"source_id": key, **meta}
    if latent is not None:
        if not isinstance(meta["video_encoder"], dict):
            raise TypeError(f"sample {key!r}: meta['video_encoder'] must be the encoder's signature dict")
        shape = list(latent.shape)
        if meta.get("latent_shape", shape) != shape:
            raise ValueError(f"sample {key!r}: meta latent_shape {meta['latent_shape']} != latent {shape}")
        full["latent_shape"] = shape
    try:
        return json.dumps(full, sort_keys=True).encode("utf-8")
    except TypeError as exc:
        raise TypeError(f"sample {key!r}: meta is not JSON-serialisable: {exc}") from exc


def _tensor_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    if isinstance(obj, dict):
        obj = {k: _own_storage(v) for k, v in obj.items()}
    else:
        obj = _own_storage(obj)
    torch.save(obj, buffer)
    return buffer.getvalue()


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    # torch.save writes a view's whole storage, e.g. the full batch a latent was sliced from.
    tensor = tensor.detach().cpu()
    if tensor.is_contiguous() and tensor.storage_offset() == 0 and \
            tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# ---- reading ----------------------------------------------------------------------------------


class BadSample(ValueError):
    """A sample, or the rest of a shard, that cannot be used; names both for the bad-sample policy."""

    REASONS = ("unreadable_shard", "missing_part", "bad_metadata", "undecodable")

    def __init__(self, shard: str, key: Optional[str] = None, reason: Optional[str] = None, detail: str = ""):
        if reason is None:  # rebuilt from its message alone (DataLoader re-raising a worker's error)
            self.shard, self.key, self.reason = None, None, None
            super().__init__(shard)
            return
        assert reason in self.REASONS, reason
        self.shard, self.key, self.reason = shard, key, reason
        where = f"sample {key!r}" if key is not None else "before the first sample"
        super().__init__(f"{shard}: {where}: {reason.replace('_', ' ')}" + (f" ({detail})" if detail else ""))


@dataclass
class RawSample:
    """One sample as read from a shard: metadata parsed, tensors still bytes (decoded on demand)."""

    key: str
    shard: str
    caption: str
    meta: dict
    latent_bytes: Optional[bytes] = None
    text_bytes: Optional[bytes] = None
    video_bytes: Optional[bytes] = None
    ref: tuple[int, int] = (-1, -1)  # (unit, index in its shard): where the loader can read it again
    epoch: int = 0  # the epoch of its source this read belongs to
    source: str = ""

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["latent_shape"])

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of the pixel clip: the sample's bucket key."""
        return int(self.meta["frames"]), int(self.meta["height"]), int(self.meta["width"])

    @property
    def has_latent(self) -> bool:
        return self.latent_bytes is not None


def iter_groups(fileobj, shard: str, skip: int = 0) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(index, key, {part: bytes}) of each sample of a tar stream, in stored order.

    The first `skip` samples are passed over without reading their data. A truncated or corrupt
    tar raises BadSample naming the sample being read; the samples before it were whole.
    """
    key, index, parts = None, -1, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, _, part = os.path.basename(member.name).partition(".")
                member_key = os.path.join(os.path.dirname(member.name), member_key)
                if member_key != key:
                    if key is not None and index >= skip:
                        yield index, key, parts
                    key, index, parts = member_key, index + 1, {}
                if index >= skip:
                    parts[part] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib_error) as exc:
        raise BadSample(shard, key, "unreadable_shard", f"truncated or corrupt: {exc!r}") from exc
    if key is not None and index >= skip:
        yield index, key, parts


def iter_shard(path: PathLike) -> Iterator[RawSample]:
    """Samples of one local shard in stored order; any defect raises BadSample."""
    with open(path, "rb") as handle:
        for _, key, parts in iter_groups(handle, str(path)):
            yield raw_sample(str(path), key, parts)


def raw_sample(shard: str, key: str, parts: dict[str, bytes]) -> RawSample:
    missing = [p for p in _REQUIRED_PARTS if p not in parts]
    if not any(p in parts for p in _CLIP_PARTS):
        missing.append(" or ".join(_CLIP_PARTS))
    if missing:
        raise BadSample(shard, key, "missing_part", f"lacks {missing}")
    try:
        meta = json.loads(parts["json"])
        caption = parts["txt"].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadSample(shard, key, "bad_metadata", f"unreadable json or caption: {exc!r}") from exc
    needed = REQUIRED_META + (("latent_shape",) if "latent.pth" in parts else ())
    if not isinstance(meta, dict) or any(name not in meta for name in needed):
        raise BadSample(shard, key, "bad_metadata", f"json lacks one of {list(needed)}")
    return RawSample(key=key, shard=shard, caption=caption, meta=meta, latent_bytes=parts.get("latent.pth"),
                     text_bytes=parts.get("text.pth"), video_bytes=parts.get("mp4"))


def decode_latent(data: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True).float()


def decode_text(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ---- finding shards ---------------------------------------------------------------------------


def expand_shards(spec: str, must_exist: bool = True) -> list[str]:
    """Sorted shard paths named by a path, glob or brace range (`shard-{000000..000007}.tar`).

    Nothing matching is an error naming the spec, or [] with must_exist=False. A brace range
    naming some files that exist and some that do not is always an error: a silently smaller
    dataset is worse than a clear message.
    """
    found, missing = set(), []
    for pattern in braceexpand.braceexpand(str(spec)):
        if glob.has_magic(pattern):
            found.update(glob.glob(pattern))
        elif os.path.isfile(pattern):
            found.add(pattern)
        else:
            missing.append(pattern)
    if found and missing:
        raise FileNotFoundError(f"shard spec {spec!r}: {len(missing)} listed shards do not exist, "
                                f"e.g. {missing[:3]}")
    if not found and must_exist:
        raise FileNotFoundError(f"no shard matches data.shards={spec!r} (relative to {os.getcwd()}); "
                                "generate the dataset or fix the spec")
    return sorted(found)


def read_index(shards: list[str]) -> Optional[dict[str, int]]:
    """{shard path: samples} from the index.json files beside the shards; None if any is unlisted."""
    counts: dict[str, int] = {}
    for folder in sorted({os.path.dirname(s) for s in shards}):
        path = os.path.join(folder, INDEX_NAME)
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            for entry in json.load(handle).get("shards", []):
                counts[os.path.join(folder, entry["name"])] = int(entry["samples"])
    if any(s not in counts for s in shards):
        return None
    return {s: counts[s] for s in shards}
