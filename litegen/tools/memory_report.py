"""The memory planner's report for `python -m litegen.tools.plan gpu_mem_gib=...` (and benchmarks)."""

import torch

from litegen.config import LiteGenConfig
from litegen.parallel.planner import (ClipPlan, Hardware, Layout, ModelFacts, plan_clip, run_precision,
                                      size)

DEFAULT_LATENT_THW = (21, 60, 104)  # an 81-frame 480p clip through Wan's VAE (as the dry run)


def hardware(memory: dict) -> Hardware:
    return Hardware(memory["gpu_mem_gib"], memory.get("host_link_gb_s", 25.0),
                    memory.get("gpu_tflops", 400.0), memory.get("margin", 0.1))


def plan_clips(cfg: LiteGenConfig, world_size: int, latents: list, memory: dict) -> tuple[ModelFacts, list[ClipPlan]]:
    """Plan each latent (C, T, H, W) for GPUs (bf16 autocast) as the request describes."""
    facts = ModelFacts.from_config(cfg.model)
    layout = Layout(world_size, cfg.parallel.backend, cfg.parallel.zero_stage)
    precision = run_precision(cfg, torch.device("cuda"), world_size)
    text_len = int(memory.get("text_len", cfg.encoders.text.max_length))
    batches = list(range(1, int(memory.get("max_batch", cfg.data.batch_size)) + 1))
    return facts, [plan_clip(facts, latent, text_len, hardware(memory), layout, precision, batches,
                             prefetch=cfg.parallel.offload.prefetch_blocks) for latent in latents]


def describe_plan(plan: ClipPlan, layers: int, heads) -> str:
    """One line: the layout and memory settings the planner chose."""
    ulysses, ring = plan.layout.sp_split(heads)
    return (f"sp {plan.layout.sp} (ulysses {ulysses} x ring {ring}), micro-batch {plan.batch}, "
            f"{plan.settings.describe(layers)}")


def clip_lines(plan: ClipPlan, layers: int, heads) -> list[str]:
    m = plan.memory
    return [f"latent {'x'.join(map(str, plan.latent))} ({plan.tokens:,} tokens): {describe_plan(plan, layers, heads)}",
            f"  per rank: model states {size(m.states)}, block activations {size(m.blocks)}, outside blocks "
            f"{size(m.outside)}, backward working set {size(m.working)} = {size(m.total)}",
            f"  recompute {plan.recompute_fraction:.1%} of step FLOPs; offloaded {size(m.host)} per step to host; "
            f"block forward {plan.compute_s * 1e3:.1f} ms, largest block copy {plan.copy_s * 1e3:.1f} ms",
            f"  overrides: {' '.join(plan.overrides(heads))}"]


def plan_lines(cfg: LiteGenConfig, request) -> list[str]:
    latents = request.latents or [(cfg.model.in_channels, *DEFAULT_LATENT_THW)]
    facts, plans = plan_clips(cfg, request.world_size, latents, request.memory)
    heads = getattr(cfg.model, "num_heads", None)
    precision = run_precision(cfg, torch.device("cuda"), request.world_size)
    lines = [f"memory plan: {cfg.model.name} ({cfg.model.family}), {facts.params:,} params, {facts.layers} blocks, "
             f"{cfg.parallel.backend}; {hardware(request.memory).describe(request.world_size)}; "
             f"{'bf16 autocast' if precision.autocast else 'fp32'}"]
    for plan in plans:
        lines += clip_lines(plan, facts.layers, heads)
    return lines
