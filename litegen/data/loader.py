"""Streaming, shape-bucketed, exactly resumable batches of latents for one data-parallel rank.

Each rank runs `max(1, num_workers)` readers (DataLoader workers, or the main process). A reader's
batches come from a pipeline of separable stages:
    epoch shard order -> the reader's share -> sample iteration -> shuffle -> buckets -> decode
Everything before decode is a pure function of (seed, epoch, dp rank, reader) and sample metadata,
so a resumed loader replays it without decoding tensors and skips the batches already delivered.
"""

import copy
import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from litegen.config.schema import DataConfig
from litegen.data.buckets import bucket_stream, shuffle_stream
from litegen.data.shards import RawSample, decode_latent, decode_text, expand_shards, iter_shard, read_index

__all__ = ["LoaderPlan", "ShardLoader", "build_loader", "expand_shards"]
log = logging.getLogger(__name__)
STATE_VERSION = 1
# A resumed loader must see the same stream; these fields define it (besides the cursor itself).
_STREAM_FIELDS = ("seed", "dp_rank", "dp_size", "num_readers", "batch_size", "shuffle_buffer", "shards_digest")


@dataclass(frozen=True)
class LoaderPlan:
    """Everything that determines one rank's batch stream (picklable: it travels to workers)."""

    shards: tuple[str, ...]
    seed: int
    dp_rank: int
    dp_size: int
    num_readers: int
    batch_size: int
    shuffle_buffer: int
    expected_signature: Optional[dict] = None

    def shards_digest(self) -> str:
        # Basenames only, so the same dataset reached through another path still resumes.
        names = "\n".join(os.path.basename(s) for s in self.shards)
        return hashlib.sha1(names.encode()).hexdigest()[:16]


# ---- stages -----------------------------------------------------------------------------------


def epoch_shard_order(shards: tuple[str, ...], seed: int, epoch: int) -> list[str]:
    """The epoch's shard permutation, identical on every rank (ranks then take disjoint parts)."""
    rng = np.random.default_rng([seed, epoch])
    return [shards[i] for i in rng.permutation(len(shards))]


def take_part(shards: list[str], filters: list[tuple[int, int]], part: int,
              parts: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Give part `part` of `parts` whole shards, or every parts-th sample when shards are too few.

    Returns (shards, sample filters as (offset, stride)). Splitting samples costs each reader a
    full read of the shards, but keeps small datasets usable on many ranks and workers.
    """
    if parts == 1:
        return shards, filters
    if len(shards) >= parts:
        return shards[part::parts], filters
    return shards, filters + [(part, parts)]


def reader_share(plan: LoaderPlan, reader: int, epoch: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Split by data-parallel rank first (never the global rank: SP peers share data), then by reader."""
    ordered = epoch_shard_order(plan.shards, plan.seed, epoch)
    shards, filters = take_part(ordered, [], plan.dp_rank, plan.dp_size)
    return take_part(shards, filters, reader, plan.num_readers)


def reader_samples(plan: LoaderPlan, reader: int, epoch: int) -> Iterator[RawSample]:
    shards, filters = reader_share(plan, reader, epoch)
    samples: Iterator[RawSample] = itertools.chain.from_iterable(iter_shard(s) for s in shards)
    for offset, stride in filters:
        samples = itertools.islice(samples, offset, None, stride)
    if plan.expected_signature is not None:
        samples = (check_signature(s, plan.expected_signature) for s in samples)
    return samples


def reader_raw_batches(plan: LoaderPlan, reader: int, epoch: int) -> Iterator[list[RawSample]]:
    """One epoch of one reader's batches, still undecoded."""
    rng = np.random.default_rng([plan.seed, epoch, plan.dp_rank, reader])
    samples = shuffle_stream(reader_samples(plan, reader, epoch), plan.shuffle_buffer, rng)
    return bucket_stream(samples, plan.batch_size, key=lambda s: s.latent_shape)


def check_signature(sample: RawSample, expected: dict) -> RawSample:
    found = sample.meta.get("video_encoder")
    if found != expected:
        raise ValueError(
            f"{sample.shard}: sample {sample.key!r} was encoded with video_encoder={found}, but this run "
            f"expects {expected}. Regenerate the dataset with the configured encoder (delete it or point "
            "data.shards elsewhere) or change encoders.video to match the shards.")
    return sample


def decode_batch(raw: list[RawSample]) -> dict[str, Any]:
    """Stack one bucket into a batch; the only stage that touches tensor bytes."""
    latents = [decode_latent(s.latent_bytes) for s in raw]
    for sample, latent in zip(raw, latents):
        if tuple(latent.shape) != sample.latent_shape:
            raise ValueError(f"{sample.shard}: sample {sample.key!r} latent is {tuple(latent.shape)} but its "
                             f"json says {list(sample.latent_shape)}; the shard is inconsistent, rewrite it")
    batch = {"latents": torch.stack(latents), "captions": [s.caption for s in raw],
             "keys": [s.key for s in raw], "meta": [s.meta for s in raw]}
    batch.update(_text_batch(raw))
    return batch


def _text_batch(raw: list[RawSample]) -> dict[str, torch.Tensor]:
    with_text = [s for s in raw if s.text_bytes is not None]
    if not with_text:
        return {}
    if len(with_text) != len(raw):
        bare = next(s for s in raw if s.text_bytes is None)
        raise ValueError(f"{bare.shard}: sample {bare.key!r} has no text.pth but others in its batch do; "
                         "a dataset must carry text embeddings for all samples or none")
    texts = [decode_text(s.text_bytes) for s in raw]
    return {"text_emb": torch.stack([t["emb"].float() for t in texts]),
            "text_mask": torch.stack([t["mask"] for t in texts])}


def reader_stream(plan: LoaderPlan, reader: int, epoch: int, skip_batches: int) -> Iterator[tuple[int, int, dict]]:
    """(epoch, index in epoch, batch) forever, starting after skip_batches batches of `epoch`."""
    while True:
        count = 0
        for index, raw in enumerate(reader_raw_batches(plan, reader, epoch)):
            count += 1
            if index >= skip_batches:
                yield epoch, index, decode_batch(raw)
        _check_epoch(plan, reader, epoch, count, skip_batches)
        log.info("data: dp rank %d reader %d finished epoch %d (%d batches)", plan.dp_rank, reader, epoch, count)
        epoch, skip_batches = epoch + 1, 0


def _check_epoch(plan: LoaderPlan, reader: int, epoch: int, count: int, skip_batches: int) -> None:
    # Without this a reader with no full bucket would loop over empty epochs forever: a silent hang.
    if count == 0:
        raise RuntimeError(
            f"data: dp rank {plan.dp_rank} reader {reader} got no full batch in epoch {epoch}: its share of "
            f"{len(plan.shards)} shards holds fewer than batch_size={plan.batch_size} samples of any one "
            "latent shape. Use more samples, a smaller batch_size or fewer num_workers.")
    if skip_batches > count:
        raise RuntimeError(
            f"data: resume state says dp rank {plan.dp_rank} reader {reader} had delivered {skip_batches} "
            f"batches of epoch {epoch}, but that epoch only has {count}; did the shards change?")


# ---- the loader -------------------------------------------------------------------------------


class _ReaderDataset(IterableDataset):
    """Runs one reader per DataLoader worker; tags each batch so the main process can count it."""

    def __init__(self, plan: LoaderPlan, readers: list[dict], rotation: int):
        self.plan, self.readers, self.rotation = plan, readers, rotation

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        # DataLoader always asks worker 0 first; rotating the worker->reader map continues the
        # round robin where the previous run stopped.
        reader = ((info.id if info else 0) + self.rotation) % self.plan.num_readers
        cursor = self.readers[reader]
        for epoch, index, batch in reader_stream(self.plan, reader, cursor["epoch"], cursor["batches"]):
            batch["_tag"] = (reader, epoch, index)
            yield batch


class ShardLoader:
    """Endless iterable of batches for one data-parallel rank; state_dict() is the cursor.

    Batches: {"latents": float32 [B, C, T', H', W'], "captions": [str], "keys": [str],
    "meta": [dict]} plus "text_emb" [B, L, D] / "text_mask" [B, L] when samples carry text.pth.
    Each `iter()` continues after the last batch delivered to the consumer.
    """

    def __init__(self, plan: LoaderPlan, num_workers: int, num_samples: Optional[int] = None):
        self.plan = plan
        self.num_workers = num_workers
        self.num_samples = num_samples  # whole dataset, from index.json; None when unknown
        self._readers = [{"epoch": 0, "batches": 0} for _ in range(plan.num_readers)]
        self._next_reader = 0

    @property
    def epoch(self) -> int:
        """The epoch every reader has reached (readers drift apart when shards split unevenly)."""
        return min(r["epoch"] for r in self._readers)

    def __iter__(self) -> Iterator[dict]:
        dataset = _ReaderDataset(self.plan, copy.deepcopy(self._readers), self._next_reader)
        source = iter(dataset) if self.num_workers == 0 else iter(self._dataloader(dataset))
        try:
            for batch in source:
                reader, epoch, index = batch.pop("_tag")
                # Counted on delivery, not production: workers prefetch batches the consumer never saw.
                self._readers[reader] = {"epoch": epoch, "batches": index + 1}
                self._next_reader = (reader + 1) % self.plan.num_readers
                yield batch
        finally:
            # A worker error's traceback keeps the DataLoader iterator alive until a gc pass, whose
            # teardown order makes its shutdown wait out a 5 s join timeout per worker: stop them now.
            shutdown = getattr(source, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _dataloader(self, dataset: _ReaderDataset) -> DataLoader:
        # in_order keeps strict worker round robin, which the resume cursor relies on.
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, in_order=True)

    def state_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {"version": STATE_VERSION, "seed": plan.seed, "dp_rank": plan.dp_rank, "dp_size": plan.dp_size,
                "num_readers": plan.num_readers, "batch_size": plan.batch_size,
                "shuffle_buffer": plan.shuffle_buffer, "shards_digest": plan.shards_digest(),
                "next_reader": self._next_reader, "readers": copy.deepcopy(self._readers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')} != {STATE_VERSION}")
        mine = self.state_dict()
        changed = [f"{k}: saved {state.get(k)!r}, now {mine[k]!r}"
                   for k in _STREAM_FIELDS if state.get(k) != mine[k]]
        if changed:
            raise ValueError("data loader state is from a different stream (resuming across world sizes, "
                             "worker counts or datasets is not supported yet): " + "; ".join(changed))
        self._readers = copy.deepcopy(state["readers"])
        self._next_reader = int(state["next_reader"])


def build_loader(cfg: DataConfig, dp_rank: int, dp_size: int,
                 expected_signature: Optional[dict] = None) -> ShardLoader:
    """The loader of data-parallel rank dp_rank of dp_size over the shards named by cfg.shards."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank must be in [0, dp_size={dp_size}), got {dp_rank}")
    shards = expand_shards(cfg.shards)
    if expected_signature is not None:
        # Compare as the json stores it: tuples become lists, keys become strings.
        expected_signature = json.loads(json.dumps(expected_signature))
    plan = LoaderPlan(shards=tuple(shards), seed=cfg.seed, dp_rank=dp_rank, dp_size=dp_size,
                      num_readers=max(1, cfg.num_workers), batch_size=cfg.batch_size,
                      shuffle_buffer=cfg.shuffle_buffer, expected_signature=expected_signature)
    counts = read_index(shards)
    return ShardLoader(plan, cfg.num_workers, sum(counts.values()) if counts is not None else None)
