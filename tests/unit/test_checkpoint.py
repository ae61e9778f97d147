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
