"""Where samples come from: shard specs, weighted sources, and the endless sequence of shard reads.

A shard spec is a local path, a glob, a brace range (`shard-{0000..0099}.tar`) or `pipe:COMMAND`
(any command writing a tar to stdout, e.g. `pipe:aws s3 cp s3://bucket/shard-{0000..0099}.tar -`,
brace-expanded into one command per shard). Every loader of a run walks the same endless
sequence of *units* (one read of one shard): position u -> (source, epoch of that source, shard).
Each source's shards are permuted per epoch from the seed; sources are interleaved by a seeded
weighted draw per position. The sequence depends on nothing but (seed, sources), so any number of
ranks and workers can split it, and a resumed run on another layout can continue it.
"""

import functools
import hashlib
import os
import subprocess
from dataclasses import dataclass
from typing import Iterator, Optional

import braceexpand
import numpy as np

from litegen.config.schema import DataConfig, SourceConfig
from litegen.data.shards import BadSample, expand_shards, iter_groups, read_index

PIPE = "pipe:"
_BLOCK = 4096  # positions per block of source draws (drawn and counted together)


@dataclass(frozen=True)
class Source:
    name: str
    shards: tuple[str, ...]  # local paths or pipe: commands, sorted
    weight: float
    samples_per_shard: Optional[float] = None  # mean shard size, from index.json when it exists

    def digest(self) -> str:
        # Basenames only, so the same dataset reached through another path still resumes.
        names = "\n".join(os.path.basename(s) if not s.startswith(PIPE) else s for s in self.shards)
        return hashlib.sha1(f"{self.weight}\n{names}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    position: int  # u in the global sequence
    source: int  # index into the source list
    epoch: int  # epoch of that source
    shard: str  # path or pipe: command


def expand_spec(spec: str) -> list[str]:
    """Shards named by one spec: pipe: commands brace-expanded as given, files sorted and checked."""
    if spec.startswith(PIPE):
        return list(braceexpand.braceexpand(spec))
    return expand_shards(spec)


def index_sizes(shards: list[str]) -> Optional[float]:
    """Mean samples per shard from the index.json files beside local shards, else None."""
    if any(s.startswith(PIPE) for s in shards):
        return None
    counts = read_index(shards)
    return None if counts is None else sum(counts.values()) / len(shards)


def build_sources(cfg: DataConfig) -> list[Source]:
    """The configured sources; `data.shards` alone is one source of weight 1."""
    configs = list(cfg.sources) or [SourceConfig(shards=cfg.shards, weight=1.0)]
    sources = []
    for i, source in enumerate(configs):
        shards = expand_spec(source.shards)
        sources.append(Source(name=source.name or f"source{i}", shards=tuple(shards),
                              weight=float(source.weight), samples_per_shard=index_sizes(shards)))
    return sources


def _source_probabilities(sources: list[Source]) -> np.ndarray:
    # Weights are shares of samples: a source with twice as many samples per shard is drawn
    # half as often per unit. Without index.json the shard size is unknown and weights count shards.
    known = all(s.samples_per_shard for s in sources)
    per_unit = np.array([s.weight / (s.samples_per_shard if known else 1.0) for s in sources])
    return per_unit / per_unit.sum()


class UnitSequence:
    """Position u -> Unit; deterministic in (seed, sources), computed lazily and cached."""

    def __init__(self, sources: list[Source], seed: int):
        if not sources or any(not s.shards for s in sources):
            raise ValueError("every data source needs at least one shard")
        self.sources, self.seed = sources, seed
        self.probs = _source_probabilities(sources)
        self._block_starts: list[np.ndarray] = [np.zeros(len(sources), np.int64)]  # draws before block b

    def digest(self) -> str:
        return hashlib.sha1("|".join(s.digest() for s in self.sources).encode()).hexdigest()[:16]

    def unit(self, u: int) -> Unit:
        s, count = self._source_draw(u)
        source = self.sources[s]
        epoch, within = divmod(count, len(source.shards))
        return Unit(position=u, source=s, epoch=epoch, shard=source.shards[self._order(s, epoch)[within]])

    def _source_draw(self, u: int) -> tuple[int, int]:
        """(source of position u, how many earlier positions drew the same source)."""
        if len(self.sources) == 1:
            return 0, u
        block, offset = divmod(u, _BLOCK)
        while len(self._block_starts) <= block:
            b = len(self._block_starts) - 1
            counts = np.bincount(self._draws(b), minlength=len(self.sources))
            self._block_starts.append(self._block_starts[b] + counts)
        draws = self._draws(block)
        s = int(draws[offset])
        return s, int(self._block_starts[block][s] + np.count_nonzero(draws[:offset] == s))

    @functools.lru_cache(maxsize=8)
    def _draws(self, block: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0x5EED, block]).choice(len(self.sources), _BLOCK, p=self.probs)

    @functools.lru_cache(maxsize=64)
    def _order(self, source: int, epoch: int) -> np.ndarray:
        """The epoch's shard permutation of one source, identical on every rank."""
        return np.random.default_rng([self.seed, source, epoch]).permutation(len(self.sources[source].shards))


class ShardStream:
    """A shard opened for reading: a local file, or the stdout of a pipe: command."""

    def __init__(self, shard: str):
        self.shard = shard
        self.proc = None
        if shard.startswith(PIPE):
            self.proc = subprocess.Popen(shard[len(PIPE):], shell=True, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=1 << 20)
            self.file = self.proc.stdout
        else:
            self.file = open(shard, "rb")

    def close(self, finished: bool) -> None:
        """Close; a pipe command that failed after its output was read to the end is an error."""
        self.file.close()
        if self.proc is None:
            return
        if not finished:
            self.proc.kill()  # stopped early on purpose: its exit status means nothing
        code = self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace")[-500:]
        self.proc.stderr.close()
        if finished and code != 0:
            raise OSError(f"command exited with status {code}: {err.strip()}")


def open_groups(shard: str, skip: int = 0) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """iter_groups over a local file or pipe: command; every failure surfaces as BadSample."""
    try:
        stream = ShardStream(shard)
    except OSError as exc:
        raise BadSample(shard, None, "unreadable_shard", f"cannot open: {exc!r}") from exc
    finished = False
    try:
        yield from iter_groups(stream.file, shard, skip)
        finished = True
    finally:
        try:
            stream.close(finished)
        except OSError as exc:
            raise BadSample(shard, None, "unreadable_shard", f"pipe command failed: {exc}") from exc
