"""Analytic training FLOPs of every family (litegen/models/family_flops.py) against FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from litegen.config import compose
from litegen.models import build_model, train_flops_per_sample
from litegen.models.flops import cpu_sdpa_flop_formulas

EXPERIMENTS = ["cogvideox_tiny", "vchitect_tiny", "snapvideo_tiny", "worlddreamer_tiny"]
BATCH, TEXT_LEN = 2, 10
LATENT = (12, 8, 16, 16)  # (C, T, H, W): 4 frames-groups of latents for FIT, 4x4 windows of tokens


def batch_for(cfg):
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(BATCH, TEXT_LEN, cfg.text_dim, generator=gen)
    mask = torch.arange(TEXT_LEN).expand(BATCH, -1) < torch.tensor([[TEXT_LEN], [4]])
    if cfg.family == "worlddreamer":
        grid = [n // p for n, p in zip(LATENT[1:], cfg.patch_size)]
        return torch.randint(0, cfg.vocab_size + 1, (BATCH, *grid), generator=gen), context, mask
    return torch.randn(BATCH, *LATENT, generator=gen), torch.rand(BATCH, generator=gen), context, mask


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_analytic_total_matches_flop_counter(experiment):
    cfg = compose([f"experiment={experiment}"]).model
    model = build_model(cfg)
    model.init_weights(0)
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flop_formulas()) as counter:
        model(*batch_for(cfg)).float().square().mean().backward()
    counted = counter.get_total_flops() // BATCH
    analytic = train_flops_per_sample(cfg, LATENT, TEXT_LEN)
    # The analytic count charges backward for the first layers' input gradients, which autograd
    # skips (inputs need no grad): a small over-count, as for Wan.
    assert abs(counted - analytic) / analytic < 0.03, (counted, analytic)
