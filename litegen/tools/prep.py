"""`python -m litegen.tools.prep`: video files + captions -> WebDataset shards for training.

Each input is decoded with PyAV, resampled to --fps, fitted to the nearest bucket (closest
aspect ratio, resized to cover, centre-cropped, first frames) and written either as a raw clip
(H.264 mp4, encoded online by the trainer) or, with --encode, as latents and caption embeddings
from the configured frozen encoders (plus the clip with --keep-video). Inputs are processed in
worker processes; shards are written in input order, so the output does not depend on --workers.

Interrupted runs resume: after each finished shard `.prep-progress.json` records the shards and
the next input, and a rerun of the same command continues there (shards already complete are
kept, a half-written one is redone). Inputs that cannot be used are listed with the reason in
`prep-report.json`: unreadable file, too short for every bucket, or no caption.

    python -m litegen.tools.prep --input videos/ --out data/mine --fps 8 \\
        --buckets 17x256x256,33x256x448 [--encode encoders/video=diffusers_vae ...]
"""

import argparse
import csv
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import av
import numpy as np
import torch

from litegen.config.errors import DataValueError, UserError, user_message
from litegen.data.buckets import Shape, nearest_bucket
from litegen.data.decode import fit_clip, to_unit_range
from litegen.data.shards import INDEX_NAME, ShardWriter
from litegen.data.video_io import encode_mp4_bytes
from litegen.encoders.base import DTYPES
from litegen.train.console import Progress

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
PROGRESS = ".prep-progress.json"
REPORT = "prep-report.json"


@dataclasses.dataclass(frozen=True)
class Item:
    index: int
    path: str
    caption: Optional[str]


@dataclasses.dataclass(frozen=True)
class Options:
    fps: float
    buckets: tuple[Shape, ...]
    encode: bool = False
    keep_video: bool = False
    latent_dtype: str = "fp16"
    overrides: tuple[str, ...] = ()  # Hydra overrides choosing the encoders (with --encode)

    def __post_init__(self):
        # Normalised, so the same run from the CLI or the API has the same digest (and resumes).
        object.__setattr__(self, "fps", float(self.fps))
        object.__setattr__(self, "buckets", tuple(tuple(int(n) for n in b) for b in self.buckets))
        object.__setattr__(self, "overrides", tuple(self.overrides))


# ---- inputs -----------------------------------------------------------------------------------


def list_inputs(source: Path) -> list[Item]:
    """A folder (captions in sidecar <name>.txt files) or a CSV / JSONL list with path + caption."""
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        return [Item(i, str(p), _sidecar_caption(p)) for i, p in enumerate(paths)]
    rows = _read_rows(source)
    items = []
    for i, row in enumerate(rows):
        path = row.get("path") or row.get("video") or ""
        caption = row.get("caption", row.get("text"))
        items.append(Item(i, str((source.parent / path) if path and not os.path.isabs(path) else path), caption))
    return items


def _sidecar_caption(path: Path) -> Optional[str]:
    text = path.with_suffix(".txt")
    return text.read_text(encoding="utf-8") if text.is_file() else None


def _read_rows(source: Path) -> list[dict]:
    if not source.is_file():
        raise DataValueError(f"--input {source}: no such folder or file")
    if source.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    raise DataValueError(f"--input {source}: expected a folder, a .csv or a .jsonl file")


# ---- one input --------------------------------------------------------------------------------


def decode_resampled(path: str, fps: float, max_frames: int) -> np.ndarray:
    """Frames at `fps` (the frame showing at each time k / fps), at most max_frames, uint8 [T, H, W, 3]."""
    picked: list[np.ndarray] = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        start, held, duration = None, None, 0.0
        for frame in container.decode(stream):
            time = float(frame.time if frame.time is not None else len(picked) / fps)
            start = time if start is None else start
            # Every target time before this frame's shows the frame held so far.
            while held is not None and len(picked) < max_frames and start + len(picked) / fps < time:
                picked.append(held)
            if len(picked) >= max_frames:
                break
            held = frame.to_ndarray(format="rgb24")
            rate = float(stream.average_rate or stream.guessed_rate or fps)
            duration = time - start + 1.0 / rate
        while held is not None and len(picked) < max_frames and len(picked) / fps < duration - 1e-9:
            picked.append(held)
    if not picked:
        raise ValueError("no video frames decoded")
    return np.stack(picked)


def prepare(item: Item, options: Options) -> dict[str, Any]:
    """The sample for one input, or {"skip": reason}. Runs in a worker process."""
    if not item.caption or not item.caption.strip():
        return {"index": item.index, "skip": "no caption"}
    try:
        frames = decode_resampled(item.path, options.fps, max(b[0] for b in options.buckets))
    except Exception as exc:  # PyAV raises many error types for broken or non-video files
        return {"index": item.index, "skip": f"unreadable: {type(exc).__name__}: {exc}"[:300]}
    bucket = nearest_bucket(frames.shape[:3], options.buckets)
    if bucket is None:
        shortest = min(b[0] for b in options.buckets)
        return {"index": item.index, "skip": f"too short: {frames.shape[0]} frames at {options.fps:g} fps, "
                                              f"the shortest bucket needs {shortest}"}
    clip = fit_clip(frames, bucket)
    meta = {"frames": bucket[0], "height": bucket[1], "width": bucket[2], "fps": options.fps,
            "source_id": item.path, "source_size": list(frames.shape[1:3])}
    sample = {"index": item.index, "key": sample_key(item), "caption": item.caption.strip(), "meta": meta}
    if options.encode:
        sample.update(_encoded(clip, sample["caption"], options))
        meta.update(video_encoder=_WORKER["video"].signature(), text_encoder=_WORKER["text"].signature())
    if not options.encode or options.keep_video:
        sample["video_bytes"] = encode_mp4_bytes(clip, options.fps)
    return sample


def sample_key(item: Item) -> str:
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", Path(item.path).stem).strip("-") or "clip"
    return f"{item.index:07d}-{stem}"[:120]


_WORKER: dict[str, Any] = {}  # the frozen encoders of this worker process (with --encode)


def init_worker(options: Options) -> None:
    torch.set_num_threads(1)  # one per process: the workers are the parallelism
    if options.encode:
        from litegen.config import compose
        from litegen.encoders import build_text_encoder, build_video_encoder

        cfg = compose(list(options.overrides))
        _WORKER["video"] = build_video_encoder(cfg.encoders.video)
        _WORKER["text"] = build_text_encoder(cfg.encoders.text)


@torch.no_grad()
def _encoded(clip: np.ndarray, caption: str, options: Options) -> dict[str, Any]:
    latent = _WORKER["video"].encode(to_unit_range(clip)[None])[0].to(DTYPES[options.latent_dtype])
    emb, mask = _WORKER["text"].encode([caption])
    return {"latent": latent, "text": {"emb": emb[0].to(DTYPES[options.latent_dtype]), "mask": mask[0]}}


def _prepare_star(args: tuple[Item, Options]) -> dict[str, Any]:
    return prepare(*args)


# ---- the run ----------------------------------------------------------------------------------


def options_digest(items: list[Item], options: Options) -> str:
    listing = json.dumps([dataclasses.asdict(i) for i in items] + [dataclasses.asdict(options)], sort_keys=True)
    return hashlib.sha1(listing.encode()).hexdigest()[:16]


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _resume_point(out: Path, digest: str) -> dict:
    """What an interrupted run finished: its shards, next input and skips (nothing for a fresh run)."""
    progress = out / PROGRESS
    state = {"digest": digest, "shards": [], "next_input": 0, "skipped": []}
    if progress.is_file():
        saved = json.loads(progress.read_text())
        if saved["digest"] != digest:
            raise SystemExit(f"error: {out} holds an interrupted prep run with other inputs or options; "
                             "rerun it with the same arguments, or use an empty --out folder")
        state = saved
    elif any(out.glob("shard-*.tar")):
        raise SystemExit(f"error: {out} already holds shards but no {PROGRESS}; use an empty --out folder")
    (out / INDEX_NAME).unlink(missing_ok=True)  # stopped between the last shard and the report
    listed = {s["name"] for s in state["shards"]}
    for path in list(out.glob("shard-*.tar")) + list(out.glob(".shard-*.partial")):
        if path.name not in listed:
            path.unlink()  # written after the last recorded shard: it is redone, never duplicated
    return state


def run_prep(items: list[Item], out: Path, options: Options, workers: int = 0, shard_size_mb: float = 256.0,
             max_samples_per_shard: int = 10_000, on_shard=None) -> dict:
    """Write the shards; returns the report. on_shard(entry) is called after each finished shard."""
    out.mkdir(parents=True, exist_ok=True)
    digest = options_digest(items, options)
    if (out / INDEX_NAME).is_file() and (out / REPORT).is_file():
        report = json.loads((out / REPORT).read_text())
        if report.get("digest") == digest:
            return report  # already complete
    state = _resume_point(out, digest)
    skipped = list(state["skipped"])
    last_index = [state["next_input"] - 1]

    def shard_done(entry: dict) -> None:
        done = {"digest": digest, "shards": writer.shards, "next_input": last_index[0] + 1,
                "skipped": [s for s in skipped if s["index"] <= last_index[0]]}
        _write_json(out / PROGRESS, done)
        if on_shard is not None:
            on_shard(entry)

    info = {"producer": "litegen.tools.prep", "options": dataclasses.asdict(options), "digest": digest}
    writer = ShardWriter(out, max_samples_per_shard, info=info, max_bytes_per_shard=int(shard_size_mb * 2**20),
                         done_shards=state["shards"], on_shard=shard_done)
    todo = items[state["next_input"]:]
    with writer, Progress(len(items), "prep", "clips", initial=state["next_input"], stream=sys.stderr,
                          plain_steps=10) as bar:
        for result in _results(todo, options, workers):
            if "skip" in result:
                skipped.append({"index": result["index"], "input": items[result["index"]].path,
                                "reason": result["skip"]})
            else:
                writer.write(result["key"], result.get("latent"), result["caption"], result["meta"],
                             text=result.get("text"), video_bytes=result.get("video_bytes"))
                last_index[0] = result["index"]
            bar.update(1)
    report = {"digest": digest, "inputs": len(items), "samples": sum(s["samples"] for s in writer.shards),
              "shards": len(writer.shards), "skipped": skipped}
    _write_json(out / REPORT, report)
    (out / PROGRESS).unlink(missing_ok=True)
    return report


def _results(items: list[Item], options: Options, workers: int) -> Iterator[dict]:
    if workers <= 0:
        init_worker(options)
        yield from (prepare(item, options) for item in items)
        return
    # spawn: workers must not inherit a parent's torch/CUDA state; imap keeps input order.
    with mp.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(options,)) as pool:
        yield from pool.imap(_prepare_star, [(item, options) for item in items], chunksize=1)


def parse_buckets(text: str) -> tuple[Shape, ...]:
    try:
        return tuple(tuple(int(n) for n in b.lower().split("x")) for b in text.split(",") if b.strip())
    except ValueError:
        raise SystemExit(f"error: --buckets {text!r}: expected FRAMESxHEIGHTxWIDTH[,...], e.g. 17x256x256") from None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litegen.tools.prep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="folder of videos (+ .txt captions), or .csv/.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="folder for the shards")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate clips are resampled to")
    parser.add_argument("--buckets", default="", help="FxHxW,... (default: data.buckets of the config)")
    parser.add_argument("--encode", action="store_true", help="store latents + caption embeddings")
    parser.add_argument("--keep-video", action="store_true", help="with --encode: store the clip too")
    parser.add_argument("--latent-dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--shard-size-mb", type=float, default=256.0)
    parser.add_argument("--max-samples-per-shard", type=int, default=10_000)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. encoders/video=diffusers_vae ...")
    args = parser.parse_args(argv)
    buckets = parse_buckets(args.buckets) if args.buckets else _config_buckets(args.overrides)
    options = Options(fps=args.fps, buckets=buckets, encode=args.encode, keep_video=args.keep_video,
                      latent_dtype=args.latent_dtype, overrides=tuple(args.overrides))
    report = run_prep(list_inputs(args.input), args.out, options, args.workers, args.shard_size_mb,
                      args.max_samples_per_shard)
    print(f"{report['samples']} samples in {report['shards']} shards under {args.out}; "
          f"{len(report['skipped'])} inputs skipped (see {args.out / REPORT})")
    for entry in report["skipped"]:
        print(f"  skipped {entry['input']}: {entry['reason']}")
    return 0


def _config_buckets(overrides: list[str]) -> tuple[Shape, ...]:
    from litegen.config import compose

    buckets = compose(list(overrides)).data.buckets
    if not buckets:
        raise SystemExit("error: no buckets: pass --buckets FxHxW,... or a data config with data.buckets")
    return tuple(tuple(int(n) for n in shape) for shape in buckets.values())


def cli(argv: Optional[list[str]] = None) -> int:
    """main() with user mistakes (a bad --input, a config override) as one line and exit code 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
