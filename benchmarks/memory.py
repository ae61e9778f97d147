"""Activation memory on CPU: saved bytes per token per layer for none / full / selective
checkpointing (gamma = bytes / token / layer / d), and what the recompute costs.

For one Wan-shaped model (default: the tiny experiment at d=256, 4 layers) and one clip, each mode's
block activations are counted with saved-tensor hooks (litegen.parallel.saved_bytes: what
autograd really keeps, per block), next to the planner's analytic prediction. The recompute
overhead is the measured forward+backward time of the mode over the same without checkpointing
(median over interleaved repetitions, so drift in machine load hits every mode alike), and the
analytic ratio from FLOPs: (forward + backward + recomputed forward) / (forward + backward).
CPU timings are indicative only (no GPU kernels, 2 shared cores); gamma does not depend on the
device, except that bf16 autocast here uses the CPU SDPA kernel, which saves the same tensors.

    python benchmarks/memory.py [--latent 8x32x32] [--batch 1] [--reps 5] [overrides ...]
"""

import argparse
import statistics
import time

import torch

from litegen.config import compose
from litegen.models import build_model, model_family, model_plan
from litegen.models.activations import Precision, activation_model, unit_counts
from litegen.parallel.memory import MemorySchedule, MemorySettings, apply_memory
from litegen.parallel.saved_bytes import SavedBytes

MODES = {
    "none": (MemorySettings(), None),
    "selective save_matmuls": (MemorySettings("selective", 1.0, "save_matmuls"), "save_matmuls"),
    "selective save_attention": (MemorySettings("selective", 1.0, "save_attention"), "save_attention"),
    "selective 1/2 recompute_all": (MemorySettings("selective", 0.5, "recompute_all"), "half"),
    "full": (MemorySettings("full"), "recompute_all"),
}
TEXT_LEN = 16


def build(cfg, settings: MemorySettings):
    net = build_model(cfg)
    net.init_weights(0)
    plan = model_plan(cfg)
    apply_memory(net, plan, MemorySchedule.single(settings), torch.device("cpu"))
    return net, plan


def inputs(cfg, latent, batch: int):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, *latent, generator=gen), torch.rand(batch, generator=gen),
            torch.randn(batch, TEXT_LEN, cfg.text_dim, generator=gen), torch.ones(batch, TEXT_LEN, dtype=torch.bool))


def counted_block_bytes(cfg, settings, args, bf16: bool) -> float:
    """Mean bytes a block keeps for backward, counted by saved-tensor hooks."""
    net, plan = build(cfg, settings)
    with SavedBytes(net, plan) as counted, torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        net(*args)
    return statistics.mean(counted.blocks)


def predicted_block_bytes(cfg, policy, latent, batch: int, bf16: bool) -> float:
    block = activation_model(cfg, Precision(2 if bf16 else 4, weight_copies=bf16)).block
    counts = unit_counts(cfg, latent, TEXT_LEN, batch)
    if policy == "half":  # every other block fully recomputed, the rest plain
        return (block.kept(None).bytes(counts) + block.kept("recompute_all").bytes(counts)) / 2
    return block.kept(policy).bytes(counts)


def step_time(net, args) -> float:
    start = time.perf_counter()
    (net(*args).float() ** 2).mean().backward()
    net.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def analytic_ratio(cfg, latent, policy) -> float:
    """(3 F + recomputed F) / 3 F, with the planner's recompute FLOPs per policy."""
    parts = model_family(cfg).train_flops(cfg, latent, TEXT_LEN)
    skip = {"patch_embed", "text_embed", "time_embed", "head", "total"}
    block = sum(v for k, v in parts.items() if k not in skip) / 3 / cfg.num_layers
    attention = sum(v for k, v in parts.items() if k.endswith("core")) / 3 / cfg.num_layers
    per_block = {None: 0.0, "save_matmuls": 0.0, "save_attention": block - attention, "recompute_all": block,
                 "half": block / 2}[policy]
    return 1 + per_block * cfg.num_layers / parts["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", default="8x32x32", help="latent TxHxW (channels from the model)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("overrides", nargs="*", default=["model.dim=256", "model.num_heads=4",
                                                         "model.ffn_dim=1024"])
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = compose(["experiment=tiny", *args.overrides]).model
    latent = (cfg.in_channels, *(int(n) for n in args.latent.split("x")))
    tokens = unit_counts(cfg, latent, TEXT_LEN, args.batch).token
    batch_args = inputs(cfg, latent, args.batch)
    print(f"{cfg.name}: d={cfg.dim}, ffn={cfg.ffn_dim}, heads={cfg.num_heads}, {cfg.num_layers} layers; latent "
          f"{'x'.join(map(str, latent))} x{args.batch} = {tokens:,} tokens; text {TEXT_LEN}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| mode | fp32 bytes/token/layer | gamma fp32 | predicted | bf16 bytes/token/layer | gamma bf16 | "
          "predicted | step time / none (CPU) | analytic FLOPs ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    nets = {name: build(cfg, settings)[0] for name, (settings, _) in MODES.items()}
    times = {name: [] for name in MODES}
    for name in MODES:  # warm-up
        step_time(nets[name], batch_args)
    for _ in range(args.reps):
        for name in MODES:
            times[name].append(step_time(nets[name], batch_args))
    base = statistics.median(times["none"])
    for name, (settings, policy) in MODES.items():
        cells = []
        for bf16 in (False, True):
            counted = counted_block_bytes(cfg, settings, batch_args, bf16) / tokens
            predicted = predicted_block_bytes(cfg, policy, latent, args.batch, bf16) / tokens
            cells += [f"{counted:,.0f}", f"{counted / cfg.dim:.2f}", f"{predicted / cfg.dim:.2f}"]
        ratio = statistics.median(times[name]) / base
        print(f"| {name} | {' | '.join(cells)} | {ratio:.2f} | {analytic_ratio(cfg, latent, policy):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
