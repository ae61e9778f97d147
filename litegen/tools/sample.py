"""`python -m litegen.tools.sample CHECKPOINT --prompt ...`: clips from a trained checkpoint.

    python -m litegen.tools.sample runs/tiny --ema --prompt "a red circle moving left on a blue background"
    python -m litegen.tools.sample runs/x/checkpoints/step-0001000 --prompts-file prompts.txt \\
        --steps 50 --guidance 5 --seed 1 --format mp4 --out clips/

CHECKPOINT is a checkpoint directory (step-N) or a run directory (its newest complete checkpoint).
The model, objective, encoders and default clip size come from the run's config.yaml (--config
to point elsewhere). One file per prompt, prompt i drawn with seed + i, named
NN-<prompt words>.<gif|mp4>, with the prompt in a .txt beside it; default folder
<run>/samples/step-N[-ema]/. Runs on one device: the CPU for tiny models, a GPU (bf16 autocast)
for large ones; a checkpoint saved by any number of ranks loads here (DCP re-shards on load).
"""

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from litegen.config import ConfigError, LiteGenConfig
from litegen.config.load import load_run_config
from litegen.config.validate import cross_problems
from litegen.encoders import build_text_encoder, build_video_encoder
from litegen.models import build_model
from litegen.objectives import build_objective
from litegen.train.checkpoint import complete_steps
from litegen.train.sampling import generate_sample
from litegen.train.setup import autocast_dtype


def resolve_checkpoint(path: Path) -> Path:
    """A step-N directory as given, or the newest complete one of a run directory."""
    if (path / ".metadata").is_file():
        return path
    for root in (path / "checkpoints", path):
        steps = complete_steps(root)
        if steps:
            return steps[-1][1]
    raise FileNotFoundError(f"{path}: neither a checkpoint (step-N with .metadata) nor a run "
                            "directory with a complete checkpoint")


def run_dir_of(checkpoint: Path) -> Path:
    """<run>/checkpoints/step-N -> <run>."""
    return checkpoint.parent.parent


def stored_keys(checkpoint: Path) -> set[str]:
    return set(dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata)


def load_weights(net: nn.Module, checkpoint: Path, ema: bool) -> None:
    """The model (or EMA) weights of a training checkpoint into `net`, without the optimizer."""
    keys = stored_keys(checkpoint)
    if ema:
        if any(k.startswith("ema.rank") for k in keys):
            raise ValueError(f"{checkpoint}: the EMA was saved per rank (DeepSpeed ZeRO-3 partitions) "
                             "and cannot be loaded whole here; sample without --ema")
        if not any(k.startswith("ema.") for k in keys):
            raise ValueError(f"{checkpoint} holds no EMA weights (train.ema_decay was 0); drop --ema")
        params = {n: p for n, p in net.named_parameters() if p.requires_grad}
        dcp.load({"ema": params}, checkpoint_id=str(checkpoint))
    elif (checkpoint / "train").is_dir():
        _load_deepspeed(net, checkpoint / "train")
    else:
        dcp.load({"train": {"model": net.state_dict()}}, checkpoint_id=str(checkpoint))


@torch.no_grad()
def _load_deepspeed(net: nn.Module, folder: Path) -> None:
    """Model weights of a `parallel=deepspeed` checkpoint (DeepSpeed's own format, any ZeRO stage)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from litegen.parallel.deepspeed import CHECKPOINT_TAG

    state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=CHECKPOINT_TAG)
    net.load_state_dict(state, strict=False)  # buffers (not saved by DeepSpeed) keep their init


def build_network(cfg: LiteGenConfig, device: torch.device) -> nn.Module:
    with torch.device("meta"):
        net = build_model(cfg.model)
    net.to_empty(device=device)
    net.init_weights(cfg.train.seed)  # buffers; every parameter is then loaded
    return net.eval()


def file_stem(index: int, prompt: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "empty"
    return f"{index:02d}-{words}"


def sample_prompts(cfg: LiteGenConfig, net: nn.Module, device: torch.device, prompts: list[str],
                   out_dir: Path, dtype: Optional[torch.dtype]) -> list[Path]:
    objective = build_objective(cfg.objective)
    video_encoder = build_video_encoder(cfg.encoders.video, device=device)
    text_encoder = build_text_encoder(cfg.encoders.text, device=device)
    written = []
    for i, prompt in enumerate(prompts):
        one = replace(cfg.train.sample, prompts=[prompt], seed=cfg.train.sample.seed + i)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            path = generate_sample(net, objective, video_encoder, text_encoder, one, device,
                                   out_dir, step=0, name=file_stem(i, prompt))
        print(f"wrote {path}", flush=True)
        written.append(path)
    return written


def read_prompts(args: argparse.Namespace, cfg: LiteGenConfig) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    return prompts or list(cfg.train.sample.prompts)


def sample_config(args: argparse.Namespace, cfg: LiteGenConfig) -> LiteGenConfig:
    """The run's config with the command line's sampler settings."""
    s = cfg.train.sample
    cfg.train.sample = replace(
        s, steps=args.steps or s.steps, seed=s.seed if args.seed is None else args.seed,
        guidance_scale=s.guidance_scale if args.guidance is None else args.guidance,
        frames=args.frames or s.frames, height=args.height or s.height, width=args.width or s.width,
        fps=args.fps or s.fps, format=args.format or s.format)
    problems = [(f"train.sample.{name}", msg) for name, msg in cfg.train.sample.problems()]
    problems += [(name, msg) for name, msg in cross_problems(cfg) if name.startswith("train.sample")]
    if problems:
        raise ConfigError(problems)
    return cfg


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m litegen.tools.sample", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="step-N checkpoint directory, or a run directory")
    p.add_argument("--ema", action="store_true", help="sample from the EMA weights")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: the run's train.sample.prompts")
    p.add_argument("--prompts-file", type=Path, help="one prompt per line")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's train.sample.steps)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, help="seed of the first prompt; prompt i uses seed + i")
    p.add_argument("--frames", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--format", choices=["gif", "mp4"])
    p.add_argument("--out", type=Path, help="output folder (default: <run>/samples/step-N[-ema]/)")
    p.add_argument("--config", type=Path, help="the run's config.yaml (default: beside checkpoints/)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="autocast: auto = bf16 on CUDA, fp32 on CPU")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        cfg = sample_config(args, load_run_config(args.config or run_dir_of(checkpoint) / "config.yaml"))
        device = torch.device(args.device)
        net = build_network(cfg, device)
        load_weights(net, checkpoint, args.ema)
        out = args.out or run_dir_of(checkpoint) / "samples" / (checkpoint.name + ("-ema" if args.ema else ""))
        print(f"sampling {cfg.model.name} ({cfg.model.family}) from {checkpoint}"
              f"{' (EMA)' if args.ema else ''}: {cfg.train.sample.steps} steps, guidance "
              f"{cfg.train.sample.guidance_scale}, seed {cfg.train.sample.seed}", flush=True)
        sample_prompts(cfg, net, device, read_prompts(args, cfg), out,
                       autocast_dtype(args.dtype, device))
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
