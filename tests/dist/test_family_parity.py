"""Every model family under FSDP2 and sequence parallelism on 2 gloo ranks equals one process.

Each family's tiny experiment (its own objective: v-prediction with explicit uniform timesteps,
EDM, masked tokens, rectified flow) trains 3 steps on the same global micro-batches (see
tests/dist/parity.py) under FSDP2 (2 data-parallel ranks), Ulysses SP 2 and, where the family's
attention kinds allow it, ring SP 2; losses and pre-clip gradient norms must equal the one-process
reference to rtol 1e-5 in fp32. Clips alternate between 27 tokens (odd: padded under SP) and 64;
Snap Video runs with one token frame per group, so its 3 and 4 groups split unevenly (padded by a
whole group) and evenly. One spawned 2-rank world runs every family and layout.
"""

import pytest
from harness import run_ranks
from parity import build, build_single, common_overrides, single_threaded, train_until

pytestmark = pytest.mark.slow

STEPS = 3
SHAPES = [(12, 3, 6, 6), (12, 4, 8, 8)]  # latent [C, T, H, W]; (1, 2, 2) patches: 27 and 64 tokens

FAMILIES = {
    "cogvideox": ["experiment=cogvideox_tiny"],
    "vchitect": ["experiment=vchitect_tiny"],
    "snapvideo": ["experiment=snapvideo_tiny", "model.group_frames=1"],
    "worlddreamer": ["experiment=worlddreamer_tiny"],
}
# name -> (micro-batches per step over all dp ranks = the reference's accumulation, overrides)
LAYOUTS = {
    "fsdp2": (2, ["parallel=fsdp2"]),
    "ulysses2": (1, ["parallel=fsdp2", "parallel.sp_ulysses=2"]),
    "ring2": (1, ["parallel=fsdp2", "parallel.sp_ring=2"]),
}
# Grid cores (Vchitect's per-frame / per-position, WorldDreamer's windows) are Ulysses-only.
RING_FAMILIES = ["cogvideox", "snapvideo"]
CASES = [(family, layout) for family in FAMILIES for layout in LAYOUTS
         if layout != "ring2" or family in RING_FAMILIES]


def overrides(shards: str, family: str, *extra: str) -> list[str]:
    return [*FAMILIES[family], *common_overrides(shards, STEPS), *extra]


def families_worker(shards: str, tmp: str) -> dict:
    import torch.distributed as dist
    from pathlib import Path

    results = {}
    for family, layout in CASES:
        run = build(overrides(shards, family, *LAYOUTS[layout][1]), Path(tmp) / f"{family}-{layout}")
        results[(family, layout)] = train_until(run, STEPS, SHAPES)
    dist.barrier()
    return results


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory):
    """Per family, one process accumulating 1 and 2 micro-batches per step."""
    def train_all():
        refs = {}
        for family in FAMILIES:
            for micro in sorted({micro for micro, _ in LAYOUTS.values()}):
                run = build_single(overrides(tiny_shards, family, f"train.grad_accum_steps={micro}"),
                                   tmp_path_factory.mktemp(f"{family}-ref{micro}"))
                refs[(family, micro)] = train_until(run, STEPS, SHAPES)
        return refs

    return single_threaded(train_all)


@pytest.fixture(scope="module")
def world_results(tiny_shards, tmp_path_factory):
    return run_ranks(families_worker, 2, tiny_shards, str(tmp_path_factory.mktemp("families")))[0]


@pytest.mark.parametrize("family,layout", CASES)
def test_family_layout_matches_one_process(family, layout, reference, world_results):
    got, expected = world_results[(family, layout)], reference[(family, LAYOUTS[layout][0])]
    assert len(got) == STEPS
    for step, ((loss, norm), (ref_loss, ref_norm)) in enumerate(zip(got, expected), start=1):
        assert loss == pytest.approx(ref_loss, rel=1e-5), (family, layout, step, "loss")
        assert norm == pytest.approx(ref_norm, rel=1e-5), (family, layout, step, "grad_norm")

