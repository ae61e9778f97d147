"""Tiny models of every family and their inputs, for the activation-memory tests."""

import pytest
import torch

from litegen.config import compose
from litegen.models import build_model, model_plan
from litegen.parallel.memory import MemorySchedule, MemorySettings, apply_memory

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: a second OpenMP thread makes them ~40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EXPERIMENTS = ["tiny", "cogvideox_tiny", "vchitect_tiny", "snapvideo_tiny", "worlddreamer_tiny"]
TEXT_LEN = 5


def model_config(experiment: str):
    return compose([f"experiment={experiment}"]).model


def tiny_model(cfg, settings=None, copies=None):
    """(net, plan, offloader): built, seed-initialised, with `settings` applied (None: untouched)."""
    net = build_model(cfg)
    net.init_weights(0)
    plan = model_plan(cfg)
    offloader = None
    if settings is not None:
        offloader = apply_memory(net, plan, MemorySchedule.single(settings), torch.device("cpu"), copies)
    return net, plan, offloader


def model_inputs(cfg, thw=(4, 16, 16), batch: int = 2, seed: int = 0) -> tuple:
    """Forward arguments for a latent clip (C, *thw); the token family gets codebook ids."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, TEXT_LEN, cfg.text_dim, generator=gen)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.bool)
    mask[-1, TEXT_LEN - 2:] = False  # a padded caption
    if cfg.family == "worlddreamer":
        grid = [n // p for n, p in zip(thw, cfg.patch_size)]
        return torch.randint(0, cfg.vocab_size, (batch, *grid), generator=gen), context, mask
    latents = torch.randn(batch, cfg.in_channels, *thw, generator=gen)
    return latents, torch.rand(batch, generator=gen), context, mask


def loss_of(net, inputs) -> torch.Tensor:
    return (net(*inputs).float() ** 2).mean()


def gradients(net, inputs, steps: int = 1) -> dict[str, torch.Tensor]:
    """Parameter gradients after `steps` forward/backward passes of the same batch (fresh each)."""
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        loss_of(net, inputs).backward()
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def assert_equal_grads(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not different, f"gradients differ (torch.equal) for {different[:5]}"


def settings_cases() -> dict[str, MemorySettings]:
    return {
        "full": MemorySettings("full"),
        "selective_half_matmuls": MemorySettings("selective", 0.5, "save_matmuls"),
        "selective_attention": MemorySettings("selective", 1.0, "save_attention"),
        "selective_quarter_recompute": MemorySettings("selective", 0.25, "recompute_all"),
        "offload_plain": MemorySettings(offload_ratio=1.0),
        "full_offload_prefetch0": MemorySettings("full", offload_ratio=1.0, prefetch_blocks=0),
        "selective_offload_half": MemorySettings("selective", 0.5, "save_matmuls", offload_ratio=0.5),
    }
