"""GPU step time and MFU of a Wan-1.3B-shaped stack at 16k and 32k tokens per GPU (one GPU).

The real WanDiT (model=wan_1_3b: 30 blocks, dim 1536, 12 heads, ffn 8960), built the way the
trainer builds it (meta -> device -> seed init, fp32 master weights, bf16 autocast), trained
with AdamW on one clip of random latents and a 512-token text context (umT5 length). Attention
goes through litegen.models.attention: flash-attn when installed, else PyTorch SDPA (flash/cuDNN
kernels on H100/H200). MFU = analytic model FLOPs (litegen/models/flops.py, no recompute
counted) / step time / the GPU's dense bf16 peak (litegen/train/mfu.py). Target: >= 45% at 32k.

If a length does not fit without activation checkpointing it is rerun with every block
checkpointed, and the line says so (MFU then still counts model FLOPs only). Runs in about
2-4 minutes on an H200:

    python benchmarks/gpu_parallel.py [--tokens 16384 32768] [--steps 10] [--warmup 3]
"""

import argparse
import functools
import time

import torch
from torch.utils.checkpoint import checkpoint

from litegen.config import compose
from litegen.models import train_flops_per_sample
from litegen.models.attention import attention_backend
from litegen.train.mfu import peak_tflops
from litegen.train.setup import build_network

# (T, H, W) latent grids with 1x2x2 patches: 16 x 32 x 32 = 16,384 and 32 x 32 x 32 = 32,768 tokens.
LATENT_THW = {16384: (16, 64, 64), 32768: (32, 64, 64)}
TEXT_LEN = 512


def wan_1_3b():
    # Encoders are not used; the VAE/T5 settings only satisfy the config's cross-checks.
    return compose(["model=wan_1_3b", "encoders/video=diffusers_vae", "encoders.video.path=unused",
                    "encoders/text=t5", "encoders.text.path=unused", "logging.wandb_mode=disabled"])


def checkpoint_blocks(net) -> None:
    for block in net.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def measure(cfg, tokens: int, steps: int, warmup: int, ac: bool) -> dict:
    device = torch.device("cuda")
    net = build_network(cfg, device)
    if ac:
        checkpoint_blocks(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    latent = (1, cfg.model.in_channels, *LATENT_THW[tokens])
    x, noise = torch.randn(latent, device=device), torch.randn(latent, device=device)
    t = torch.rand(1, device=device)
    context = torch.randn(1, TEXT_LEN, cfg.model.text_dim, device=device)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.bool, device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = net(x, t, context, mask)
        loss = torch.nn.functional.mse_loss(pred.float(), noise - x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    flops = train_flops_per_sample(cfg.model, latent[1:], TEXT_LEN)
    peak, source = peak_tflops(device, None)
    q = torch.empty(1, tokens, cfg.model.num_heads, cfg.model.dim // cfg.model.num_heads,
                    device=device, dtype=torch.bfloat16)
    return {"tokens": tokens, "step_s": step_s, "tflops": flops / step_s / 1e12,
            "mfu": flops / step_s / 1e12 / peak if peak else None, "peak": source,
            "mem_gib": torch.cuda.max_memory_allocated() / 2**30, "ac": ac,
            "attention": attention_backend(q, q, q)}


def measure_fitting(cfg, tokens: int, steps: int, warmup: int) -> dict:
    try:
        return measure(cfg, tokens, steps, warmup, ac=False)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return measure(cfg, tokens, steps, warmup, ac=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768], choices=sorted(LATENT_THW))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_parallel.py needs a CUDA GPU (CPU figures: benchmarks/parallel.py)")
    cfg = wan_1_3b()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Wan-1.3B shape "
          f"({cfg.model.num_layers} blocks, dim {cfg.model.dim}), batch 1, text {TEXT_LEN}")
    for tokens in args.tokens:
        r = measure_fitting(cfg, tokens, args.steps, args.warmup)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{tokens:>6} tokens/GPU: {r['step_s']:.3f} s/step, {r['tflops']:.0f} TFLOP/s, MFU {mfu} "
              f"({r['peak']}), peak mem {r['mem_gib']:.1f} GiB, attention {r['attention']}"
              + (", activation checkpointing (did not fit without)" if r["ac"] else "")
              + (" (target >= 45%)" if tokens == 32768 else ""))


if __name__ == "__main__":
    main()
