"""Whole-model parity: the tiny experiment for 3 steps under every layout equals one process.

Every layout trains the real Run (build_run, train_step, Meter) on the same global batches:
data-parallel rank r takes micro-batches r*k .. r*k+k-1 of each step (k = grad_accum_steps), and
the one-process reference accumulates all of a step's micro-batches in order, which is the same
computation (see tests/dist/parity.py). Sequence lengths alternate between 45 tokens
(padded under SP) and 64. Losses and pre-clip gradient norms must agree to rtol 1e-5 in fp32; the
norm catches gradient-scaling mistakes that Adam would hide from the loss. One spawn per world
size runs all of its layouts, plus save -> resume under the same layout.
"""

import os
from pathlib import Path

import pytest
from harness import extensions_dir, run_ranks
from parity import (assert_records_match, build, common_overrides, one_process_references,
                    train_until as train_shapes)

pytestmark = pytest.mark.slow

STEPS = 3
SHAPES = [(12, 3, 6, 10), (12, 4, 8, 8)]  # latent [C, T, H, W]: 3*3*5 = 45 and 4*4*4 = 64 tokens

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
    return ["experiment=tiny", *common_overrides(shards, STEPS), *extra]


def train_until(run, steps: int) -> list[tuple[float, float]]:
    return train_shapes(run, steps, SHAPES)


def resumed_losses(shards: str, run_dir: Path, extra: list[str]) -> list[tuple[float, float]]:
    """Train 2 steps and save; rebuild from scratch, resume, train step 3."""
    from litegen.train.setup import resume_if_possible
    from litegen.train.trainer import save_checkpoint

    first = build(overrides(shards, *extra), run_dir)
    train_until(first, STEPS - 1)
    save_checkpoint(first)
    second = build(overrides(shards, *extra), run_dir)
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
        results[name] = train_until(build(overrides(shards, *extra), rank_dir / name), STEPS)
        if name in RESUME:
            results[name + "/resumed"] = resumed_losses(shards, rank_dir / (name + "-resume"), extra)
    dist.barrier()
    return results


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory):
    """One process accumulating each step's micro-batches, for every count used above."""
    counts = sorted({micro for _, micro, _ in LAYOUTS.values()})
    runs = {micro: overrides(tiny_shards, f"train.grad_accum_steps={micro}") for micro in counts}
    return one_process_references(runs, tmp_path_factory, STEPS, SHAPES)


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
    assert_records_match(world_results(world)[name], reference[micro], STEPS, name)


@pytest.mark.parametrize("name", RESUME)
def test_resume_same_layout_continues_exactly(name, world_results):
    results = world_results(LAYOUTS[name][0])
    straight, resumed = results[name], results[name + "/resumed"]
    assert resumed == [straight[-1]]  # step 3 after save at 2 and a fresh resume: bit-identical
