"""Data path benchmark (CPU, one run): loader throughput, packing padding, rank balance.

1. Throughput, on the same shards, same decoding (torch.load of latent.pth, caption, json) and
   the same batching (batch_size clips of one latent shape), same worker count:
   * ours: litegen.data.loader in bucket mode;
   * naive per-sample: a map-style Dataset over (shard, key) whose __getitem__ opens the shard
     with tarfile and extracts that sample's members by name, in a DataLoader(batch_size=1,
     shuffle=True) (it cannot stack clips of different shapes): what one writes first;
   * indexed per-sample (reference, no target): the same, but seeking to member offsets indexed
     once up front, so each sample costs one open and three reads;
   * plain webdataset: WebDataset(...).shuffle().map(decode) + a same-shape batching stage,
     in a webdataset.WebLoader.
   Runs are interleaved (ours, naive, wds, ours, ...); the figure is the median of --repeats.
   Targets: ours >= 3x naive, ours >= 1.0x webdataset (samples/s; tokens/s is proportional).
2. Packing, simulating --ranks data-parallel ranks, each running our loader in packed mode
   (token budget --token-budget, packs filled to data.pack_fill) for --steps steps:
   * padding: packs are not padded (variable-length attention), so padded tokens are 0; the
     unused token budget is reported too. Naive: batches of --batch clips in stream order
     padded to the longest clip of the batch. Target: <= 2%.
   * rank imbalance: max/mean over ranks of sum(s_i^2) per step, mean over steps, for a naive
     first-fit packer, our packer alone, and our packer + the cross-rank clip exchange the
     trainer does (litegen.data.balance.balance_clips). Target <= 1.05 (the last).

    python benchmarks/data.py [--clips 1024] [--workers 2] [--repeats 3] [--ranks 8] [--steps 40]
"""

import argparse
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset
from torch.utils.data import DataLoader, Dataset

from litegen.config.schema import DataConfig, SyntheticDataConfig, VideoEncoderConfig
from litegen.data.buckets import TokenGeometry
from litegen.data.generate import generate_synthetic_dataset
from litegen.data.loader import build_loader
from litegen.data.balance import balance_clips
from litegen.data.packing import first_fit_pack, pack_cost
from litegen.data.shards import decode_latent
from litegen.encoders import build_video_encoder

# Eight clip shapes (pixels): 256 to 2304 tokens for the tiny DiT (pixel encoder x2, patch 1x2x2).
SHAPES = [[4, 32, 32], [8, 32, 32], [8, 32, 48], [8, 48, 32], [12, 32, 32], [16, 32, 32], [8, 48, 48], [16, 48, 48]]
GEOMETRY = TokenGeometry(spatial_factor=2, patch=(1, 2, 2))


def tokens_of(latent_shape) -> int:
    return GEOMETRY.latent_tokens(latent_shape[1:])


# ---- the three loaders -----------------------------------------------------------------------


def ours(shards: str, batch: int, workers: int):
    loader = build_loader(DataConfig(shards=shards, batch_size=batch, shuffle_buffer=64, num_workers=workers), 0, 1)
    for b in loader:
        yield len(b["keys"]), sum(tokens_of(x.shape) for x in b["latents"])


class PerSample(Dataset):
    """One sample per __getitem__: open its shard, extract its members by name, decode."""

    def __init__(self, shards: list[str]):
        self.index = []
        for shard in shards:
            with tarfile.open(shard) as tar:
                keys = sorted({m.name.partition(".")[0] for m in tar.getmembers()})
            self.index += [(shard, key) for key in keys]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        shard, key = self.index[i]
        with tarfile.open(shard) as tar:  # finding a member by name reads the archive's headers
            data = {part: tar.extractfile(f"{key}.{part}").read() for part in ("latent.pth", "txt", "json")}
        return {"latent": decode_latent(data["latent.pth"]), "caption": data["txt"].decode(),
                "meta": json.loads(data["json"])}


class IndexedPerSample(Dataset):
    """One sample per __getitem__: open the shard, seek to its members' indexed offsets, read, decode."""

    def __init__(self, shards: list[str]):
        self.index = []
        for shard in shards:
            with tarfile.open(shard) as tar:
                groups = {}
                for m in tar.getmembers():
                    key, _, part = m.name.partition(".")
                    groups.setdefault(key, {})[part] = (m.offset_data, m.size)
            self.index += [(shard, parts) for _, parts in sorted(groups.items())]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        shard, parts = self.index[i]
        with open(shard, "rb") as handle:
            data = {}
            for part in ("latent.pth", "txt", "json"):
                offset, size = parts[part]
                handle.seek(offset)
                data[part] = handle.read(size)
        return {"latent": decode_latent(data["latent.pth"]), "caption": data["txt"].decode(),
                "meta": json.loads(data["json"])}


def _per_sample(dataset_class):
    def make(shards: str, batch: int, workers: int):
        files = sorted(str(p) for p in Path(shards).parent.glob(Path(shards).name))
        loader = DataLoader(dataset_class(files), batch_size=1, shuffle=True, num_workers=workers,
                            collate_fn=_first)
        for sample in loader:
            yield 1, tokens_of(sample["latent"].shape)
    return make


def _first(items):
    return items[0]


naive, indexed = _per_sample(PerSample), _per_sample(IndexedPerSample)


def _wds_decode(sample: dict) -> dict:
    return {"latent": decode_latent(sample["latent.pth"]), "caption": sample["txt"].decode(),
            "meta": json.loads(sample["json"])}


def _same_shape_batches(batch: int):
    def stage(samples):
        pending = {}
        for s in samples:
            group = pending.setdefault(tuple(s["latent"].shape), [])
            group.append(s)
            if len(group) == batch:
                del pending[tuple(s["latent"].shape)]
                yield {"latents": torch.stack([g["latent"] for g in group]), "captions": [g["caption"] for g in group],
                       "meta": [g["meta"] for g in group]}
    return stage


def plain_wds(shards: str, batch: int, workers: int):
    files = sorted(str(p) for p in Path(shards).parent.glob(Path(shards).name))
    pipeline = (webdataset.WebDataset(files, shardshuffle=len(files), nodesplitter=webdataset.single_node_only,
                                      workersplitter=webdataset.split_by_worker)
                .shuffle(64).map(_wds_decode).compose(_same_shape_batches(batch)))
    for b in webdataset.WebLoader(pipeline, batch_size=None, num_workers=workers):
        yield len(b["captions"]), tokens_of(b["latents"].shape[1:]) * len(b["captions"])


def throughput(make, shards: str, batch: int, workers: int, samples: int) -> tuple[float, float]:
    """(samples/s, tokens/s) over `samples` samples, timed from the first batch (startup excluded)."""
    stream = make(shards, batch, workers)
    next(stream)
    start, n, tokens = time.perf_counter(), 0, 0
    for count, toks in stream:
        n, tokens = n + count, tokens + toks
        if n >= samples:
            break
    elapsed = time.perf_counter() - start
    stream.close()
    return n / elapsed, tokens / elapsed


# ---- packing ---------------------------------------------------------------------------------


def packed_steps(shards: str, ranks: int, steps: int, budget: int) -> list[list[list[int]]]:
    """Per step, per rank: token sizes of the clips of that rank's pack (our loader, packed mode)."""
    cfg = DataConfig(shards=shards, token_budget=budget, shuffle_buffer=64)
    loaders = [iter(build_loader(cfg, r, ranks, geometry=GEOMETRY)) for r in range(ranks)]
    return [[next(it)["tokens"] for it in loaders] for _ in range(steps)]


def first_fit_steps(shards: str, ranks: int, steps: int, budget: int) -> list[list[list[int]]]:
    """The same streams (our loader, batch 1, no packing) packed naively: first fit in arrival order."""
    cfg = DataConfig(shards=shards, batch_size=1, shuffle_buffer=64)
    streams = [iter(build_loader(cfg, r, ranks, geometry=GEOMETRY)) for r in range(ranks)]
    pools = [[] for _ in range(ranks)]
    out = []
    for _ in range(steps):
        step = []
        for stream, pool in zip(streams, pools):
            while sum(pool) <= budget:
                pool.append(next(stream)["tokens"][0])
            chosen = first_fit_pack(pool, budget)
            step.append([pool[i] for i in chosen])
            del pool[:len(chosen)]
        out.append(step)
    return out


def imbalance(steps: list[list[list[int]]]) -> tuple[float, float]:
    ratios = []
    for step in steps:
        costs = [pack_cost(p)[1] for p in step]
        ratios.append(max(costs) / float(np.mean(costs)))
    return float(np.mean(ratios)), float(np.max(ratios))


def balanced(steps: list[list[list[int]]], budget: int) -> tuple[list[list[list[int]]], float]:
    """The steps after the cross-rank exchange, and the median time of one plan (ms)."""
    out, times = [], []
    for step in steps:
        start = time.perf_counter()
        plan = balance_clips(step, budget)
        times.append((time.perf_counter() - start) * 1000)
        out.append([[step[r][i] for r, i in rank] for rank in plan])
    return out, statistics.median(times)


def padded_batches(shards: str, batch: int, count: int) -> float:
    """Padding fraction of batches of `batch` clips in stream order, each padded to its longest clip."""
    cfg = DataConfig(shards=shards, batch_size=1, shuffle_buffer=64)
    stream = iter(build_loader(cfg, 0, 1, geometry=GEOMETRY))
    real = padded = 0
    for _ in range(count):
        sizes = [next(stream)["tokens"][0] for _ in range(batch)]
        real, padded = real + sum(sizes), padded + batch * max(sizes)
    return 1 - real / padded


def packing_args(parser: argparse.ArgumentParser) -> None:
    """The data and packing options this benchmark shares with balance_optimum.py."""
    parser.add_argument("--clips", type=int, default=1024)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--token-budget", type=int, default=8192)


def render_shards(folder: Path, clips: int) -> str:
    """The benchmark's clips (SHAPES) as shards of 64 in `folder`; returns their glob."""
    synth = SyntheticDataConfig(num_clips=clips, clips_per_shard=64, shapes=SHAPES)
    generate_synthetic_dataset(synth, folder, build_video_encoder(VideoEncoderConfig()))
    return str(folder / "shard-*.tar")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    packing_args(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        shards = render_shards(Path(tmp) / "bench", args.clips)
        print(f"data: {args.clips} clips in {args.clips // 64} shards, shapes {SHAPES}")

        loaders = [("ours", ours), ("naive", naive), ("indexed", indexed), ("webdataset", plain_wds)]
        rates = {name: [] for name, _ in loaders}
        for rep in range(args.repeats):
            for name, make in loaders[rep % 4:] + loaders[:rep % 4]:  # rotated: no loader always goes first
                rates[name].append(throughput(make, shards, args.batch, args.workers, args.clips))
        med = {k: (statistics.median(s for s, _ in v), statistics.median(t for _, t in v)) for k, v in rates.items()}
        print(f"\nthroughput ({args.workers} workers, batch {args.batch}, median of {args.repeats}):")
        for name, (sps, tps) in med.items():
            spread = [s for s, _ in rates[name]]
            print(f"  {name:11s} {sps:8.0f} samples/s {tps:10.0f} tokens/s   "
                  f"(samples/s over repeats: {min(spread):.0f} .. {max(spread):.0f})")
        ratios = [a[0] / b[0] for a, b in zip(rates["ours"], rates["webdataset"])]
        print(f"  ours / webdataset per repeat: {min(ratios):.2f} .. {max(ratios):.2f}")
        print(f"  ours / naive      {med['ours'][0] / med['naive'][0]:.2f}x  (target >= 3)")
        print(f"  ours / indexed    {med['ours'][0] / med['indexed'][0]:.2f}x  (reference)")
        print(f"  ours / webdataset {med['ours'][0] / med['webdataset'][0]:.2f}x  (target >= 1.0)")

        ours_steps = packed_steps(shards, args.ranks, args.steps, args.token_budget)
        fair, plan_ms = balanced(ours_steps, args.token_budget)
        naive_steps = first_fit_steps(shards, args.ranks, args.steps, args.token_budget)
        used = np.mean([sum(p) / args.token_budget for step in fair for p in step])
        print(f"\npacking ({args.ranks} ranks x {args.steps} steps, token budget {args.token_budget}):")
        print(f"  padding: ours 0.00% of computed tokens (packs are not padded; "
              f"{1 - used:.2%} of the token budget unused)")
        print(f"  padding: naive batches of {args.batch} padded to their longest clip "
              f"{padded_batches(shards, args.batch, args.steps * 4):.2%}  (target: ours <= 2%)")
        for name, steps in (("naive first-fit", naive_steps), ("ours, packer only", ours_steps),
                            ("ours + cross-rank exchange", fair)):
            mean, worst = imbalance(steps)
            print(f"  rank imbalance max/mean sum(s^2): {name:27s} mean {mean:.4f}  worst step {worst:.4f}")
        print(f"  balance_clips: {plan_ms:.1f} ms per plan (median over steps, {args.ranks} ranks)")
        print("  (target <= 1.05 for ours + cross-rank exchange, which is what the trainer runs)")


if __name__ == "__main__":
    main()
