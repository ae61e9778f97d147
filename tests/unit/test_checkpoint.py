"""Checkpointer: a checkpoint counts only with its COMPLETE marker; retention keeps the newest."""

import torch
from torch import nn

from litegen.parallel.distributed import DistInfo
from litegen.train.checkpoint import MARKER, Checkpointer, ModelOptimState, step_dir

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _state(seed):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt, {"train": ModelOptimState(model, opt), "extra": {"step": seed}}


def test_save_load_round_trip(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last_k=0, dist_info=SINGLE)
    model, opt, state = _state(1)
    path = ckpt.save(5, state)
    assert (path / MARKER).is_file() and ckpt.latest() == (5, path)
    model2, opt2, state2 = _state(2)
    ckpt.load(path, state2)
    assert torch.equal(model2.weight, model.weight)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert state2["extra"]["step"] == 1


def test_incomplete_checkpoint_is_never_latest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last_k=0, dist_info=SINGLE)
    _, _, state = _state(1)
    good = ckpt.save(2, state)
    partial = step_dir(tmp_path, 4)
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half written")
    assert ckpt.latest() == (2, good)
    # Saving over a crashed attempt at the same step replaces it.
    ckpt.save(4, state)
    assert ckpt.latest()[0] == 4 and not (partial / "__0_0.distcp").read_bytes() == b"half written"


def test_keep_last_k_prunes_oldest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last_k=2, dist_info=SINGLE)
    _, _, state = _state(1)
    for step in (1, 2, 3, 4):
        ckpt.save(step, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000003", "step-0000004"]


# --- fault tolerance (README "Fault tolerance") ---

import logging  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch.distributed.checkpoint.filesystem as dcp_fs  # noqa: E402

from litegen.train.checkpoint import LEASE_PREFIX, CheckpointSaveError, complete_steps  # noqa: E402


def _weights(state):
    return {k: v.clone() for k, v in state["train"].model.state_dict().items()}


def test_async_save_stages_a_copy_and_loads_equal_to_sync(tmp_path):
    model, _, state = _state(1)
    before = _weights(state)
    sync = Checkpointer(tmp_path / "sync", keep_last_k=0, dist_info=SINGLE).save(3, state)
    background = Checkpointer(tmp_path / "async", keep_last_k=0, dist_info=SINGLE, async_save=True)
    path = background.save(3, state)
    with torch.no_grad():
        model.weight.add_(1.0)  # the step loop goes on while the write runs: must not leak in
    background.wait()
    assert (path / MARKER).is_file() and '"async": true' in (path / MARKER).read_text()
    loaded = []
    for root in (sync, path):
        _, _, other = _state(7)
        Checkpointer(root.parent, 0, SINGLE).load(root, other)
        loaded.append((_weights(other), other["train"].optimizer.state_dict()["state"]))
    (w_sync, o_sync), (w_async, o_async) = loaded
    assert all(torch.equal(w_sync[k], w_async[k]) and torch.equal(w_sync[k], before[k]) for k in before)
    assert all(torch.equal(o_sync[i][k], o_async[i][k]) for i in o_sync for k in o_sync[i])


def test_async_save_is_not_latest_until_marked(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last_k=0, dist_info=SINGLE, async_save=True)
    _, _, state = _state(1)
    ckpt.save(1, state)
    ckpt.wait()
    ckpt.save(2, state)
    if ckpt.pending is not None and not ckpt.pending.future.done():
        assert ckpt.latest()[0] == 1  # still writing: resume would take step 1
    ckpt.pending.future.result()
    ckpt.poll()  # the step-boundary poll writes the marker
    assert ckpt.latest()[0] == 2 and ckpt.pending is None


@pytest.mark.parametrize("async_save", [False, True])
def test_exception_mid_serialisation_keeps_previous_latest(tmp_path, monkeypatch, async_save):
    ckpt = Checkpointer(tmp_path, keep_last_k=0, dist_info=SINGLE, async_save=async_save)
    _, _, state = _state(1)
    ckpt.save(1, state)
    ckpt.wait()
    real, calls = dcp_fs._write_item, []

    def failing(*args, **kwargs):  # the first item is written, the second one fails
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(dcp_fs, "_write_item", failing)
    with pytest.raises(CheckpointSaveError, match="step 2 failed.*stays .*step-0000001"):
        ckpt.save(2, state)
        ckpt.wait()
    assert len(calls) >= 2 and step_dir(tmp_path, 2).is_dir()  # a partial directory was left ...
    assert ckpt.latest()[0] == 1  # ... and is never the latest
    monkeypatch.setattr(dcp_fs, "_write_item", real)
    ckpt.save(3, state)
    ckpt.wait()
    assert [s for s, _ in complete_steps(tmp_path)] == [1, 3]


def test_failed_deletion_only_warns(tmp_path, monkeypatch, caplog):
    ckpt = Checkpointer(tmp_path, keep_last_k=1, dist_info=SINGLE)
    _, _, state = _state(1)
    ckpt.save(1, state)

    def refuse(path, *a, **k):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr("litegen.train.checkpoint.shutil.rmtree", refuse)
    with caplog.at_level(logging.WARNING, logger="litegen.train.checkpoint"):
        ckpt.save(2, state)  # training goes on
    assert ckpt.latest()[0] == 2 and "could not delete" in caplog.text


def test_retention_never_deletes_a_checkpoint_being_read(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last_k=1, dist_info=SINGLE)
    _, _, state = _state(1)
    first = ckpt.save(1, state)
    reader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process on this host holds a read lease on step 1 (as Checkpointer.load does)
        lease = first / f"{LEASE_PREFIX}{os.uname().nodename}-{reader.pid}"
        lease.touch()
        ckpt.save(2, state)
        assert first.is_dir() and (first / MARKER).is_file()
    finally:
        reader.kill()
        reader.wait()
    ckpt.save(3, state)  # the reader is gone: its lease is stale and step 1 goes
    assert [s for s, _ in complete_steps(tmp_path)] == [3]


def test_load_holds_a_lease_while_reading(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, keep_last_k=0, dist_info=SINGLE)
    _, _, state = _state(1)
    path = ckpt.save(1, state)
    seen = []
    real_load = torch.distributed.checkpoint.load
    monkeypatch.setattr("litegen.train.checkpoint.dcp.load",
                        lambda *a, **k: (seen.append(sorted(p.name for p in path.glob(LEASE_PREFIX + "*"))),
                                         real_load(*a, **k)))
    ckpt.load(path, _state(2)[2])
    assert len(seen) == 1 and len(seen[0]) == 1 and not list(path.glob(LEASE_PREFIX + "*"))
