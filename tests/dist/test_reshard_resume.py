"""Resharding on resume: a checkpoint written at world 4 (FSDP2, dp_shard=4) loads at world 2
(FSDP2 x Ulysses SP 2) and at world 1. Gathered weights and optimizer state equal the saving
run's exactly, and the next step's loss matches the saving run's own next step (rtol 1e-5: the
layouts sum in different orders). Every layout trains on the same global micro-batches (see
tests/dist/parity.py). The data stream's continuation on other layouts is tested with the loader
(tests/dist/test_data_dist.py, README "Resume guarantees")."""

from pathlib import Path

import pytest
from harness import run_ranks
from parity import build, build_single, common_overrides, single_threaded, train_until

pytestmark = pytest.mark.slow

SHAPES = [(12, 4, 8, 8)]
SAVED_AT = 2
GLOBAL_MICRO = 4  # micro-batches per step over all data-parallel ranks, in every layout

# name -> (world, overrides); dp x accum = GLOBAL_MICRO
LAYOUTS = {
    "world4_fsdp2_shard4": (4, ["parallel.dp_shard=4", "train.grad_accum_steps=1"]),
    "world2_fsdp2_ulysses2": (2, ["parallel.dp_shard=1", "parallel.sp_ulysses=2", "train.grad_accum_steps=4"]),
    "world1": (1, ["train.grad_accum_steps=4"]),
}


def _overrides(shards: str, extra: list[str]) -> list[str]:
    return ["experiment=tiny", "parallel=fsdp2", *common_overrides(shards, SAVED_AT + 1), *extra]


def _gathered(run) -> dict:
    """Full (unsharded) weights and optimizer state under layout-free names, on CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model, optim = get_state_dict(run.model, run.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Rank 0 holds them (others: empty). As numpy: tensors would cross the result queue as
    # shared-memory handles that the worker's os._exit invalidates.
    return {"model": {k: v.detach().clone().numpy() for k, v in model.items()},
            "optim": {k: {m: v.detach().clone().numpy() for m, v in moments.items()} for k, moments in optim.get("state", {}).items()}}


def _resume_and_step(run) -> dict:
    from litegen.train.setup import resume_if_possible

    assert resume_if_possible(run) is not None and run.step == SAVED_AT
    state = _gathered(run)
    return {"state": state, "next_loss": train_until(run, SAVED_AT + 1, SHAPES)[0]}


def save_world4(shards: str, run_dir: str) -> dict:
    from litegen.train.trainer import save_checkpoint

    run = build(_overrides(shards, LAYOUTS["world4_fsdp2_shard4"][1]), Path(run_dir))
    train_until(run, SAVED_AT, SHAPES)
    save_checkpoint(run)
    state = _gathered(run)
    return {"state": state, "next_loss": train_until(run, SAVED_AT + 1, SHAPES)[0]}


def load_world2(shards: str, run_dir: str) -> dict:
    return _resume_and_step(build(_overrides(shards, LAYOUTS["world2_fsdp2_ulysses2"][1]), Path(run_dir)))


@pytest.fixture(scope="module")
def layouts(tiny_shards, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("reshard"))
    results = {"world4_fsdp2_shard4": run_ranks(save_world4, 4, tiny_shards, run_dir)[0],
               "world2_fsdp2_ulysses2": run_ranks(load_world2, 2, tiny_shards, run_dir)[0]}
    single = build_single(_overrides(tiny_shards, LAYOUTS["world1"][1]), Path(run_dir))
    results["world1"] = single_threaded(lambda: _resume_and_step(single))
    return results


def _assert_same_state(got: dict, saved: dict, name: str) -> None:
    import numpy as np

    assert got["model"].keys() == saved["model"].keys() and saved["model"], name
    for key, value in saved["model"].items():
        assert np.array_equal(got["model"][key], value), (name, key)
    assert got["optim"].keys() == saved["optim"].keys() and saved["optim"], name
    for key, moments in saved["optim"].items():
        assert moments.keys() == got["optim"][key].keys(), (name, key)
        for moment, value in moments.items():
            assert np.array_equal(got["optim"][key][moment], value), (name, key, moment)


@pytest.mark.parametrize("name", ["world2_fsdp2_ulysses2", "world1"])
def test_world4_checkpoint_loads_on_another_layout(layouts, name):
    saved, got = layouts["world4_fsdp2_shard4"], layouts[name]
    _assert_same_state(got["state"], saved["state"], name)
    loss, norm = got["next_loss"]
    assert loss == pytest.approx(saved["next_loss"][0], rel=1e-5), name
    assert norm == pytest.approx(saved["next_loss"][1], rel=1e-5), name
