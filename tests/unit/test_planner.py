"""The memory planner: its choices fit by its own model, follow the documented order (fewest
recomputed FLOPs; offload only where the copy hides), match what the chosen settings really save
on CPU, respect each family's SP layouts, are applied by parallel.memory=auto, and an impossible
request names what to change."""

from dataclasses import replace

import pytest
import torch
from memory_helpers import TEXT_LEN, model_config, model_inputs, one_thread, tiny_model  # noqa: F401

from litegen.config import ConfigError, compose
from litegen.models import build_model, model_plan
from litegen.models.activations import Precision, activation_model
from litegen.parallel.dims import ParallelDims
from litegen.parallel.memory import MemorySchedule, MemorySettings, apply_memory
from litegen.parallel.parallelize import parallelize
from litegen.parallel.planner import (ClipCost, Hardware, Layout, ModelFacts, _checkpoint_options,
                                      auto_layout, auto_schedule, evaluate, model_state_bytes, plan_clip,
                                      planned_clips, sp_options)
from litegen.parallel.saved_bytes import SavedBytes

FP32 = Precision(4)
THW = (8, 32, 32)  # 2,048 tokens of the tiny model
TFLOPS = 0.05  # a slow "GPU" so the tiny model's blocks take long enough to hide copies


@pytest.fixture(scope="module")
def tiny():
    cfg = model_config("tiny")
    return cfg, ModelFacts.from_config(cfg)


def plan(tiny, gib: float, link_gb_s: float = 25.0, world: int = 1, batches=(1, 2)):
    cfg, facts = tiny
    hw = Hardware(gib, host_link_gb_s=link_gb_s, gpu_tflops=TFLOPS)
    return plan_clip(facts, (cfg.in_channels, *THW), TEXT_LEN, hw, Layout(world), FP32, list(batches))


@pytest.mark.parametrize("link_gb_s", [25.0, 0.5])
def test_choices_fit_and_save_more_as_memory_shrinks(tiny, link_gb_s):
    totals = []
    for gib in (1.0, 0.3, 0.15, 0.12, 0.09):
        chosen = plan(tiny, gib, link_gb_s, batches=(1,))
        assert chosen.memory.total <= Hardware(gib).usable_bytes
        if chosen.settings.offload_ratio > 0:  # offload only where the copy hides under compute
            assert chosen.copy_s <= chosen.compute_s
        totals.append(chosen.memory.total)
    assert plan(tiny, 1.0, link_gb_s).settings == MemorySettings()  # room for everything: keep it all
    assert totals[-1] < totals[0]


def test_a_slow_link_never_offloads_and_a_fast_one_prefers_offload_to_recompute(tiny):
    slow = plan(tiny, 0.09, link_gb_s=0.001, batches=(1,))
    assert slow.settings.offload_ratio == 0 and slow.settings.activation_checkpointing != "none"
    fast = plan(tiny, 0.12, link_gb_s=25.0, batches=(1,))
    assert fast.settings.offload_ratio > 0 and fast.recompute_fraction == 0


def test_fewest_recompute_flops_first(tiny):
    """Brute force over every checkpoint option and offload count: nothing that fits recomputes
    fewer FLOPs than the planner's choice, and a tight budget with a useless link needs some."""
    cfg, facts = tiny
    hw = Hardware(0.08, host_link_gb_s=0.001, gpu_tflops=TFLOPS)
    chosen = plan(tiny, 0.08, link_gb_s=0.001, batches=(1,))
    cost = ClipCost.of(facts, activation_model(cfg, FP32), (cfg.in_channels, *THW), TEXT_LEN, 1, 1)
    states = model_state_bytes(facts, Layout(1), FP32)
    fitting = []
    for option in _checkpoint_options(facts.layers):
        for k_off in range(facts.layers + 1):
            settings = replace(option, offload_ratio=k_off / facts.layers)
            memory = evaluate(cost, settings, facts.layers, states, hw)[0]
            if memory is not None and memory.total <= hw.usable_bytes:
                fitting.append(sum(cost.recompute_flops(m.checkpoint) for m in settings.blocks(facts.layers)))
    assert chosen.recompute_fraction > 0
    assert min(fitting) / cost.step_flops == pytest.approx(chosen.recompute_fraction)


def test_sequence_parallel_rather_than_recompute(tiny):
    one = plan(tiny, 0.09, link_gb_s=0.001, world=1, batches=(1,))
    two = plan(tiny, 0.09, link_gb_s=0.001, world=2, batches=(1,))
    assert one.layout.sp == 1 and one.recompute_fraction > 0
    assert two.layout.sp == 2 and two.recompute_fraction == 0  # SP 2 halves activations instead


def test_planned_bytes_match_what_the_chosen_settings_save(tiny):
    """The chosen plan's kept and offloaded bytes vs saved-tensor hooks and the offloader: 10%."""
    cfg, facts = tiny
    for gib, link in ((0.12, 25.0), (0.09, 0.5), (0.3, 25.0)):
        chosen = plan(tiny, gib, link)
        model = activation_model(cfg, FP32)
        cost = ClipCost.of(facts, model, chosen.latent, TEXT_LEN, chosen.batch, 1)
        modes = chosen.settings.blocks(facts.layers)
        predicted = sum(cost.kept[m.checkpoint] for m in modes) + model.outside.bytes(cost.counts)
        kept_only = MemorySettings(chosen.settings.activation_checkpointing, chosen.settings.ac_ratio,
                                   chosen.settings.ac_policy)
        net, plan_, _ = tiny_model(cfg, kept_only)
        inputs = model_inputs(cfg, THW, chosen.batch)
        with SavedBytes(net, plan_) as counted:
            net(*inputs)
        assert abs(predicted - counted.total) <= 0.1 * counted.total, (gib, link, predicted, counted.total)
        if chosen.settings.offload_ratio > 0:
            net, _, offloader = tiny_model(cfg, chosen.settings)
            (net(*inputs) ** 2).mean().backward()
            moved = offloader.bytes_to_host
            assert abs(chosen.memory.host - moved) <= 0.1 * moved, (gib, link, chosen.memory.host, moved)


def test_grid_families_get_only_ulysses_degrees_dividing_their_heads():
    cfg = model_config("vchitect_tiny")  # grid (spatial/temporal) attention cores
    facts = ModelFacts.from_config(cfg)
    options = sp_options(facts, 8, 10_000)
    assert options and all(cfg.num_heads % d == 0 for d in options), (cfg.num_heads, options)
    wan = ModelFacts.from_config(model_config("tiny"))
    assert sp_options(wan, 8, 10_000) == [1, 2, 4, 8]  # plain self-attention: ring takes the rest


def test_infeasible_request_names_what_to_change(tiny):
    with pytest.raises(ConfigError) as err:
        plan(tiny, 0.02, world=2)
    msg = str(err.value)
    assert "gpu_mem_gib" in msg and "does not fit 2 x 0.02 GiB" in msg and "2,048 tokens" in msg
    assert "a larger world_size" in msg and "GPUs with >=" in msg and "clips of at most" in msg


def auto_cfg(*extra: str):
    return compose(["experiment=tiny", "parallel.memory=auto", "parallel.memory_plan.gpu_mem_gib=0.09",
                    "parallel.memory_plan.gpu_tflops=0.05", "parallel.memory_plan.host_link_gb_s=0.5",
                    "data.batch_size=1", *extra])


def test_memory_auto_plans_every_stage_bucket_at_its_batch_size():
    cfg = auto_cfg("+data.buckets={small: [8, 32, 32], big: [12, 64, 64]}",
                   "+data.stages=[{name: lo, buckets: [small], batch_size: 2}, {name: hi, start_step: 10}]")
    c, t, s = cfg.model.in_channels, cfg.encoders.video.temporal_factor, cfg.encoders.video.spatial_factor
    small, big = (c, 8 // t, 32 // s, 32 // s), (c, 12 // t, 64 // s, 64 // s)
    assert planned_clips(cfg) == [(small, 1), (small, 2), (big, 1)]


def test_memory_auto_applies_the_planner_per_clip():
    cfg = auto_cfg("parallel.memory_plan.clips=[[4,16,16],[8,32,32]]")
    planned = auto_layout(cfg, 1, torch.device("cpu"))
    assert planned.parallel.activation_checkpointing != "none"  # the big clip needs recompute here
    schedule = auto_schedule(cfg, 1, torch.device("cpu"), 1)
    (small_tokens, small), (big_tokens, big) = schedule.entries
    assert (small_tokens, big_tokens) == (256, 2048)
    assert small == MemorySettings() and big.activation_checkpointing == planned.parallel.activation_checkpointing
    # parallelize installs it: the big clip's blocks are checkpointed, the small one's are not.
    with torch.device("meta"):
        net = build_model(planned.model)
    net = parallelize(net, planned, ParallelDims.from_config(planned.parallel, 1), 0, torch.device("cpu"))
    assert net.activation_memory[0].entries == schedule.entries
    for thw, expected in (((4, 16, 16), small), ((8, 32, 32), big)):
        with SavedBytes(net, model_plan(planned.model)) as counted:
            net(*model_inputs(planned.model, thw, 1))
        reference, plan_, _ = tiny_model(planned.model, expected)
        with SavedBytes(reference, plan_) as wanted:
            reference(*model_inputs(planned.model, thw, 1))
        assert counted.total == wanted.total, thw


def test_memory_auto_off_a_gpu_needs_the_memory_size():
    with pytest.raises(ConfigError, match="parallel.memory_plan.gpu_mem_gib"):
        auto_layout(auto_cfg("parallel.memory_plan.gpu_mem_gib=0"), 1, torch.device("cpu"))


def test_offload_refuses_compiled_blocks():
    cfg = model_config("tiny")
    net, plan_, _ = tiny_model(cfg)
    plan_.block_list(net)[1].compile()  # lazy: nothing is compiled until a call
    with pytest.raises(ValueError, match="block 1 is compiled.*parallel.offload.enabled=false"):
        apply_memory(net, plan_, MemorySchedule.single(MemorySettings(offload_ratio=1.0)), torch.device("cpu"))
