"""The one-screen summaries of a run: at the start (layout, model size, tokens per step, memory
plan) and at the end (where every output is, or why it stopped early)."""

import json
import tarfile
from pathlib import Path
from typing import Any, Optional

from litegen.data.buckets import TokenGeometry
from litegen.data.loader import expand_shards
from litegen.data.schedule import build_schedule
from litegen.models import count_params
from litegen.train.preemption import REQUEUE_EXIT_CODE
from litegen.train.setup import Run, describe


def first_latent_shape(shards: str) -> Optional[tuple[int, ...]]:
    """The latent shape of the first sample of the first shard (reads one small json member)."""
    try:
        paths = expand_shards(shards, must_exist=False)
        with tarfile.open(paths[0]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    return tuple(json.load(tar.extractfile(member))["latent_shape"])
    except (IndexError, OSError, KeyError, ValueError, tarfile.TarError):
        return None
    return None


def tokens_per_step(run: Run) -> str:
    """Tokens of one optimizer step in the first stage: its token budget when packed, else its
    buckets' (or, with no buckets, the first sample's) tokens per clip times the clips per step."""
    cfg = run.cfg
    stage = build_schedule(cfg.data).stages[0]
    micro_batches = cfg.train.grad_accum_steps * run.dims.dp
    if stage.packed:
        return (f"<= {stage.token_budget * micro_batches:,} (packs of <= {stage.token_budget:,} tokens "
                f"x {micro_batches} micro-batches)")
    clips = stage.batch_size * micro_batches
    geometry = TokenGeometry.of(run.video_encoder, cfg.model.patch_size)
    if stage.shapes:
        per_clip = sorted({geometry.tokens(shape) for shape in stage.shapes})
        where = "per bucket"
    else:
        shape = first_latent_shape(cfg.data.shards)
        if shape is None:
            return f"{clips} clips x (tokens per clip: unknown until the first batch)"
        per_clip, where = [geometry.latent_tokens(shape[1:])], "at the first sample's latent"
    low, high = clips * per_clip[0], clips * per_clip[-1]
    total = f"{low:,}" if low == high else f"{low:,} to {high:,}"
    return f"{total} ({clips} clips x {'/'.join(f'{n:,}' for n in per_clip)} tokens {where})"


def memory_plan(run: Run) -> str:
    """Parameter, gradient and optimizer bytes per rank (the dry-run planner's estimate)."""
    from litegen.tools.plan import memory_report

    return "\n".join(memory_report(run.cfg, run.dims, run.net, count_params(run.net)))


def start_rows(run: Run, resumed: Optional[Path]) -> dict[str, Any]:
    rows = describe(run)
    rows["mesh"] = run.dims.describe()
    rows["tokens/step"] = tokens_per_step(run)
    rows["memory plan"] = memory_plan(run)
    rows["start"] = f"resumed from {resumed} at step {run.step}" if resumed else "fresh, step 0"
    wandb_row = _wandb_row(run)
    if wandb_row:
        rows["wandb"] = wandb_row
    if run.preemption is not None:
        names = ", ".join(s.name for s in run.preemption.signals)
        rows["pre-emption"] = f"{names}: checkpoint at the next step, exit {REQUEUE_EXIT_CODE} (requeue)"
    return rows


def _wandb_row(run: Run) -> Optional[str]:
    metrics = run.metrics
    if metrics is None or metrics.wandb_path is None:
        return None
    path = metrics.wandb_path
    if path.name.startswith("offline-run-"):
        return f"{path}\n(offline; upload with: wandb sync {path})"
    return f"{metrics.wandb_url or ''}\n{path}".strip()


def end_rows(run: Run, sample: Optional[Path]) -> dict[str, Any]:
    latest = run.checkpointer.latest()
    rows = {
        "steps": run.step,
        "checkpoint": str(latest[1]) if latest else "none",
        "metrics": str(run.run_dir / "metrics.jsonl"),
        "sample clip": str(sample) if sample else "disabled (train.sample.enabled=false)",
        "config": str(run.run_dir / "config.yaml"),
    }
    wandb_row = _wandb_row(run)
    if wandb_row:
        rows["wandb"] = wandb_row
    return rows


def preempted_rows(run: Run) -> dict[str, Any]:
    latest = run.checkpointer.latest()
    return {
        "stopped": f"at step {run.step} of {run.cfg.train.steps}: {run.preemption.describe()}",
        "checkpoint": str(latest[1]) if latest else "none",
        "exit code": f"{REQUEUE_EXIT_CODE}: requeue; the same command resumes from the checkpoint",
        "metrics": str(run.run_dir / "metrics.jsonl"),
    }
