"""Shared pieces of the whole-model parity tests: the same global micro-batches for every layout,
building a real Run from overrides, and training it while recording what the meter reports.

Data-parallel rank r takes micro-batches r*k .. r*k+k-1 of each step (k = grad_accum_steps); one
process accumulating all of a step's micro-batches in order computes the same thing (noise and
timesteps are keyed by the global micro-batch index, see litegen.train.rng).
"""

import itertools
from pathlib import Path

import pytest
import torch

CAPTIONS = ["a red circle moving left on a blue background", "a green square bouncing up and down",
            "a triangle changing from yellow to purple moving right on a black background"]


def common_overrides(shards: str, steps: int) -> list[str]:
    """Short fp32 runs on fixed batches: no wandb, no sampling, constant LR after one warmup step."""
    return [f"data.shards={shards}", "data.generate_if_missing=false", "data.batch_size=2",
            "logging.wandb_mode=disabled", "train.peak_tflops=1", "train.ema_decay=0.9",
            "optim.warmup_steps=1", "optim.schedule=constant", f"train.steps={steps}",
            "train.sample.enabled=false"]


def micro_batch(step: int, index: int, shapes: list[tuple[int, ...]]) -> dict:
    """Global micro-batch `index` of `step`: two clips of latents shaped shapes[step % len]."""
    gen = torch.Generator().manual_seed(1000 * step + index)
    return {"latents": torch.randn(2, *shapes[step % len(shapes)], generator=gen),
            "captions": [CAPTIONS[(step + index + i) % len(CAPTIONS)] for i in range(2)]}


def batches(start_step: int, dp_rank: int, accum: int, shapes: list[tuple[int, ...]]):
    for step in itertools.count(start_step):
        for micro in range(accum):
            yield micro_batch(step, dp_rank * accum + micro, shapes)


def build(overrides: list[str], run_dir: Path):
    """A Run on this process's place in the (already initialised) process group."""
    from litegen.config import compose
    from litegen.parallel.distributed import init_distributed
    from litegen.train.setup import build_run

    return build_run(compose(overrides), run_dir, init_distributed())


def build_single(overrides: list[str], run_dir: Path):
    """A one-process Run (the reference), without touching any process group."""
    from litegen.config import compose
    from litegen.parallel.distributed import DistInfo
    from litegen.train.setup import build_run

    return build_run(compose(overrides), run_dir, DistInfo(0, 1, 0, torch.device("cpu")))


def train_until(run, steps: int, shapes: list[tuple[int, ...]]) -> list[tuple[float, float]]:
    """(loss, grad_norm) per step as the meter reports them (reduced over the dp group)."""
    from litegen.train.trainer import train_step

    stream, records = batches(run.step, run.dp_rank, run.cfg.train.grad_accum_steps, shapes), []
    while run.step < steps:
        norm = train_step(run, stream)
        record = run.meter.summary(run.step, run.scheduler.get_last_lr()[0], float(norm))
        records.append((record["loss"], record["grad_norm"]))
    return records


def single_threaded(fn):
    """Run fn() with one OpenMP thread: on a loaded 2-core machine 2 threads run ~50x slower here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def one_process_references(runs: dict, tmp_path_factory, steps: int, shapes: list[tuple[int, ...]]) -> dict:
    """{key: overrides} -> {key: (loss, grad_norm) per step} of one single-threaded process each."""
    def train_all():
        return {key: train_until(build_single(overrides, tmp_path_factory.mktemp("reference")), steps, shapes)
                for key, overrides in runs.items()}

    return single_threaded(train_all)


def assert_records_match(got: list, expected: list, steps: int, label) -> None:
    """Losses and pre-clip gradient norms equal to rtol 1e-5, step by step."""
    assert len(got) == steps, label
    for step, ((loss, norm), (ref_loss, ref_norm)) in enumerate(zip(got, expected), start=1):
        assert loss == pytest.approx(ref_loss, rel=1e-5), (label, step, "loss")
        assert norm == pytest.approx(ref_norm, rel=1e-5), (label, step, "grad_norm")
