"""Step-time overhead of checkpointing: async (staged, written in the background) vs sync saves.

One process trains an MLP (`--width`, `--depth`: ~55 MiB of weights + Adam state by default)
with AdamW for `--steps` steps and saves every `--every` steps through litegen's Checkpointer, in
three modes: none, sync, async. Reported: mean wall time per step including the save calls,
and the overhead of each mode over `none` (median over `--reps` interleaved repetitions, so
machine-load drift hits every mode). The async figure includes the wait for the last write at the
end. Runs on CUDA when available (staging then copies device -> host), else CPU.

    python benchmarks/checkpoint_overhead.py [--steps 20] [--every 5] [--reps 3] [--width 768] [--depth 8]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from litegen.parallel.distributed import DistInfo
from litegen.train.checkpoint import Checkpointer, ModelOptimState


def build(width: int, depth: int, device: torch.device):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def run(mode: str, args, device: torch.device, root: Path) -> float:
    """Seconds per step (saves included) for one mode."""
    model, opt = build(args.width, args.depth, device)
    batch = torch.randn(args.batch, args.width, device=device)
    info = DistInfo(0, 1, 0, device)
    ckpt = Checkpointer(root / mode, keep_last_k=1, dist_info=info, async_save=mode == "async")
    state = {"train": ModelOptimState(model, opt)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = model(batch).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ckpt.poll()
        if mode != "none" and step % args.every == 0:
            ckpt.save(step, state)
    ckpt.wait()
    sync()
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = {"none": [], "sync": [], "async": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for mode in (["none", "sync", "async"] if rep % 2 == 0 else ["async", "sync", "none"]):
                times[mode].append(run(mode, args, device, Path(tmp) / f"rep{rep}"))
    params = sum(p.numel() for p in build(args.width, args.depth, torch.device("meta"))[0].parameters())
    base = statistics.median(times["none"])
    print(f"device {device.type}; {params / 1e6:.1f}M params ({params * 12 / 2**20:.0f} MiB with Adam state); "
          f"{args.steps} steps, a save every {args.every}; median of {args.reps}")
    for mode, values in times.items():
        med = statistics.median(values)
        print(f"  {mode:5s}  {med * 1000:8.1f} ms/step  overhead vs none {100 * (med / base - 1):+6.1f}%")
    sync_over, async_over = statistics.median(times["sync"]) - base, statistics.median(times["async"]) - base
    print(f"async overhead / sync overhead = {async_over / sync_over:.2f}" if sync_over > 0 else
          "sync saves cost nothing measurable here")


if __name__ == "__main__":
    main()
