"""Non-finite loss on one rank at step k (2 gloo ranks, FSDP2): `stop` ends every rank before
the update with an error naming the step; `skip` drops the update on every rank and stops after
train.max_consecutive_skips in a row."""

import os
from pathlib import Path

import pytest
from harness import run_ranks
from parity import batches, build, common_overrides

pytestmark = pytest.mark.slow

SHAPES = [(12, 4, 8, 8)]


def _overrides(shards: str, *extra: str) -> list[str]:
    return ["experiment=tiny", "parallel=fsdp2", *common_overrides(shards, 10), *extra]


def _set_faults(spec: str) -> None:
    from litegen.train import faults

    os.environ["LITEGEN_FAULTS"] = spec
    faults._faults.cache_clear()


def _weights(run) -> list:
    return [p.to_local().detach().clone() for p in run.model.parameters()]


def _same(a, b) -> bool:
    import torch

    return all(torch.equal(x, y) for x, y in zip(a, b))


def _step_error(run, stream) -> str:
    from litegen.train.nonfinite import NonFiniteError
    from litegen.train.trainer import train_step

    try:
        train_step(run, stream)
    except NonFiniteError as exc:
        return str(exc)
    return ""


def worker(shards: str, tmp: str) -> dict:
    from litegen.train.trainer import save_checkpoint, train_step

    out = {}
    # stop: a NaN loss on rank 1 at step 3 stops both ranks before the update.
    run = build(_overrides(shards), Path(tmp) / "stop")
    stream = batches(0, run.dp_rank, 1, SHAPES)
    _set_faults("nan:1:3")
    for _ in range(2):
        train_step(run, stream)
    save_checkpoint(run)
    before = _weights(run)
    out["stop_error"] = _step_error(run, stream)
    out["stop_weights_kept"] = _same(before, _weights(run))
    out["stop_step"] = run.step
    out["stop_latest"] = run.checkpointer.latest()[0]

    # skip: one bad step is dropped on every rank; then two in a row stop the run.
    run = build(_overrides(shards, "train.nonfinite=skip", "train.max_consecutive_skips=2"),
                Path(tmp) / "skip")
    stream = batches(0, run.dp_rank, 1, SHAPES)
    _set_faults("nan:1:3,nan:0:5,nan:1:6")
    for _ in range(2):
        train_step(run, stream)
    before = _weights(run)
    norm = train_step(run, stream)  # step 3: skipped
    out["skip_weights_kept"] = _same(before, _weights(run))
    out["skip_norm_is_nan"] = bool(norm != norm)
    out["skip_step_after"] = run.step
    train_step(run, stream)  # step 4: applied
    out["step4_changed"] = not _same(before, _weights(run))
    out["skip_stop_error"] = _step_error(run, stream) or _step_error(run, stream)  # steps 5, 6
    out["skip_total"] = run.nonfinite.skipped_total
    _set_faults("")
    return out


@pytest.fixture(scope="module")
def results(tiny_shards, tmp_path_factory):
    return run_ranks(worker, 2, tiny_shards, str(tmp_path_factory.mktemp("nonfinite")))


def test_stop_policy_stops_every_rank_before_the_update(results):
    for rank, r in enumerate(results):
        assert r["stop_error"].startswith("step 3: non-finite loss on rank(s) [1]"), (rank, r["stop_error"])
        assert "before the optimizer update" in r["stop_error"]
        assert r["stop_weights_kept"] and r["stop_step"] == 2 and r["stop_latest"] == 2, rank


def test_skip_policy_skips_the_same_step_everywhere_then_stops(results):
    for rank, r in enumerate(results):
        assert r["skip_weights_kept"] and r["skip_norm_is_nan"] and r["skip_step_after"] == 3, rank
        assert r["step4_changed"], rank
        assert r["skip_stop_error"].startswith("step 6: non-finite loss on rank(s) [1]"), r["skip_stop_error"]
        assert "2 consecutive steps skipped" in r["skip_stop_error"]
        assert r["skip_total"] == 3, rank
