"""Checkpointing and offload change what is kept for backward, never the gradients (torch.equal)."""

import pytest
import torch
from memory_helpers import (EXPERIMENTS, assert_equal_grads, gradients, model_config, model_inputs,  # noqa: F401
                            one_thread, settings_cases, tiny_model)

from litegen.config import ConfigError, compose
from litegen.parallel.memory import MemorySchedule, MemorySettings, spread


@pytest.fixture(scope="module")
def wan():
    cfg = model_config("tiny")
    inputs = model_inputs(cfg)
    return cfg, inputs, gradients(tiny_model(cfg)[0], inputs, steps=2)


@pytest.mark.parametrize("case", list(settings_cases()))
def test_wan_gradients_identical(case, wan):
    cfg, inputs, reference = wan
    net, _, offloader = tiny_model(cfg, settings_cases()[case])
    assert_equal_grads(gradients(net, inputs, steps=2), reference)  # step 2 reuses the host arena
    if settings_cases()[case].offload_ratio:
        assert offloader.bytes_to_host > 0  # the offload path really ran


@pytest.mark.parametrize("experiment", EXPERIMENTS[1:])
def test_every_family_gradients_identical(experiment):
    """Checkpointing and offload wrap each family's own blocks (ModelPlan.blocks), unmodified."""
    cfg = model_config(experiment)
    inputs = model_inputs(cfg, thw=(4, 8, 16))
    reference = gradients(tiny_model(cfg)[0], inputs)
    for settings in (MemorySettings("full", offload_ratio=1.0),
                     MemorySettings("selective", 0.5, "save_matmuls", offload_ratio=1.0)):
        net, _, offloader = tiny_model(cfg, settings)
        assert_equal_grads(gradients(net, inputs), reference)
        assert offloader.bytes_to_host > 0


def test_no_grad_forward_is_untouched(wan):
    cfg, inputs, _ = wan
    plain = tiny_model(cfg)[0]
    net, _, offloader = tiny_model(cfg, MemorySettings("full", offload_ratio=1.0))
    with torch.no_grad():
        assert torch.equal(net(*inputs), plain(*inputs))
    assert offloader.bytes_to_host == 0


def test_blocks_are_spread_and_offload_takes_the_first():
    assert spread(30, 10) == list(range(0, 30, 3))
    assert spread(4, 2) == [0, 2] and spread(4, 4) == [0, 1, 2, 3] and spread(4, 0) == []
    blocks = MemorySettings("selective", 0.5, "save_attention", offload_ratio=0.25).blocks(8)
    assert [i for i, b in enumerate(blocks) if b.checkpoint] == [0, 2, 4, 6]
    assert {b.checkpoint for b in blocks} == {"save_attention", None}
    assert [i for i, b in enumerate(blocks) if b.offload] == [0, 1]
    assert all(b.checkpoint == "recompute_all" for b in MemorySettings("full").blocks(3))


def test_schedule_picks_settings_by_tokens():
    small, large = MemorySettings(), MemorySettings("full")
    schedule = MemorySchedule([(1000, small), (4000, large)])
    assert schedule.settings_for(10) is small and schedule.settings_for(1000) is small
    assert schedule.settings_for(1001) is large and schedule.settings_for(10**6) is large


@pytest.mark.parametrize("override, field", [
    ("parallel.activation_checkpointing=some", "parallel.activation_checkpointing"),
    ("parallel.ac_policy=save_everything", "parallel.ac_policy"),
    ("parallel.ac_ratio=1.5", "parallel.ac_ratio"),
    ("parallel.offload.ratio=-0.1", "parallel.offload.ratio"),
    ("parallel.offload.prefetch_blocks=-1", "parallel.offload.prefetch_blocks"),
    ("parallel.memory=sometimes", "parallel.memory"),
    ("parallel.memory_plan.margin=1.0", "parallel.memory_plan.margin"),
])
def test_memory_config_mistakes_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        compose(["experiment=tiny", override])


def test_full_with_a_ratio_says_to_use_selective():
    with pytest.raises(ConfigError, match="activation_checkpointing=selective"):
        compose(["experiment=tiny", "parallel.activation_checkpointing=full", "parallel.ac_ratio=0.5"])
