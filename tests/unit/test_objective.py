"""Rectified flow: the loss sees the right x_t and target, and the sampler follows the ODE."""

import torch
from torch import nn

from litegen.config import RectifiedFlowConfig
from litegen.objectives import Cond, RectifiedFlow
from litegen.objectives.guidance import drop_captions, guided_prediction
from litegen.objectives.rectified_flow import shift_time


class Recorder(nn.Module):
    """Returns a fixed prediction and remembers what the objective fed it."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x, t, context, context_mask):
        self.seen = (x.clone(), t.clone())
        return self.pred


def _cond(b=2, length=3, dim=4):
    return Cond(torch.randn(b, length, dim), torch.ones(b, length, dtype=torch.bool))


def test_loss_uses_straight_path_and_velocity_target():
    obj = RectifiedFlow(RectifiedFlowConfig(timestep_sampling="uniform"))
    x0 = torch.randn(2, 3, 2, 4, 4)
    pred = torch.randn_like(x0)
    model = Recorder(pred)
    out = obj.loss(model, x0, _cond(), torch.Generator().manual_seed(7))
    # Replay the generator to recover the noise and t the objective drew.
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.rand(2, generator=gen)
    x_t, t_seen = model.seen
    torch.testing.assert_close(t_seen, t)
    tb = t.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - tb) * x0 + tb * noise)
    torch.testing.assert_close(out.loss, ((pred - (noise - x0)) ** 2).mean())
    assert torch.isfinite(out.loss)


def test_timestep_sampling_range_and_shift():
    for sampling in ("uniform", "logit_normal"):
        obj = RectifiedFlow(RectifiedFlowConfig(timestep_sampling=sampling, train_shift=3.0))
        t = obj.sample_timesteps(4096, torch.Generator().manual_seed(0), "cpu")
        assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
        assert float(t.mean()) > 0.6  # shift 3 moves mass towards noise
    grid = torch.linspace(0, 1, 11)
    assert torch.equal(shift_time(grid, 1.0), grid)
    shifted = shift_time(grid, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted[1:] > shifted[:-1]).all())


class ExactVelocity(nn.Module):
    """The true velocity field when all data is one point x0: v(x, t) = (x - x0) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, context, context_mask):
        return (x - self.x0) / t.view(-1, 1, 1, 1, 1)


def test_euler_sampler_reaches_data_and_keeps_shape():
    x0 = torch.randn(1, 3, 2, 4, 4)
    obj = RectifiedFlow(RectifiedFlowConfig(sample_shift=3.0))
    noise = torch.randn(2, 3, 2, 4, 4)
    cond, null = _cond(2), _cond(2)
    out = obj.sample(ExactVelocity(x0), noise, cond, null, steps=10, guidance_scale=1.0)
    assert out.shape == noise.shape
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-4, rtol=1e-4)


def test_guidance_combines_conditional_and_unconditional():
    class ByContext(nn.Module):
        def forward(self, x, t, context, context_mask):
            return x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)

    x = torch.randn(2, 1, 1, 2, 2)
    t = torch.rand(2)
    cond, null = _cond(2), _cond(2)
    model = ByContext()
    expected_c, expected_u = model(x, t, cond.context, None), model(x, t, null.context, None)
    got = guided_prediction(model, x, t, cond, null, 3.0)
    torch.testing.assert_close(got, expected_u + 3.0 * (expected_c - expected_u))


def test_caption_dropout_rate_and_determinism():
    captions = [f"caption {i}" for i in range(4000)]
    a = drop_captions(captions, 0.25, torch.Generator().manual_seed(1))
    b = drop_captions(captions, 0.25, torch.Generator().manual_seed(1))
    assert a == b
    rate = sum(c == "" for c in a) / len(a)
    assert 0.22 < rate < 0.28
    assert drop_captions(captions[:3], 0.0, torch.Generator()) == captions[:3]


class ExactData(nn.Module):
    """A perfect data predictor when all data is one point x0."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, context, context_mask):
        return self.x0.expand_as(x)


def test_data_prediction_loss_is_taken_on_the_implied_velocity():
    obj = RectifiedFlow(RectifiedFlowConfig(timestep_sampling="uniform", prediction="data",
                                            min_t_data=0.05))
    x0 = torch.randn(3, 2, 2, 4, 4)
    pred = torch.randn_like(x0)
    model = Recorder(pred)
    out = obj.loss(model, x0, _cond(3), torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.rand(3, generator=gen)
    x_t, _ = model.seen
    v_hat = (x_t - pred) / t.clamp(min=0.05).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(out.loss, ((v_hat - (noise - x0)) ** 2).mean())
    # A perfect data prediction gives zero loss wherever t is not clamped.
    perfect = obj.loss(ExactData(x0), x0, _cond(3), torch.Generator().manual_seed(3))
    if float(t.min()) >= 0.05:
        assert float(perfect.loss) < 1e-10


def test_euler_sampler_with_data_prediction_reaches_data():
    x0 = torch.randn(1, 3, 2, 4, 4)
    obj = RectifiedFlow(RectifiedFlowConfig(prediction="data"))
    out = obj.sample(ExactData(x0), torch.randn(2, 3, 2, 4, 4), _cond(2), _cond(2), steps=8,
                     guidance_scale=2.0)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-5, rtol=1e-5)
