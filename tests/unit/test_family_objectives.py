"""v-prediction, EDM and masked-token objectives; the palette tokenizer; objective/model checks."""

import math

import pytest
import torch
from torch import nn

from litegen.config import ConfigError, EDMConfig, MaskedTokensConfig, VPredictionConfig, compose
from litegen.encoders.vq import PaletteTokenizer
from litegen.objectives import EDM, Cond, MaskedTokens, VPrediction, build_objective
from litegen.objectives.masked_tokens import mask_ratio, random_mask
from litegen.objectives.v_prediction import alphas_cumprod, explicit_uniform
from test_objective import Recorder, _cond


def cond(batch=2, length=3, dim=4):
    return _cond(batch, length, dim)


# ---- v-prediction -----------------------------------------------------------------------------

def test_schedule_has_zero_terminal_snr_and_shifted_snr():
    shifted = alphas_cumprod(VPredictionConfig(zero_terminal_snr=False, snr_shift_scale=3.0))
    plain = alphas_cumprod(VPredictionConfig(zero_terminal_snr=False, snr_shift_scale=1.0))
    snr = lambda a: a / (1 - a)  # noqa: E731
    torch.testing.assert_close(snr(shifted), snr(plain) / 3.0)
    zero = alphas_cumprod(VPredictionConfig())
    assert zero[-1] == 0.0 and bool((zero[1:] < zero[:-1]).all())
    torch.testing.assert_close(zero[0], shifted[0])  # the rescale keeps the first step


def test_explicit_uniform_timesteps_cover_every_stratum_across_ranks():
    n, ranks = 4, 3
    draws = [explicit_uniform(n, r, ranks, torch.Generator().manual_seed(10 + r), "cpu") for r in range(ranks)]
    for rank, u in enumerate(draws):
        assert bool(((u >= rank / ranks) & (u < (rank + 1) / ranks)).all())
    strata = torch.cat(draws).mul(n * ranks).floor().long().sort().values
    assert strata.tolist() == list(range(n * ranks))
    obj = build_objective(VPredictionConfig())
    indices = obj.sample_indices(16, torch.Generator().manual_seed(0), "cpu", stratum=(2, 4))
    assert int(indices.min()) >= 500 and int(indices.max()) < 750


def test_v_loss_uses_noised_latents_and_v_target():
    obj = VPrediction(VPredictionConfig(timestep_sampling="uniform"))
    x0 = torch.randn(2, 3, 2, 4, 4)
    pred = torch.randn_like(x0)
    model = Recorder(pred)
    out = obj.loss(model, x0, cond(), torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(x0.shape, generator=gen)
    index = (torch.rand(2, generator=gen) * 1000).long()
    a = obj.alphas_cumprod[index].float().view(-1, 1, 1, 1, 1)
    x_t, t = model.seen
    torch.testing.assert_close(t, index.float() / 1000)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    target = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(out.loss, ((pred - target) ** 2).mean())


class ExactV(nn.Module):
    """The true v when all data is the point x0."""

    def __init__(self, x0, alphas):
        super().__init__()
        self.x0, self.alphas = x0, alphas

    def forward(self, x, t, context, mask):
        a = self.alphas[(t * 1000).round().long()].float().view(-1, 1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0


def test_ddim_sampler_starts_at_pure_noise_and_reaches_the_data():
    obj = VPrediction(VPredictionConfig())
    assert obj.sample_indices_grid(4) == [999, 749, 499, 249]
    x0 = torch.randn(1, 3, 2, 4, 4)
    out = obj.sample(ExactV(x0, obj.alphas_cumprod), torch.randn(2, 3, 2, 4, 4), cond(), cond(), 5, 1.0)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-4, rtol=1e-4)


# ---- EDM --------------------------------------------------------------------------------------

def test_edm_loss_is_weighted_denoising_error():
    obj = EDM(EDMConfig(input_scale=2.0))
    latents = torch.randn(3, 2, 2, 4, 4)
    out_f = torch.randn_like(latents)
    model = Recorder(out_f)
    loss = obj.loss(model, latents, cond(3), torch.Generator().manual_seed(1)).loss
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=gen)
    sigma = (torch.randn(3, generator=gen) * 1.2 - 1.2).exp()
    x0 = latents / 2.0
    x = x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1, 1) for c in obj.preconditioning(sigma))
    seen_x, seen_t = model.seen
    torch.testing.assert_close(seen_x, c_in * x)
    torch.testing.assert_close(seen_t, sigma.log() / 4)
    denoised = c_skip * x + c_out * out_f
    weighted = obj.loss_weight(sigma).view(-1, 1, 1, 1, 1) * (denoised - x0) ** 2
    torch.testing.assert_close(loss, weighted.mean(), rtol=1e-4, atol=1e-6)
    assert obj.sigma_data == 0.25  # input scaling divides the data's std


class ExactDenoiser(nn.Module):
    """F such that D(x; sigma) = x0 exactly (all data is the point x0, already input-scaled)."""

    def __init__(self, x0, obj):
        super().__init__()
        self.x0, self.obj = x0, obj

    def forward(self, x_in, c_noise, context, mask):
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = (c.view(-1, 1, 1, 1, 1) for c in self.obj.preconditioning(sigma))
        x = x_in / c_in
        return (self.x0 - c_skip * x) / c_out


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_edm_samplers_reach_the_data(sampler):
    obj = EDM(EDMConfig(sampler=sampler, input_scale=2.0))
    x0 = torch.randn(1, 3, 2, 4, 4)
    grid = obj.sigma_grid(6)
    assert grid[0] == 80.0 and grid[-1] == 0.0 and abs(grid[-2] - 0.002) < 1e-12
    out = obj.sample(ExactDenoiser(x0 / 2.0, obj), torch.randn(2, 3, 2, 4, 4), cond(), cond(), 6, 1.0)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-3, rtol=1e-3)


def test_edm_sigmas_are_log_normal():
    sigma = EDM(EDMConfig()).sample_sigmas(20000, torch.Generator().manual_seed(0), "cpu")
    assert abs(float(sigma.log().mean()) + 1.2) < 0.03 and abs(float(sigma.log().std()) - 1.2) < 0.03


# ---- masked tokens and the palette tokenizer --------------------------------------------------

def test_palette_tokenizer_round_trips_flat_colours_and_downsamples():
    tok = PaletteTokenizer(12, levels=4, patch=2)
    levels = torch.linspace(-1, 1, 4)
    colours = levels[torch.randint(0, 4, (2, 3, 2, 3, 2))]  # [B, rgb, T, rows, cols] of tokens
    latents = colours[:, :, None, :, :, None, :, None].expand(2, 3, 4, 2, 3, 2, 2, 2).reshape(2, 12, 2, 6, 4)
    ids = tok.encode(latents)
    assert ids.shape == (2, 2, 3, 2) and int(ids.max()) < tok.vocab_size == 64
    assert tok.token_grid((12, 2, 6, 4)) == (2, 3, 2)
    torch.testing.assert_close(tok.decode(ids), latents)
    with pytest.raises(ValueError, match="palette patches"):
        tok.token_grid((12, 2, 5, 4))


def test_mask_schedule_and_random_mask():
    assert float(mask_ratio(torch.tensor(0.0), "cosine")) == 1.0
    assert abs(float(mask_ratio(torch.tensor(1.0), "cosine"))) < 1e-6
    ratios = torch.tensor([0.0, 0.25, 1.0])
    masked = random_mask(8, ratios, torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [1, 2, 8]  # at least one token is always masked


class LogitsFor(nn.Module):
    """Confident, correct logits for `ids` where the input is masked; garbage elsewhere."""

    def __init__(self, ids, vocab):
        super().__init__()
        self.ids, self.vocab = ids, vocab

    def forward(self, tokens, context, mask, actions=None):
        right = torch.nn.functional.one_hot(self.ids.expand(tokens.shape[0], *self.ids.shape[1:]), self.vocab) * 30.0
        garbage = torch.randn(*tokens.shape, self.vocab) * 30.0
        is_masked = (tokens == self.vocab)[..., None]
        return torch.where(is_masked, right.float(), garbage)


def test_masked_token_loss_counts_only_masked_positions_and_decoding_recovers_tokens():
    obj = MaskedTokens(MaskedTokensConfig(palette_patch=1))
    latents = torch.rand(2, 12, 2, 4, 4) * 2 - 1
    ids = obj.tokenizer.encode(latents)
    out = obj.loss(LogitsFor(ids, obj.mask_id), latents, cond(), torch.Generator().manual_seed(0))
    assert float(out.loss) < 1e-6 and out.metrics["token_acc"] == 1.0 and 0 < out.metrics["mask_ratio"] <= 1
    assert obj.still_masked(5, 6, 100) == 0 and obj.still_masked(0, 6, 100) > obj.still_masked(3, 6, 100)
    noise = torch.randn(1, 12, 2, 4, 4)
    decoded = obj.sample(LogitsFor(ids[:1], obj.mask_id), noise, cond(1), cond(1), 4, 3.0,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decoded, obj.tokenizer.decode(ids[:1]))


def test_cond_batches_actions():
    a = Cond(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 4, 5))
    both = a.cat(Cond(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 4, 5)))
    assert both.actions.shape == (2, 4, 5)
    with pytest.raises(ValueError, match="actions"):
        a.cat(Cond(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)))


# ---- configs tie objectives and models together -----------------------------------------------

def test_token_model_and_objective_must_go_together():
    with pytest.raises(ConfigError, match="objective.name"):
        compose(["experiment=tiny", "objective=masked_tokens"])
    with pytest.raises(ConfigError, match="objective.name"):
        compose(["experiment=worlddreamer_tiny", "objective=rectified_flow"])
    with pytest.raises(ConfigError, match="model.vocab_size"):
        compose(["experiment=worlddreamer_tiny", "objective.palette_levels=3"])
    with pytest.raises(ConfigError, match="model.patch_size"):
        compose(["experiment=worlddreamer_tiny", "objective.palette_patch=1"])
    with pytest.raises(ConfigError, match="objective.timestep_sampling"):
        compose(["experiment=cogvideox_tiny", "objective.timestep_sampling=logit_normal"])
    assert math.isclose(compose(["experiment=snapvideo_tiny"]).objective.sigma_data, 0.5)
