"""Longest clip that fits one GPU per memory mode, and how well offload copies hide (CUDA only).

For a Wan-1.3B-shaped model (configs/model/wan_1_3b.yaml, all 30 blocks, fp32 weights, bf16
autocast, one forward+backward per trial, no optimizer state: the activations decide), each mode
finds the most latent frames of a fixed latent frame size (default 30x52, i.e. 240x416 pixels
through Wan's VAE, 390 tokens per frame) that still run: doubling from --start-frames, then
bisecting to --resolution frames. Modes: none / full AC / full AC + offload / selective
(save_attention) + offload. Target: full AC + offload reaches >= 1.5x the tokens of full AC alone.

Overlap efficiency at one clip (--overlap-frames): t_base = step time with full AC, t_offload = the
same with every block offloaded, t_copy = the offloaded bytes copied device -> pinned host -> device
on a side stream with nothing else running; all timed with CUDA events, median of --reps.
efficiency = 1 - (t_offload - t_base) / t_copy. Target >= 90%. The planner's predicted peak
(litegen/parallel/planner.py) is printed next to torch.cuda.max_memory_allocated for each mode.

GPU memory is capped at --mem-gib (default 40, via torch.cuda.set_per_process_memory_fraction) so
the longest clips stay short enough to bisect in minutes; the ratios between modes are the result.
--predict-only prints the planner's predicted longest clip per mode for --mem-gib instead (no GPU).

    python benchmarks/gpu_memory.py [--mem-gib 40] [--overlap-frames 24] [--reps 3]
    python benchmarks/gpu_memory.py --predict-only [--mem-gib 80]

Written for one lent H200 (< 10 minutes); not run where no GPU was lent (see RESULTS.md).
"""

import argparse
import statistics
import time

import torch

from litegen.config import CONFIG_DIR
from litegen.models import build_model, model_plan
from litegen.models.activations import Precision, activation_model
from litegen.parallel.memory import MemorySchedule, MemorySettings, apply_memory
from litegen.parallel.planner import ClipCost, Hardware, ModelFacts, evaluate
from litegen.tools.convert import load_model_config

GIB = 2**30
TEXT_LEN = 512
MODES = {
    "none": MemorySettings(),
    "full AC": MemorySettings("full"),
    "full AC + offload": MemorySettings("full", offload_ratio=1.0),
    "selective + offload": MemorySettings("selective", 1.0, "save_attention", offload_ratio=1.0),
}


class Bench:
    def __init__(self, frame_hw: tuple[int, int], device: torch.device):
        self.cfg = load_model_config(CONFIG_DIR / "model" / "wan_1_3b.yaml")
        self.frame_hw, self.device = frame_hw, device
        with torch.device(device):
            self.net = build_model(self.cfg)
        self.net.init_weights(0)

    def apply(self, settings: MemorySettings):
        """Reset the blocks to plain, then apply `settings` (returns the offloader, if any)."""
        blocks = model_plan(self.cfg).block_list(self.net)
        for block in blocks:
            block.__dict__.pop("forward", None)
        return apply_memory(self.net, model_plan(self.cfg), MemorySchedule.single(settings), self.device)

    def latent(self, frames: int) -> tuple[int, int, int, int]:
        return (self.cfg.in_channels, frames, *self.frame_hw)

    def step(self, frames: int) -> None:
        gen = torch.Generator(device=self.device).manual_seed(0)
        x = torch.randn(1, *self.latent(frames), generator=gen, device=self.device)
        t = torch.rand(1, generator=gen, device=self.device)
        ctx = torch.randn(1, TEXT_LEN, self.cfg.text_dim, generator=gen, device=self.device)
        mask = torch.ones(1, TEXT_LEN, dtype=torch.bool, device=self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = self.net(x, t, ctx, mask).float().square().mean()
        loss.backward()
        self.net.zero_grad(set_to_none=True)

    def fits(self, frames: int) -> tuple[bool, float]:
        """(ran without OOM, peak GiB)."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            self.step(frames)
            torch.cuda.synchronize(self.device)
            return True, torch.cuda.max_memory_allocated(self.device) / GIB
        except torch.cuda.OutOfMemoryError:
            self.net.zero_grad(set_to_none=True)
            return False, float("nan")

    def timed_step(self, frames: int, reps: int) -> float:
        times = []
        for _ in range(reps + 1):  # one warm-up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.step(frames)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times[1:])


def longest(bench: Bench, start: int, cap: int, resolution: int) -> tuple[int, float]:
    """Most frames that fit: double until a failure (or cap), then bisect to `resolution`."""
    good, peak, bad = 0, float("nan"), None
    frames = start
    while frames <= cap:
        ok, p = bench.fits(frames)
        if not ok:
            bad = frames
            break
        good, peak, frames = frames, p, frames * 2
    bad = bad or cap + 1
    while bad - good > resolution:
        mid = (good + bad) // 2
        ok, p = bench.fits(mid)
        if ok:
            good, peak = mid, p
        else:
            bad = mid
    return good, peak


def predicted_gib(bench: Bench, settings: MemorySettings, frames: int) -> float:
    """The planner's activation + working-set estimate for one rank, plus this run's states
    (fp32 weights and gradients: no optimizer here)."""
    facts = ModelFacts.from_config(bench.cfg)
    precision = Precision(2, weight_copies=True)
    cost = ClipCost.of(facts, activation_model(bench.cfg, precision), bench.latent(frames), TEXT_LEN, 1, 1)
    hw = Hardware(1e6, host_link_gb_s=1e6)  # no limit: just the breakdown
    memory = evaluate(cost, settings, facts.layers, 0.0, hw)[0]
    states = 8 * facts.params + 2 * facts.params  # fp32 weights + grads, bf16 autocast weight copies
    return (memory.total + states) / GIB


def predicted_longest(bench, settings: MemorySettings, mem_gib: float, cap: int) -> int:
    """Most latent frames whose planner estimate fits mem_gib (fits are monotone in frames)."""
    good, bad = 0, cap + 1
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if predicted_gib(bench, settings, mid) <= mem_gib else (good, mid)
    return good


class PlanOnly:
    """The model config and clip shapes of Bench, without a GPU or weights (for --predict-only)."""

    def __init__(self, frame_hw: tuple[int, int]):
        self.cfg = load_model_config(CONFIG_DIR / "model" / "wan_1_3b.yaml")
        self.frame_hw = frame_hw

    def latent(self, frames: int) -> tuple[int, int, int, int]:
        return (self.cfg.in_channels, frames, *self.frame_hw)


def print_predicted(frame_hw: tuple[int, int], mem_gib: float, cap: int) -> None:
    bench = PlanOnly(frame_hw)
    per_frame = frame_hw[0] * frame_hw[1] // 4
    print(f"planner prediction, wan_1_3b on {mem_gib:g} GiB (weights+grads fp32, bf16 autocast, no optimizer), "
          f"{per_frame} tokens per latent frame\n")
    print("| mode | longest clip (latent frames) | tokens | vs full AC |")
    print("| --- | --- | --- | --- |")
    found = {name: predicted_longest(bench, s, mem_gib, cap) for name, s in MODES.items()}
    for name, frames in found.items():
        print(f"| {name} | {frames} | {frames * per_frame:,} | {frames / max(found['full AC'], 1):.2f}x |")


def copy_seconds(nbytes: int, device: torch.device, reps: int) -> float:
    """Device -> pinned host -> device of nbytes on a side stream, nothing else running."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    stream = torch.cuda.Stream(device)
    times = []
    for _ in range(reps + 1):
        with torch.cuda.stream(stream):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            host.copy_(src, non_blocking=True)
            src.copy_(host, non_blocking=True)
            end.record(stream)
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame-hw", default="30x52", help="latent frame HxW (Wan VAE: pixels / 8)")
    parser.add_argument("--start-frames", type=int, default=8)
    parser.add_argument("--frames-per-clip-max", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=4, help="bisection stops at this many frames")
    parser.add_argument("--overlap-frames", type=int, default=24)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mem-gib", type=float, default=40.0, help="GPU memory the run may use")
    parser.add_argument("--predict-only", action="store_true", help="planner prediction only (no GPU)")
    args = parser.parse_args()
    frame_hw = tuple(int(n) for n in args.frame_hw.split("x"))
    if args.predict_only:
        return print_predicted(frame_hw, args.mem_gib, args.frames_per_clip_max)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_memory.py needs a CUDA GPU; none is visible")
    begin = time.perf_counter()
    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory / GIB
    torch.cuda.set_per_process_memory_fraction(min(args.mem_gib / total, 1.0), device)
    bench = Bench(frame_hw, device)
    per_frame = bench.frame_hw[0] * bench.frame_hw[1] // 4
    print(f"{torch.cuda.get_device_name(device)} ({total:.0f} GiB, capped at {args.mem_gib:g}), wan_1_3b, bf16 autocast, batch 1, "
          f"{per_frame} tokens per latent frame, text {TEXT_LEN}\n")
    print("| mode | longest clip (latent frames) | tokens | vs full AC | peak GiB measured | planner GiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    found = {}
    for name, settings in MODES.items():
        bench.apply(settings)
        frames, peak = longest(bench, args.start_frames, args.frames_per_clip_max, args.resolution)
        found[name] = frames
        ratio = f"{frames / found['full AC']:.2f}x" if "full AC" in found and found["full AC"] else "-"
        planned = predicted_gib(bench, settings, frames) if frames else float("nan")
        print(f"| {name} | {frames} | {frames * per_frame:,} | {ratio} | {peak:.1f} | {planned:.1f} |", flush=True)
    bench.apply(MODES["full AC"])
    t_base = bench.timed_step(args.overlap_frames, args.reps)
    offloader = bench.apply(MODES["full AC + offload"])
    t_offload = bench.timed_step(args.overlap_frames, args.reps)
    moved = offloader.bytes_to_host // (args.reps + 1)  # bytes per step
    t_copy = copy_seconds(moved, device, args.reps)
    efficiency = 1 - (t_offload - t_base) / t_copy
    print(f"\noverlap at {args.overlap_frames} frames ({args.overlap_frames * per_frame:,} tokens): "
          f"t_base {t_base * 1e3:.1f} ms, t_offload {t_offload * 1e3:.1f} ms, t_copy {t_copy * 1e3:.1f} ms "
          f"({moved / GIB:.2f} GiB each way), efficiency {efficiency:.1%} (target >= 90%), "
          f"step overhead {t_offload / t_base - 1:.1%} (target <= 3%)")
    print(f"longest with full AC + offload / full AC: {found['full AC + offload'] / max(found['full AC'], 1):.2f}x "
          f"(target >= 1.5x); wall {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
