"""Framework overhead: LiteGen's train_step vs a minimal hand-written loop, same model/batch/optimizer.

Both loops train their own copy of the tiny DiT (same seed, so same weights) on one fixed batch.
Timings are interleaved (framework, minimal, minimal, framework, ...) so drift in machine load
hits both; each repetition times `--steps` steps, and the reported figure is the median over
`--reps` repetitions. Target: ratio <= 1.05.

    python benchmarks/overhead.py [--steps 5] [--reps 7] [overrides ...]
"""

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from litegen.config import compose
from litegen.data.generate import generate_synthetic_dataset
from litegen.encoders import build_video_encoder
from litegen.parallel.distributed import DistInfo
from litegen.train.conditioning import encode_captions
from litegen.train.setup import build_network, build_optimizer, build_run
from litegen.train.trainer import train_step


def minimal_step(net, optimizer, latents, cond, gen, clip_norm: float, ema: list, decay: float):
    """What a researcher would write by hand for the same work: rectified flow, AdamW, gradient
    clipping and an EMA of the weights (the tiny experiment trains with both)."""
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.rand(latents.shape[0], generator=gen)
    tb = t.view(-1, 1, 1, 1, 1)
    pred = net((1 - tb) * latents + tb * noise, t, cond.context, cond.context_mask)
    loss = F.mse_loss(pred, noise - latents)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema, list(net.parameters()), 1.0 - decay)


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="litegen-overhead-"))
    cfg = compose(["experiment=tiny", f"data.shards={work}/data/shard-*.tar",
                   "logging.wandb_mode=disabled", *args.overrides])
    dist_info = DistInfo(0, 1, 0, torch.device("cpu"))
    synthetic = dataclasses.replace(cfg.data.synthetic, num_clips=64, clips_per_shard=32)
    generate_synthetic_dataset(synthetic, work / "data", build_video_encoder(cfg.encoders.video))
    run = build_run(cfg, work / "run", dist_info)
    batch = next(iter(run.loader))
    batches = itertools.repeat(batch)
    net = build_network(cfg, dist_info.device)
    optimizer = build_optimizer(net, cfg)
    cond = encode_captions(run.text_encoder, batch["captions"], dist_info.device)
    gen = torch.Generator().manual_seed(0)

    def framework():
        train_step(run, batches)

    ema = [p.detach().clone() for p in net.parameters()]
    clip_norm = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm > 0 else float("inf")

    def minimal():
        minimal_step(net, optimizer, batch["latents"].float(), cond, gen, clip_norm, ema, cfg.train.ema_decay)

    timed(framework, 2), timed(minimal, 2)  # warm-up: allocator, thread pools
    ours, theirs = [], []
    for rep in range(args.reps):
        order = (framework, minimal) if rep % 2 == 0 else (minimal, framework)
        for fn in order:
            (ours if fn is framework else theirs).append(timed(fn, args.steps))
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    print(f"batch {tuple(batch['latents'].shape)}, {args.reps} reps x {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"litegen train_step  median {ours_s * 1e3:.1f} ms/step")
    print(f"minimal loop        median {theirs_s * 1e3:.1f} ms/step")
    print(f"ratio {ours_s / theirs_s:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
