"""Analytic training FLOPs (litegen/models/flops.py) against torch's FlopCounterMode on the tiny Wan."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from litegen.config import compose
from litegen.models import build_model, train_flops_per_sample
from litegen.models.flops import cpu_sdpa_flop_formulas, wan_train_flops

BATCH, LATENT, TEXT_LEN = 2, (12, 3, 8, 12), 10  # (C, T, H, W): 72 video tokens


@pytest.fixture(scope="module")
def tiny():
    cfg = compose([]).model
    model = build_model(cfg)
    model.init_weights(0)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(BATCH, *LATENT, generator=gen), torch.rand(BATCH, generator=gen),
             torch.randn(BATCH, TEXT_LEN, cfg.text_dim, generator=gen),
             torch.arange(TEXT_LEN).expand(BATCH, -1) < torch.tensor([[TEXT_LEN], [4]]))
    return cfg, model, batch


def measured_train_flops(model, batch, custom_mapping=None) -> int:
    """FLOPs FlopCounterMode sees for one forward+backward, per sample."""
    model.zero_grad()
    with FlopCounterMode(display=False, custom_mapping=custom_mapping) as counter:
        model(*batch).square().mean().backward()
    return counter.get_total_flops() // BATCH


def test_analytic_total_matches_flop_counter_within_3_percent(tiny):
    cfg, model, batch = tiny
    analytic = train_flops_per_sample(cfg, LATENT, TEXT_LEN)
    # PyTorch's CPU SDPA kernel is unknown to FlopCounterMode; count it with our formulas...
    counted = measured_train_flops(model, batch, cpu_sdpa_flop_formulas())
    # Measured here: 0.24% below analytic, exactly the input gradients the first layers skip
    # (patch embedding, first text and time Linear: their inputs need no grad).
    assert abs(counted - analytic) / analytic < 0.03, (counted, analytic)
    # ...and cross-check with the math backend, whose bmm calls the counter knows natively.
    with sdpa_kernel(SDPBackend.MATH):
        assert measured_train_flops(model, batch) == counted


def test_flop_counter_misses_cpu_sdpa_without_our_formulas(tiny):
    """Documents the trap: the default CPU kernel is counted as zero FLOPs."""
    cfg, model, batch = tiny
    parts = wan_train_flops(cfg, LATENT, TEXT_LEN)
    missing = parts["self_attn_core"] + parts["cross_attn_core"]
    with_formulas = measured_train_flops(model, batch, cpu_sdpa_flop_formulas())
    assert with_formulas - measured_train_flops(model, batch) == missing


def test_breakdown_sums_to_total_and_scales_with_tokens():
    cfg = compose([]).model
    parts = wan_train_flops(cfg, LATENT, TEXT_LEN)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert all(isinstance(v, int) and v > 0 for v in parts.values())
    double_t = wan_train_flops(cfg, (12, 6, 8, 12), TEXT_LEN)  # twice the video tokens
    assert double_t["self_attn_core"] == 4 * parts["self_attn_core"]
    assert double_t["ffn"] == 2 * parts["ffn"] and double_t["text_embed"] == parts["text_embed"]


def test_big_model_linear_flops_follow_six_n_per_token():
    """For wan_14b at 81 frames 720p the per-token linears are ~6 * (block linear params)."""
    cfg = compose(["model=wan_14b", "encoders/video=diffusers_vae", "encoders.video.path=/x",
                   "encoders/text=t5", "encoders.text.path=/x"]).model
    latent, tokens = (16, 21, 90, 160), 21 * 45 * 80
    parts = wan_train_flops(cfg, latent, 512)
    video_linear_params = cfg.num_layers * (6 * cfg.dim**2 + 2 * cfg.dim * cfg.ffn_dim)
    video_linear = parts["self_attn_proj"] + parts["cross_attn_q_o"] + parts["ffn"]
    assert video_linear == 6 * video_linear_params * tokens
    assert parts["self_attn_core"] > video_linear  # at 75k tokens attention dominates


def test_rejects_latents_not_divisible_by_patch():
    with pytest.raises(ValueError, match="patch_size"):
        wan_train_flops(compose([]).model, (12, 3, 7, 12), TEXT_LEN)
