"""LR schedule, EMA and the per-step RNG derivation."""

import pytest
import torch
from torch import nn

from litegen.config import OptimConfig
from litegen.train.ema import EMA
from litegen.train.lr import build_scheduler, lr_factor
from litegen.train.rng import derive_seed, step_generator


def test_warmup_then_cosine_to_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg, 110) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # monotone decay
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)  # halfway: mean of 1 and the floor


def test_scheduler_state_round_trip():
    cfg = OptimConfig(lr=1e-3, warmup_steps=5)
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, cfg, 50)
    for _ in range(7):
        opt.step()
        sched.step()
    opt2 = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched2 = build_scheduler(opt2, cfg, 50)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step(); sched.step(); opt2.step(); sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_ema_update_and_apply_restores_weights():
    model = nn.Linear(3, 3)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], start + 1.0)
    trained = model.weight.detach().clone()
    with ema.applied_to(model):
        torch.testing.assert_close(model.weight, start + 1.0)
    assert torch.equal(model.weight, trained)


def test_ema_state_dict_round_trip():
    model = nn.Linear(3, 3)
    ema = EMA(model, decay=0.9)
    other = EMA(nn.Linear(3, 3), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.names)
    with pytest.raises(KeyError, match="EMA state lacks"):
        other.load_state_dict({})


def test_step_seeds_differ_by_every_part():
    seeds = {derive_seed(0, r, s, m) for r in range(3) for s in range(3) for m in range(2)}
    assert len(seeds) == 18
    a = torch.randn(4, generator=step_generator(0, 1, 5, 0, torch.device("cpu")))
    b = torch.randn(4, generator=step_generator(0, 1, 5, 0, torch.device("cpu")))
    assert torch.equal(a, b)
