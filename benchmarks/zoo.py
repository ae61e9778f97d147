"""Model zoo: parameters and analytic training FLOPs of every full-size family; on a GPU, step time
and MFU of each family at one realistic shape (reduced depth).

    python benchmarks/zoo.py                  # table: params, FLOPs/token at each reference clip
    python benchmarks/zoo.py --measure        # + step time / MFU per family (needs CUDA; < 10 min on one H200)

FLOPs follow litegen/models/flops.py (matmuls only, training = 3 x forward); "per token" divides
by the video (patch) tokens of one clip. The reference clip of each family is the published
generation size where there is one (see REFERENCE). The layout column is the memory planner's
choice (litegen/parallel/planner.py) for 8 GPUs of 80 GiB with FSDP2 in bf16, micro-batch 1..8,
at the planner's default host link (25 GB/s) and sustained 400 TFLOP/s.
"""

import argparse
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import torch

from litegen.config import CONFIG_DIR, compose
from litegen.models import build_model, count_params, model_family
from litegen.objectives import Cond, build_objective
from litegen.tools.convert import load_model_config


@dataclass(frozen=True)
class Reference:
    config: str  # configs/model/<config>.yaml
    objective: str  # configs/objective/<objective>.yaml
    clip: str  # pixel frames x height x width, for the table
    latent: tuple[int, int, int, int]  # (C, T, H, W) the network sees for that clip
    text_len: int
    depth: dict  # reduced-depth overrides for --measure


REFERENCE = [
    # Wan VAE: causal 4x time, 8x space, 16 channels; umT5 512 tokens.
    Reference("wan_1_3b", "rectified_flow", "81x480x832", (16, 21, 60, 104), 512, {"num_layers": 4}),
    Reference("wan_14b", "rectified_flow", "81x480x832", (16, 21, 60, 104), 512, {"num_layers": 2}),
    # CogVideoX VAE: causal 4x time, 8x space, 16 channels; T5 226 tokens.
    Reference("cogvideox_2b", "v_prediction", "49x480x720", (16, 13, 60, 90), 226, {"num_layers": 4}),
    Reference("cogvideox_5b", "v_prediction", "49x480x720", (16, 13, 60, 90), 226, {"num_layers": 2}),
    # Vchitect-2.0: per-frame 8x image VAE (16 channels), 40 frames at 480x720 (our choice).
    Reference("vchitect_2b", "rectified_flow", "40x480x720", (16, 40, 60, 90), 256, {"num_layers": 4}),
    # Snap Video's base model works in pixels at 16x36x64 (pixel encoder x2 -> 12 channels).
    Reference("snapvideo", "edm", "16x36x64", (12, 16, 18, 32), 128, {"num_blocks": 1}),
    # WorldDreamer: 16 frames of 16x16 VQ tokens (256x256 pixels, 16x VQ-GAN).
    Reference("worlddreamer", "masked_tokens", "16x256x256", (12, 16, 16, 16), 128, {"num_layers": 4}),
]


def table_rows() -> list[dict]:
    """Params and analytic FLOPs of every reference config (built on meta: no memory)."""
    rows = []
    for ref in REFERENCE:
        cfg = load_model_config(CONFIG_DIR / "model" / f"{ref.config}.yaml")
        with torch.device("meta"):
            params = count_params(build_model(cfg))
        flops = model_family(cfg).train_flops(cfg, ref.latent, ref.text_len)
        tokens = math.prod(n // p for n, p in zip(ref.latent[1:], cfg.patch_size))
        rows.append({"config": ref.config, "objective": ref.objective, "params": params, "clip": ref.clip,
                     "tokens": tokens, "flops_per_token": flops["total"] / tokens,
                     "flops_per_sample": flops["total"], "layout": planned_layout(cfg, ref)})
    return rows


def planned_layout(cfg, ref: Reference, world_size: int = 8, gpu_mem_gib: float = 80.0) -> str:
    """The memory planner's SP degree, micro-batch, checkpointing and offload for the reference clip."""
    from litegen.config import ConfigError
    from litegen.models.activations import Precision
    from litegen.parallel.planner import Hardware, Layout, ModelFacts, plan_clip
    from litegen.tools.memory_report import describe_plan

    facts = ModelFacts.from_config(cfg)
    try:
        plan = plan_clip(facts, ref.latent, ref.text_len, Hardware(gpu_mem_gib), Layout(world_size),
                         Precision(2), list(range(1, 9)))
    except ConfigError as e:
        return f"does not fit: {e}"
    return describe_plan(plan, facts.layers, getattr(cfg, "num_heads", None))


def print_table(rows: list[dict]) -> None:
    print("| config | objective | params | reference clip | tokens | train GFLOP/token | "
          "train TFLOP/clip | layout 8x80GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| `{r['config']}` | {r['objective']} | {r['params']:,} | {r['clip']} | {r['tokens']:,} | "
              f"{r['flops_per_token'] / 1e9:.2f} | {r['flops_per_sample'] / 1e12:.1f} | {r['layout']} |")


def step_inputs(cfg, ref: Reference, device: torch.device):
    gen = torch.Generator(device=device).manual_seed(0)
    latents = torch.rand(1, *ref.latent, generator=gen, device=device) * 2 - 1
    context = torch.randn(1, ref.text_len, cfg.text_dim, generator=gen, device=device)
    return latents, Cond(context, torch.ones(1, ref.text_len, dtype=torch.bool, device=device)), gen


def measure(ref: Reference, device: torch.device, steps: int, peak_tflops: float) -> dict:
    """Median optimizer-step time of the reduced-depth model at the reference shape (bf16 autocast)."""
    cfg = dataclasses.replace(load_model_config(CONFIG_DIR / "model" / f"{ref.config}.yaml"), **ref.depth)
    partner = ["model=worlddreamer_tiny"] if ref.objective == "masked_tokens" else []  # configs must agree
    objective_cfg = compose([f"objective={ref.objective}", *partner]).objective
    if ref.objective == "masked_tokens":  # palette tokenizer at 20 levels: 8000 codes, near the 8192
        objective_cfg = dataclasses.replace(objective_cfg, palette_patch=1, palette_levels=20)
        cfg = dataclasses.replace(cfg, vocab_size=objective_cfg.vocab_size, patch_size=[1, 1, 1])
    with torch.device(device):
        net = build_model(cfg)
    net.init_weights(0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    objective = build_objective(objective_cfg)
    latents, cond, gen = step_inputs(cfg, ref, device)
    times = []
    for i in range(steps + 2):  # two warm-up steps (allocator, kernels)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = objective.loss(net, latents, cond, gen).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    flops = model_family(cfg).train_flops(cfg, ref.latent, ref.text_len)["total"]
    tflops = flops / step_s / 1e12
    return {"config": ref.config, "depth": ref.depth, "params": count_params(net), "step_s": step_s,
            "tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="time one step per family (CUDA)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="configs to measure (default: all)")
    args = parser.parse_args()
    print_table(table_rows())
    if not args.measure:
        return
    if not torch.cuda.is_available():
        raise SystemExit("--measure needs a CUDA GPU; none is visible")
    from litegen.train.mfu import peak_tflops

    device = torch.device("cuda")
    peak, source = peak_tflops(device, None)
    print(f"\n{torch.cuda.get_device_name(device)}, peak {peak} TFLOP/s ({source}), batch 1, bf16 autocast, "
          f"median of {args.steps} steps\n")
    print("| config | reduced depth | params | step s | TFLOP/s | MFU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for ref in REFERENCE:
        if args.only and ref.config not in args.only:
            continue
        r = measure(ref, device, args.steps, peak)
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| `{r['config']}` | {r['depth']} | {r['params']:,} | {r['step_s']:.3f} | "
              f"{r['tflops']:.0f} | {mfu} |", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
