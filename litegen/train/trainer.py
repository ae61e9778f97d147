"""The training loop: train() -> train_step() -> forward_backward(). Setup lives in setup.py."""

import contextlib
import math
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

from litegen.parallel.distributed import barrier
from litegen.train import console, faults
from litegen.train.batches import batch_work, model_inputs
from litegen.train.conditioning import batch_cond
from litegen.train.console import Progress
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
    loss = faults.corrupt_loss(out.loss, run.dist.rank, run.step + 1)
    run.steps.backward(loss * scale)
    run.meter.add_micro(loss.detach(), *batch_work(run.cfg.model, latents, cond.context.shape[1]))
    return loss.detach()


def train_step(run: Run, batches: Iterator[dict]) -> torch.Tensor:
    """One optimizer step over grad_accum_steps micro-batches; returns the pre-clip grad norm.

    A step with a non-finite loss or gradient on any rank is never applied (run.nonfinite)."""
    accum = run.cfg.train.grad_accum_steps
    run.steps.zero_grad()
    mark, loss_sum = run.meter.mark(), 0.0
    for micro in range(accum):
        gen = micro_batch_generator(run.cfg.train.seed, run.step, run.dp_rank, micro, accum,
                                    run.dist.device)
        stratum = (run.dp_rank * accum + micro, run.dims.dp * accum)
        batch = next_batch(run, batches)
        # Gradients are reduced across ranks on the last micro-batch only (where the backend can).
        with run.steps.accumulate(last=micro == accum - 1):
            loss_sum = loss_sum + forward_backward(run, batch, gen, run.loss_scale, stratum)
    grad_norm = update(run, loss_sum, mark)
    # A skipped step still advances: the data stream and the schedule are keyed by the step.
    run.scheduler.step()
    run.step += 1
    run.meter.end_step()
    return grad_norm


def next_batch(run: Run, batches: Iterator[dict]) -> dict:
    """The next micro-batch, inside the watchdog's `data` phase."""
    run.phase("data")
    faults.stall(run.dist.rank, run.step + 1)
    faults.kill(run.dist.rank, run.step + 1)
    batch = next(batches)
    run.phase("forward_backward")
    return batch


def update(run: Run, loss_sum: torch.Tensor, mark: tuple) -> torch.Tensor:
    """Clip, then apply the optimizer step and EMA unless some rank saw a non-finite loss or
    gradient (run.nonfinite decides on every rank alike). Returns the pre-clip norm (NaN: skipped)."""
    run.phase("optimizer")
    grad_norm = run.steps.clip(run.cfg.optim.grad_clip_norm)
    if run.nonfinite is not None and not run.nonfinite.allows_update(run.step + 1, loss_sum, grad_norm):
        run.steps.zero_grad()
        run.meter.rollback(mark)  # the skipped step's loss stays out of the logged mean
        return torch.tensor(float("nan"))
    after = run.steps.apply()
    if run.ema is not None:
        run.ema.update(run.net)
    return grad_norm if grad_norm is not None else after  # DeepSpeed: known after the step


def data_skipped(loader) -> Optional[int]:
    """Samples the loader skipped so far on this rank, if it counts them (`skip_counts()`)."""
    counts = getattr(loader, "skip_counts", None)
    return sum(counts().values()) if counts is not None else None


def log_step(run: Run, grad_norm: torch.Tensor, started: tuple[float, int],
             progress: Progress) -> None:
    # Non-finite steps were stopped or skipped before the update (train_step); a skipped one
    # logs no grad norm.
    norm = float(grad_norm)
    record = run.meter.summary(run.step, run.scheduler.get_last_lr()[0], norm if math.isfinite(norm) else None,
                               data_skipped(run.loader))
    run.metrics.write(record)
    start_time, start_step = started
    rate = (time.perf_counter() - start_time) / max(run.step - start_step, 1)
    line = console.progress_line(record, run.cfg.train.steps, rate * (run.cfg.train.steps - run.step))
    progress.write(line)
    progress.set_postfix(f"loss {record['loss']:.4f}")


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
    run.phase("checkpoint")
    return run.checkpointer.save(run.step, run.checkpoint_state())


def ensure_checkpoint(run: Run) -> Path:
    """The checkpoint of the current step, written unless it already is, and on disk with its
    marker (an async save of it still being written is waited for) before the caller exits."""
    latest = run.checkpointer.latest()
    path = latest[1] if latest is not None and latest[0] == run.step else save_checkpoint(run)
    run.checkpointer.wait()
    return path


def train(run: Run, progress: Optional[Progress] = None) -> bool:
    """Train to train.steps. False: a pre-emption signal stopped it at a step boundary, after
    writing that step's checkpoint (the caller exits with REQUEUE_EXIT_CODE)."""
    cfg = run.cfg.train
    progress = progress or Progress(None, "train", "step", enabled=False)
    batches = iter(run.loader)
    started = (time.perf_counter(), run.step)
    stage = None
    with run.watchdog.watching():
        while run.step < cfg.steps:
            stage = announce_stage(run, stage)
            grad_norm = train_step(run, batches)
            progress.update()
            run.checkpointer.poll()  # marks a finished background save complete
            if run.step % cfg.log_every_steps == 0 or run.step == cfg.steps:
                log_step(run, grad_norm, started, progress)
            if run.step % cfg.ckpt_every_steps == 0 or run.step == cfg.steps:
                save_checkpoint(run)
            if cfg.sample_every_steps and run.step % cfg.sample_every_steps == 0 and run.step < cfg.steps:
                write_sample(run)  # the last step's sample is the end-of-run one
            if run.preemption is not None and run.preemption.agreed_stop():
                ensure_checkpoint(run)
                return False
        run.phase("checkpoint")
        run.checkpointer.wait()  # the last background save is on disk and marked before we go on
    return True


def sample_at_end(run: Run) -> Optional[Path]:
    return write_sample(run)


def write_sample(run: Run) -> Optional[Path]:
    """Render samples/step-N.<gif|mp4> from the EMA weights; rank 0 writes it and logs it to wandb.

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
