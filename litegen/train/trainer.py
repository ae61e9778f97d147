"""The training loop: train() -> train_step() -> forward_backward(). Setup lives in setup.py."""

import contextlib
import math
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

from litegen.parallel.distributed import barrier
from litegen.train import console
from litegen.train.batches import batch_work, model_inputs
from litegen.train.conditioning import batch_cond
from litegen.train.rng import micro_batch_generator
from litegen.train.setup import Run
from litegen.train.sampling import generate_sample


def forward_backward(run: Run, batch: dict, generator: torch.Generator, scale: float,
                     stratum: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """One micro-batch: conditioning, objective loss, backward. Returns the detached loss.

    stratum: the micro-batch's (global index, count) in the step (see Objective.loss)."""
    device = run.dist.device
    batch, latents = model_inputs(run, batch)  # packed clips, raw clips encoded
    cond = batch_cond(batch, run.text_encoder, run.cfg.train.caption_dropout, generator,
                      run.null_cond, device)
    dtype = run.autocast_dtype()
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = run.objective.loss(run.model, latents, cond, generator, stratum=stratum)
    run.steps.backward(out.loss * scale)
    run.meter.add_micro(out.loss.detach(), *batch_work(run.cfg.model, latents, cond.context.shape[1]))
    return out.loss.detach()


def train_step(run: Run, batches: Iterator[dict]) -> torch.Tensor:
    """One optimizer step over grad_accum_steps micro-batches; returns the pre-clip grad norm."""
    accum = run.cfg.train.grad_accum_steps
    run.steps.zero_grad()
    for micro in range(accum):
        gen = micro_batch_generator(run.cfg.train.seed, run.step, run.dp_rank, micro, accum,
                                    run.dist.device)
        stratum = (run.dp_rank * accum + micro, run.dims.dp * accum)
        # Gradients are reduced across ranks on the last micro-batch only (where the backend can).
        with run.steps.accumulate(last=micro == accum - 1):
            forward_backward(run, next(batches), gen, run.loss_scale, stratum)
    grad_norm = run.steps.step(run.cfg.optim.grad_clip_norm)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.net)
    run.step += 1
    run.meter.end_step()
    return grad_norm


def log_step(run: Run, grad_norm: torch.Tensor, started: tuple[float, int]) -> None:
    record = run.meter.summary(run.step, run.scheduler.get_last_lr()[0], float(grad_norm))
    if not (math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])):
        raise FloatingPointError(f"non-finite loss/grad-norm at step {run.step}: loss "
                                 f"{record['loss']}, grad_norm {record['grad_norm']}")
    run.metrics.write(record)
    if run.dist.is_main:
        start_time, start_step = started
        rate = (time.perf_counter() - start_time) / max(run.step - start_step, 1)
        console.say(console.progress_line(record, run.cfg.train.steps, rate * (run.cfg.train.steps - run.step)))


def announce_stage(run: Run, previous):
    """One line when a progressive-schedule stage starts (or a run resumes inside one)."""
    schedule = run.loader.plan.schedule
    stage = schedule.stage_at(run.step)
    if stage != previous and len(schedule.stages) > 1 and run.dist.is_main:
        size = f"packs of <= {stage.token_budget} tokens" if stage.packed else f"batches of {stage.batch_size}"
        console.say(f"stage {stage.name!r} from step {run.step}: buckets {list(stage.shapes) or 'all'}, "
                    f"{size}, lr x {stage.lr_scale}")
    return stage


def save_checkpoint(run: Run) -> Path:
    return run.checkpointer.save(run.step, run.checkpoint_state())


def train(run: Run) -> None:
    cfg = run.cfg.train
    batches = iter(run.loader)
    started = (time.perf_counter(), run.step)
    stage = None
    while run.step < cfg.steps:
        stage = announce_stage(run, stage)
        grad_norm = train_step(run, batches)
        if run.step % cfg.log_every_steps == 0 or run.step == cfg.steps:
            log_step(run, grad_norm, started)
        if run.step % cfg.ckpt_every_steps == 0 or run.step == cfg.steps:
            save_checkpoint(run)


def sample_at_end(run: Run) -> Optional[Path]:
    """Render the sample clip from the EMA weights; rank 0 writes it.

    Every rank runs the sampler: sharded weights and sequence parallelism make each forward a
    collective (and all ranks draw the same noise, so they compute the same clip).
    """
    path = None
    if run.cfg.train.sample.enabled:
        ema = run.ema.applied_to(run.net) if run.ema is not None else contextlib.nullcontext()
        with ema:
            path = generate_sample(run.net, run.objective, run.video_encoder, run.text_encoder,
                                   run.cfg.train.sample, run.dist.device,
                                   run.run_dir / "samples", run.step, write=run.dist.is_main)
        if run.dist.is_main:
            run.metrics.log_video(path, " | ".join(run.cfg.train.sample.prompts), run.step)
    barrier()
    return path
