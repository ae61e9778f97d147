"""Streaming, bucketed or packed, exactly and elastically resumable batches for one data-parallel rank.

The run's `dp_size x readers` readers (DataLoader workers, or the main process) split one endless
unit sequence (litegen/data/sources.py): reader g of G reads units g, g + G, ... Reader g = dp_rank *
readers + worker, so ranks of one sequence-parallel group (same dp rank) read the same samples.
Batch n of a rank comes from its reader n % readers.

Resume: the state is each reader's position as of the last batch the consumer took (workers
prefetch further; that is not counted). Restored on the same layout it reproduces exactly the
batches an uninterrupted run would have seen. The trainer checkpoints all ranks' states together
(`global_state`); restored on another dp size or worker count, the units no reader has finished,
the buffered samples and the untouched rest of the sequence are dealt to the new readers, so the
global sample stream goes on with no sample lost or repeated.
"""

import copy
import json
import logging
from typing import Any, Iterator, Optional

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from litegen.config.schema import DataConfig
from litegen.data.buckets import TokenGeometry
from litegen.data.reader import Reader, ReaderPlan, initial_state
from litegen.data.schedule import build_schedule
from litegen.data.shards import expand_shards
from litegen.data.sources import UnitSequence, build_sources

__all__ = ["ReaderPlan", "ShardLoader", "build_loader", "expand_shards", "global_state"]
log = logging.getLogger(__name__)
STATE_VERSION = 2


class _ReaderDataset(IterableDataset):
    """Runs one reader per DataLoader worker; tags each batch with the reader and its state."""

    def __init__(self, plan: ReaderPlan, states: list[dict], rotation: int):
        self.plan, self.states, self.rotation = plan, states, rotation

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        # DataLoader always asks worker 0 first; rotating the worker -> reader map makes the first
        # batch come from the reader that owns the next batch index.
        reader = ((info.id if info else 0) + self.rotation) % len(self.states)
        for batch, state in Reader(self.plan, self.states[reader]).batches():
            batch["_reader"], batch["_state"] = reader, state
            yield batch


class ShardLoader:
    """Endless iterable of batches for one data-parallel rank; state_dict() is its position.

    Bucket batches: {"latents" [B, C, T', H', W'] (or "pixels" [B, 3, T, H, W] for raw clips),
    "packed": False, ...}; packs: {"latents" (or "pixels"): list of per-clip tensors, "packed": True,
    ...}; both with "captions", "keys", "meta", "epochs", "sources", "stage" and, when the samples
    carry text.pth, "text_emb" [B, L, D] / "text_mask" [B, L]. Each iter() continues after the
    last batch delivered.
    """

    def __init__(self, plan: ReaderPlan, dp_rank: int, dp_size: int, num_workers: int,
                 num_samples: Optional[int] = None):
        self.plan, self.dp_rank, self.dp_size = plan, dp_rank, dp_size
        self.num_workers = num_workers
        self.num_readers = max(1, num_workers)
        self.num_samples = num_samples  # whole dataset, from index.json; None when unknown
        self.delivered = 0  # batches handed to the consumer on this rank
        self._states = [self._fresh(w) for w in range(self.num_readers)]

    def _fresh(self, worker: int) -> dict:
        w = self.num_readers
        return initial_state(self.plan, self.dp_rank * w + worker, self.dp_size * w, worker, w)

    def __iter__(self) -> Iterator[dict]:
        dataset = _ReaderDataset(self.plan, copy.deepcopy(self._states), self.delivered % self.num_readers)
        source = iter(dataset) if self.num_workers == 0 else iter(self._dataloader(dataset))
        try:
            for batch in source:
                reader, state = batch.pop("_reader"), batch.pop("_state")
                # Counted on delivery, not production: workers prefetch batches the consumer never saw.
                self._states[reader] = state
                self.delivered += 1
                yield batch
        finally:
            # A worker error's traceback keeps the DataLoader iterator alive until a gc pass, whose
            # teardown order makes its shutdown wait out a 5 s join timeout per worker: stop them now.
            shutdown = getattr(source, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _dataloader(self, dataset: _ReaderDataset) -> DataLoader:
        # in_order keeps strict worker round robin, which batch n -> reader n % readers relies on.
        # collate_fn: batches are already tensors; DataLoader's default_convert would walk every
        # list of the reader state riding along (~2 ms per batch).
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, in_order=True,
                          collate_fn=_as_is)

    def skip_counts(self) -> dict[str, int]:
        """Bad samples skipped by this rank's readers so far, by reason (as of delivered batches)."""
        total: dict[str, int] = {}
        for state in self._states:
            for reason, count in state["skips"].items():
                total[reason] = total.get(reason, 0) + count
        return total

    def skip_log(self) -> list[dict]:
        return [record for state in self._states for record in state["skip_log"]]

    # ---- resume -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (plain JSON-able data)."""
        return {"version": STATE_VERSION, "stream": self.plan.units.digest(), "seed": self.plan.seed,
                "dp_rank": self.dp_rank, "dp_size": self.dp_size, "num_readers": self.num_readers,
                "delivered": self.delivered, "readers": copy.deepcopy(self._states)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from this rank's own state, or from global_state(...) of any layout."""
        ranks = state["ranks"] if "ranks" in state else [state]
        for rank_state in ranks:
            self._check_stream(rank_state)
        first = ranks[0]
        same_layout = (first["dp_size"] == self.dp_size and first["num_readers"] == self.num_readers)
        if same_layout:
            mine = [r for r in ranks if r["dp_rank"] == self.dp_rank]
            if not mine:
                raise ValueError(f"data loader state holds dp ranks {[r['dp_rank'] for r in ranks]}, "
                                 f"not this rank's {self.dp_rank}")
            self.delivered, self._states = mine[0]["delivered"], copy.deepcopy(mine[0]["readers"])
            return
        if len(ranks) != first["dp_size"]:
            raise ValueError(f"resuming on another layout (dp {first['dp_size']} x {first['num_readers']} "
                             f"readers -> dp {self.dp_size} x {self.num_readers}) needs every rank's data state "
                             f"(global_state), got {len(ranks)} of {first['dp_size']}")
        self.delivered, self._states = redistribute(self.plan, ranks, self.dp_rank, self.dp_size, self.num_readers)
        log.info("data: resumed %d readers on dp %d x %d readers from dp %d x %d", len(ranks) * first["num_readers"],
                 self.dp_size, self.num_readers, first["dp_size"], first["num_readers"])

    def _check_stream(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')} != {STATE_VERSION} "
                             "(a checkpoint from an older LiteGen)")
        mine = {"stream": self.plan.units.digest(), "seed": self.plan.seed}
        changed = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in mine.items() if state.get(k) != v]
        if changed:
            raise ValueError("data loader state is from a different stream (other shards, sources, weights "
                             "or data.seed): " + "; ".join(changed))


def _as_is(batch: dict) -> dict:
    return batch


def global_state(rank_states: list[dict]) -> dict[str, Any]:
    """Every rank's state in one object (what checkpoints hold), one entry per dp rank."""
    by_rank = {s["dp_rank"]: s for s in rank_states}
    return {"ranks": [by_rank[r] for r in sorted(by_rank)]}


def redistribute(plan: ReaderPlan, ranks: list[dict], dp_rank: int, dp_size: int,
                 num_readers: int) -> tuple[int, list[dict]]:
    """(delivered, reader states) of dp_rank on a new layout, continuing the old readers' stream.

    Units at or past the frontier (the furthest any old reader got) were touched by nobody; below
    it, everything unfinished -- units in progress (with their offsets), units an old reader had
    not reached yet, buffered samples -- is dealt round robin to the new readers. Every old reader
    had delivered the same number of batches per rank, so the batch count carries over.
    """
    delivered = {r["delivered"] for r in ranks}
    if len(delivered) != 1:
        raise ValueError(f"data loader states disagree on batches delivered per rank: {sorted(delivered)}")
    old = [reader for rank in sorted(ranks, key=lambda r: r["dp_rank"]) for reader in rank["readers"]]
    frontier = max(r["next_unit"] for r in old)
    work = sorted([list(item) for r in old for item in r["queue"]] +
                  [[u, 0] for r in old for u in range(r["next_unit"], frontier, r["stride"])])
    shuffled = [ref for r in old for ref in r["shuffle"]]
    pooled = [ref for r in old for ref in r["pool"]]
    count, total = delivered.pop(), dp_size * num_readers
    states = []
    for worker in range(num_readers):
        g = dp_rank * num_readers + worker
        first_batch = count + (worker - count) % num_readers
        state = initial_state(plan, frontier + g, total, first_batch, num_readers, rng_key=(frontier,))
        state.update(queue=work[g::total], shuffle=shuffled[g::total], pool=pooled[g::total])
        if g == 0:  # the old counters live on in one place, so sums over ranks stay right
            state.update(skips=_sum_skips(old), skip_log=[x for r in old for x in r["skip_log"]],
                         filtered=sum(r["filtered"] for r in old))
        states.append(state)
    return count, states


def _sum_skips(readers: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in readers:
        for reason, count in r["skips"].items():
            total[reason] = total.get(reason, 0) + count
    return total


def build_plan(cfg: DataConfig, geometry: TokenGeometry, dp_size: int = 1, micro_batches_per_step: int = 1,
               expected_signature: Optional[dict] = None) -> ReaderPlan:
    if expected_signature is not None:
        # Compare as the json stores it: tuples become lists, keys become strings.
        expected_signature = json.loads(json.dumps(expected_signature))
    return ReaderPlan(units=UnitSequence(build_sources(cfg), cfg.seed), schedule=build_schedule(cfg),
                      geometry=geometry, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                      pack_lookahead=cfg.pack_lookahead, micro_batches_per_step=micro_batches_per_step,
                      bad_sample=cfg.bad_sample, expected_signature=expected_signature,
                      pack_fill=cfg.pack_fill if dp_size > 1 else 1.0)


def build_loader(cfg: DataConfig, dp_rank: int, dp_size: int, expected_signature: Optional[dict] = None,
                 geometry: Optional[TokenGeometry] = None, micro_batches_per_step: int = 1) -> ShardLoader:
    """The loader of data-parallel rank dp_rank of dp_size over the configured sources.

    geometry (encoder factors x patch) turns clip shapes into tokens for packing; the default
    counts latent positions one token each.
    """
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank must be in [0, dp_size={dp_size}), got {dp_rank}")
    plan = build_plan(cfg, geometry or TokenGeometry(), dp_size, micro_batches_per_step, expected_signature)
    sizes = [s.samples_per_shard for s in plan.units.sources]
    total = (round(sum(s * len(src.shards) for s, src in zip(sizes, plan.units.sources)))
             if all(sizes) else None)
    return ShardLoader(plan, dp_rank, dp_size, cfg.num_workers, total)
