"""One reader: walks its share of the unit sequence and turns samples into batches or packs.

    units (queue, then every stride-th unit) -> samples -> shuffle buffer -> pool -> batch/pack -> decode

The reader's whole position is a small JSON-able dict (`state`): the work queue with the offset
into the unit being read, its progression through the unit sequence, the buffered samples as
references (unit, index), the rng, and the index of its next batch. Buffered samples are read
again from their shards on restore, so a checkpoint holds references, not tensors. Each batch
leaves the reader together with the state right after it, which is what makes a resume exact.
"""

import copy
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from litegen.data.buckets import ShuffleBuffer, TokenGeometry, nearest_bucket
from litegen.data.decode import assemble, decode_caption_embedding, decode_clip
from litegen.data.packing import choose_pack, ready_bucket
from litegen.data.schedule import Schedule, Stage
from litegen.data.shards import BadSample, RawSample, raw_sample
from litegen.data.sources import UnitSequence, open_groups

log = logging.getLogger(__name__)
SKIP_LOG_MAX = 1000  # skip records kept in the state (counts are always complete)


@dataclass(frozen=True)
class ReaderPlan:
    """Everything that shapes a reader's stream (picklable: it travels to DataLoader workers)."""

    units: UnitSequence
    schedule: Schedule
    geometry: TokenGeometry
    seed: int
    shuffle_buffer: int
    pack_lookahead: float
    micro_batches_per_step: int
    bad_sample: str  # skip | raise
    expected_signature: Optional[dict] = None
    pack_fill: float = 1.0  # packs hold up to this fraction of the token budget (room to rebalance)

    @property
    def total_shards(self) -> int:
        return sum(len(s.shards) for s in self.units.sources)


def initial_state(plan: ReaderPlan, reader: int, readers: int, first_batch: int, batch_stride: int,
                  rng_key: tuple = ()) -> dict[str, Any]:
    """A reader starting at unit `reader` of every `readers`-th, delivering batches first_batch, +stride..."""
    rng = np.random.default_rng([plan.seed, 1, reader, readers, *rng_key])
    return {"queue": [], "next_unit": reader, "stride": readers, "shuffle": [], "pool": [],
            "rng": rng.bit_generator.state, "next_batch": first_batch, "batch_stride": batch_stride,
            "skips": {}, "skip_log": [], "filtered": 0}


@dataclass
class PoolEntry:
    sample: RawSample
    bucket: tuple[int, int, int]  # the pixel shape it will be batched as
    tokens: int


class Reader:
    def __init__(self, plan: ReaderPlan, state: dict[str, Any]):
        self.plan = plan
        self.state = copy.deepcopy(state)
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = self.state["rng"]
        self.shuffle: ShuffleBuffer[RawSample] = ShuffleBuffer(plan.shuffle_buffer)
        self.pool: list[PoolEntry] = []
        self.stage: Optional[Stage] = None
        self._idle_units = 0  # units read since a sample last reached the pool

    # ---- the stream -------------------------------------------------------------------------

    def batches(self) -> Iterator[tuple[dict, dict]]:
        """(batch, state after it) forever."""
        self._restore_buffers()
        reads = self._read()
        while True:
            stage = self.plan.schedule.stage_at(self.state["next_batch"] // self.plan.micro_batches_per_step)
            if stage != self.stage:
                self._enter(stage)
            group = self._take(stage)
            if group is None:
                for sample in self.shuffle.push(next(reads), self.rng):
                    self._admit(sample, stage)
                continue
            batch = self._decode(group, stage)
            if batch is None:
                continue  # every clip of the group was bad and skipped: build another
            self.state["next_batch"] += self.state["batch_stride"]
            yield batch, self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        state = copy.deepcopy(self.state)
        state["shuffle"] = [list(s.ref) for s in self.shuffle.items]
        state["pool"] = [list(e.sample.ref) for e in self.pool]
        state["rng"] = self.rng.bit_generator.state
        return state

    def _read(self) -> Iterator[RawSample]:
        """Samples of the queue's units, then of units next_unit, next_unit + stride, ..."""
        state = self.state
        while True:
            if not state["queue"]:
                state["queue"].append([state["next_unit"], 0])
                state["next_unit"] += state["stride"]
            u, offset = state["queue"][0]
            self._idle_units += 1
            self._check_progress()
            unit = self.plan.units.unit(u)
            try:
                for index, key, parts in open_groups(unit.shard, skip=offset):
                    state["queue"][0][1] = index + 1
                    sample = self._parse(unit, index, key, parts)
                    if sample is not None:
                        yield sample
            except BadSample as exc:  # the rest of this unit cannot be read
                self.bad(exc, unit.epoch)
            state["queue"].pop(0)

    def _parse(self, unit, index: int, key: str, parts: dict) -> Optional[RawSample]:
        try:
            sample = raw_sample(unit.shard, key, parts)
        except BadSample as exc:
            self.bad(exc, unit.epoch)
            return None
        sample.ref, sample.epoch = (unit.position, index), unit.epoch
        sample.source = self.plan.units.sources[unit.source].name
        self._check_signature(sample)
        return sample

    def _check_signature(self, sample: RawSample) -> None:
        # A wrong encoder is a configuration mistake, not a bad sample: always an error.
        expected = self.plan.expected_signature
        if expected is None or not sample.has_latent or sample.meta.get("video_encoder") == expected:
            return
        raise ValueError(
            f"{sample.shard}: sample {sample.key!r} was encoded with video_encoder="
            f"{sample.meta.get('video_encoder')}, but this run expects {expected}. Regenerate the dataset "
            "with the configured encoder (delete it or point data.shards elsewhere) or change "
            "encoders.video to match the shards.")

    def _check_progress(self) -> None:
        # Without this, a stage whose buckets match no sample (or data that is all bad) would
        # read forever without a batch: a silent hang instead of an error.
        if self._idle_units > self.plan.total_shards + 1:
            stage = self.stage.name if self.stage else "?"
            raise RuntimeError(
                f"data: {self._idle_units - 1} shards read without one usable sample for stage {stage!r} "
                f"(buckets {list(self.stage.shapes) if self.stage else []}); check data.buckets / the "
                f"stage's buckets against the shapes in the shards, and the skip warnings above")

    # ---- bad samples ------------------------------------------------------------------------

    def bad(self, exc: BadSample, epoch: int) -> None:
        """Apply the bad-sample policy: raise, or count, warn and go on."""
        if self.plan.bad_sample == "raise":
            raise exc
        skips = self.state["skips"]
        skips[exc.reason] = skips.get(exc.reason, 0) + 1
        record = {"shard": exc.shard, "key": exc.key, "reason": exc.reason, "epoch": epoch}
        self.state["skip_log"] = (self.state["skip_log"] + [record])[-SKIP_LOG_MAX:]
        log.warning("data: skipping bad sample: %s", exc)

    # ---- pool -------------------------------------------------------------------------------

    def _resolve(self, sample: RawSample, stage: Stage) -> Optional[PoolEntry]:
        """The sample's bucket and tokens under `stage`, or None when the stage does not use it."""
        shape = sample.pixel_shape
        if not stage.buckets:
            bucket = shape
        elif sample.has_latent:
            bucket = shape if shape in stage.shapes else None
        else:
            bucket = nearest_bucket(shape, stage.shapes)  # raw clips are fitted when decoded
        if bucket is None:
            return None
        geometry = self.plan.geometry
        tokens = geometry.latent_tokens(sample.latent_shape[1:]) if sample.has_latent else geometry.tokens(bucket)
        if stage.packed and tokens > stage.token_budget:
            return None
        return PoolEntry(sample, bucket, tokens)

    def _admit(self, sample: RawSample, stage: Stage) -> None:
        entry = self._resolve(sample, stage)
        if entry is None:
            self.state["filtered"] += 1
            return
        self.pool.append(entry)
        self._idle_units = 0

    def _enter(self, stage: Stage) -> None:
        """Switch stage: pooled samples are re-bucketed; those the new stage does not use leave."""
        self.stage = stage
        pooled, self.pool = [e.sample for e in self.pool], []
        for sample in pooled:
            self._admit(sample, stage)

    def _take(self, stage: Stage) -> Optional[list[PoolEntry]]:
        """Remove and return the next group from the pool, or None until one is ready."""
        if stage.packed:
            if sum(e.tokens for e in self.pool) < self.plan.pack_lookahead * stage.token_budget:
                return None
            fill = max(int(self.plan.pack_fill * stage.token_budget), self.pool[0].tokens)
            chosen = choose_pack([e.tokens for e in self.pool], fill)
        else:
            bucket = ready_bucket([e.bucket for e in self.pool], stage.batch_size)
            if bucket is None:
                return None
            chosen = [i for i, e in enumerate(self.pool) if e.bucket == bucket][:stage.batch_size]
        group = [self.pool[i] for i in chosen]
        taken = set(chosen)
        self.pool = [e for i, e in enumerate(self.pool) if i not in taken]
        return group

    def _decode(self, group: list[PoolEntry], stage: Stage) -> Optional[dict]:
        kept, clips, texts = [], [], []
        for entry in group:
            try:
                clip, text = decode_clip(entry.sample, entry.bucket), decode_caption_embedding(entry.sample)
            except BadSample as exc:
                self.bad(exc, entry.sample.epoch)
                continue
            kept.append(entry)
            clips.append(clip)
            texts.append(text)
        if not kept:
            return None
        return assemble([e.sample for e in kept], clips, texts, [e.tokens for e in kept], stage.packed,
                        stage.name, stage.token_budget)

    # ---- restore ----------------------------------------------------------------------------

    def _restore_buffers(self) -> None:
        """Read the buffered samples named in the state back from their shards."""
        refs = [tuple(r) for r in self.state["shuffle"] + self.state["pool"]]
        found = fetch_samples(self.plan.units, refs)
        self.shuffle.items = [found[tuple(r)] for r in self.state["shuffle"]]
        # Entries get their bucket when the first stage is entered (_enter re-resolves the pool).
        self.pool = [PoolEntry(found[tuple(r)], (0, 0, 0), 0) for r in self.state["pool"]]


def fetch_samples(units: UnitSequence, refs: list[tuple[int, int]]) -> dict[tuple[int, int], RawSample]:
    """Samples by reference (unit, index), each unit read once up to the last index needed."""
    wanted: dict[int, set[int]] = {}
    for u, index in refs:
        wanted.setdefault(u, set()).add(index)
    found: dict[tuple[int, int], RawSample] = {}
    for u in sorted(wanted):
        unit, need = units.unit(u), wanted[u]
        for index, key, parts in open_groups(unit.shard, skip=min(need)):
            if index in need:
                sample = raw_sample(unit.shard, key, parts)
                sample.ref, sample.epoch = (u, index), unit.epoch
                sample.source = units.sources[unit.source].name
                found[(u, index)] = sample
            if index >= max(need):
                break
    missing = [r for r in refs if r not in found]
    if missing:
        raise RuntimeError(f"data: cannot restore {len(missing)} buffered samples, e.g. unit {missing[0][0]} "
                           f"({units.unit(missing[0][0]).shard}) index {missing[0][1]}; did the shards change?")
    return found
