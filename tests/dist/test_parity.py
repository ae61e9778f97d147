"""Whole-model parity: the tiny experiment for 3 steps under every layout equals one process.

Every layout trains the real Run (build_run, train_step, Meter) on the same global batches:
data-parallel rank r takes micro-batches r*k .. r*k+k-1 of each step (k = grad_accum_steps), and
the one-process reference accumulates all of a step's micro-batches in order, which is the same
computation (noise is keyed by the global micro-batch index, see litegen.train.rng). Sequence lengths alternate between 45 tokens
(padded under SP) and 64. Losses and pre-clip gradient norms must agree to rtol 1e-5 in fp32; the
norm catches gradient-scaling mistakes that Adam would hide from the loss. One spawn per world
size runs all of its layouts, plus save -> resume under the same layout.
"""

import itertools
import os
from pathlib import Path

import pytest
import torch
from harness import extensions_dir, run_ranks

pytestmark = pytest.mark.slow

STEPS = 3
SHAPES = [(12, 3, 6, 10), (12, 4, 8, 8)]  # latent [C, T, H, W]: 3*3*5 = 45 and 4*4*4 = 64 tokens
CAPTIONS = ["a red circle moving left on a blue background", "a green square bouncing up and down",
            "a triangle changing from yellow to purple moving right on a black background"]

# name -> (world size, micro-batches per step over all dp ranks = the reference's accumulation, overrides)
LAYOUTS = {
    "ddp": (2, 2, ["parallel=ddp"]),
    "fsdp2": (2, 2, ["parallel=fsdp2"]),
    "ulysses2": (2, 1, ["parallel=fsdp2", "parallel.sp_ulysses=2"]),
    "ring2": (2, 1, ["parallel=fsdp2", "parallel.sp_ring=2"]),
    "zero2": (2, 2, ["parallel=deepspeed", "parallel.zero_stage=2"]),
    "zero3": (2, 2, ["parallel=deepspeed", "parallel.zero_stage=3"]),
    "zero2_ulysses2": (2, 1, ["parallel=deepspeed", "parallel.zero_stage=2", "parallel.sp_ulysses=2"]),
    # 2 ranks x 2 accumulated micro-batches = the 4-micro-batch reference (no_sync / ZeRO boundary)
    "ddp_accum2": (2, 4, ["parallel=ddp", "train.grad_accum_steps=2"]),
    "zero2_accum2": (2, 4, ["parallel=deepspeed", "parallel.zero_stage=2", "train.grad_accum_steps=2"]),
    "fsdp2_shard2_ulysses2": (4, 2, ["parallel=fsdp2", "parallel.dp_shard=2", "parallel.sp_ulysses=2"]),
    "hsdp2x2": (4, 4, ["parallel=fsdp2", "parallel.dp_replicate=2", "parallel.dp_shard=2"]),
    "usp_ring2_ulysses2": (4, 1, ["parallel=fsdp2", "parallel.sp_ring=2", "parallel.sp_ulysses=2"]),
}
RESUME = ["ulysses2", "zero3"]  # DCP (sharded, SP) and DeepSpeed's own checkpoint (ZeRO-3 EMA)


def overrides(shards: str, *extra: str) -> list[str]:
    return ["experiment=tiny", f"data.shards={shards}", "data.generate_if_missing=false",
            "data.batch_size=2", "logging.wandb_mode=disabled", "train.peak_tflops=1",
            "train.ema_decay=0.9", "optim.warmup_steps=1", "optim.schedule=constant",
            f"train.steps={STEPS}", "train.sample.enabled=false", *extra]


def micro_batch(step: int, index: int) -> dict:
    gen = torch.Generator().manual_seed(1000 * step + index)
    return {"latents": torch.randn(2, *SHAPES[step % 2], generator=gen),
            "captions": [CAPTIONS[(step + index + i) % len(CAPTIONS)] for i in range(2)]}


def batches(start_step: int, dp_rank: int, accum: int):
    for step in itertools.count(start_step):
        for micro in range(accum):
            yield micro_batch(step, dp_rank * accum + micro)


def build(shards: str, run_dir: Path, extra: list[str]):
    from litegen.config import compose
    from litegen.parallel.distributed import init_distributed
    from litegen.train.setup import build_run

    return build_run(compose(overrides(shards, *extra)), run_dir, init_distributed())


def train_until(run, steps: int) -> list[tuple[float, float]]:
    """(loss, grad_norm) per step as the meter reports them (reduced over the dp group)."""
    from litegen.train.trainer import train_step

    stream, records = batches(run.step, run.dp_rank, run.cfg.train.grad_accum_steps), []
    while run.step < steps:
        norm = train_step(run, stream)
        record = run.meter.summary(run.step, run.scheduler.get_last_lr()[0], float(norm))
        records.append((record["loss"], record["grad_norm"]))
    return records


def resumed_losses(shards: str, run_dir: Path, extra: list[str]) -> list[tuple[float, float]]:
    """Train 2 steps and save; rebuild from scratch, resume, train step 3."""
    from litegen.train.setup import resume_if_possible
    from litegen.train.trainer import save_checkpoint

    first = build(shards, run_dir, extra)
    train_until(first, STEPS - 1)
    save_checkpoint(first)
    second = build(shards, run_dir, extra)
    assert resume_if_possible(second) is not None and second.step == STEPS - 1
    return train_until(second, STEPS)


def layouts_worker(world: int, shards: str, tmp: str) -> dict:
    import torch.distributed as dist

    os.environ["TORCH_EXTENSIONS_DIR"] = extensions_dir()
    rank_dir = Path(tmp)
    results = {}
    # DeepSpeed layouts last: ZeRO-3 replaces torch.nn.functional.linear for the whole process
    # (its memory-efficient linear), which moves later fp32 gradients by an ulp and would break
    # the bitwise comparison of a straight run with its resumed twin.
    names = sorted(LAYOUTS, key=lambda n: "parallel=deepspeed" in LAYOUTS[n][2])
    for name in names:
        size, _, extra = LAYOUTS[name]
        if size != world:
            continue
        results[name] = train_until(build(shards, rank_dir / name, extra), STEPS)
        if name in RESUME:
            results[name + "/resumed"] = resumed_losses(shards, rank_dir / (name + "-resume"), extra)
    dist.barrier()
    return results


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory):
    """One process accumulating each step's micro-batches, for every count used above."""
    from litegen.parallel.distributed import DistInfo
    from litegen.config import compose
    from litegen.train.setup import build_run

    refs, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded 2-core machine, 2 OpenMP threads run ~50x slower here
    try:
        for micro in sorted({micro for _, micro, _ in LAYOUTS.values()}):
            cfg = compose(overrides(tiny_shards, f"train.grad_accum_steps={micro}"))
            run = build_run(cfg, tmp_path_factory.mktemp(f"ref{micro}"), DistInfo(0, 1, 0, torch.device("cpu")))
            refs[micro] = train_until(run, STEPS)
    finally:
        torch.set_num_threads(threads)
    return refs


@pytest.fixture(scope="module")
def world_results(tiny_shards, tmp_path_factory):
    cache = {}

    def get(world: int) -> dict:
        if world not in cache:
            tmp = str(tmp_path_factory.mktemp(f"world{world}"))
            cache[world] = run_ranks(layouts_worker, world, world, tiny_shards, tmp)[0]
        return cache[world]

    return get


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_one_process(name, reference, world_results):
    world, micro, _ = LAYOUTS[name]
    got, expected = world_results(world)[name], reference[micro]
    assert len(got) == STEPS
    for step, ((loss, norm), (ref_loss, ref_norm)) in enumerate(zip(got, expected), start=1):
        assert loss == pytest.approx(ref_loss, rel=1e-5), (name, step, "loss")
        assert norm == pytest.approx(ref_norm, rel=1e-5), (name, step, "grad_norm")


@pytest.mark.parametrize("name", RESUME)
def test_resume_same_layout_continues_exactly(name, world_results):
    results = world_results(LAYOUTS[name][0])
    straight, resumed = results[name], results[name + "/resumed"]
    assert resumed == [straight[-1]]  # step 3 after save at 2 and a fresh resume: bit-identical
