"""Step metrics: throughput/MFU accounting, metrics.jsonl (rank 0) and wandb."""

import json
import uuid
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from litegen.parallel.distributed import DistInfo, all_reduce_sum
from litegen.train.memstats import peak_memory_gib


@dataclass
class Window:
    """Sums over the steps since the last log line; reduced over ranks when logged."""

    loss_sum: Any = 0.0  # a device tensor while accumulating: no host sync per step
    micro_batches: int = 0
    samples: int = 0
    tokens: int = 0
    flops: float = 0.0
    steps: int = 0
    start: float = 0.0

    def reset(self) -> None:
        self.__init__(start=time.perf_counter())


class Meter:
    """Sums per rank, reduced once per log step over `group`: the data-parallel ranks.

    Sequence-parallel peers share each sample (same loss, same tokens), so reducing over all
    ranks would count every sample sp times; one rank per SP group is exactly the dp group.
    """

    def __init__(self, dist_info: DistInfo, peak_tflops: Optional[float], group=None):
        self.dist, self.peak_tflops, self.group = dist_info, peak_tflops, group
        self.window = Window(start=time.perf_counter())

    def add_micro(self, loss: Any, samples: int, tokens: int, flops: float) -> None:
        w = self.window
        w.loss_sum, w.micro_batches = w.loss_sum + loss, w.micro_batches + 1
        w.samples, w.tokens, w.flops = w.samples + samples, w.tokens + tokens, w.flops + flops

    def end_step(self) -> None:
        self.window.steps += 1

    def mark(self) -> tuple:
        """The window's sums now, for rollback() of a step whose update was skipped."""
        w = self.window
        return w.loss_sum, w.micro_batches, w.samples, w.tokens, w.flops

    def rollback(self, mark: tuple) -> None:
        w = self.window
        w.loss_sum, w.micro_batches, w.samples, w.tokens, w.flops = mark

    def summary(self, step: int, lr: float, grad_norm: float,
                data_skipped: Optional[int] = None) -> dict[str, Any]:
        """Reduce the window over the group and turn it into a metrics record.

        data_skipped: samples this rank's loader has skipped so far (None: it does not count).
        """
        w = self.window
        elapsed = max(time.perf_counter() - w.start, 1e-9)
        sums = [float(w.loss_sum), w.micro_batches, w.samples, w.tokens, w.flops]
        if data_skipped is not None:
            sums.append(data_skipped)
        loss_sum, micro, samples, tokens, flops, *skipped = all_reduce_sum(sums, self.dist.device, self.group)
        tflops_per_device = flops / elapsed / self.dist.world_size / 1e12
        record = {
            "step": step, "loss": loss_sum / max(micro, 1), "lr": lr, "grad_norm": grad_norm,
            "step_time_s": elapsed / max(w.steps, 1), "samples_per_s": samples / elapsed,
            "tokens_per_s": tokens / elapsed, "tflops_per_device": tflops_per_device,
            "mfu": tflops_per_device / self.peak_tflops if self.peak_tflops else None,
            "mem_peak_gib": peak_memory_gib(self.dist.device),
        }
        if skipped:
            record["data_skipped"] = int(skipped[0])
        w.reset()
        return record


class MetricsWriter:
    """metrics.jsonl plus wandb, on rank 0 only; a resumed run continues both."""

    def __init__(self, run_dir: Path, dist_info: DistInfo, resume_step: int):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = dist_info.is_main
        self.wandb_run = None
        self.wandb_path: Optional[Path] = None  # this process's wandb run folder (offline-run-...)
        self.wandb_url: Optional[str] = None
        if self.enabled:
            _truncate_after(self.path, resume_step)

    def start_wandb(self, run_dir: Path, mode: str, project: str, name: str, config: dict) -> None:
        if not self.enabled or mode == "disabled":
            return
        import wandb

        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        # silent: our own start/end summaries say where the run is and how to upload it.
        self.wandb_run = wandb.init(project=project, name=name, id=run_id, resume="allow",
                                    dir=str(run_dir), mode=mode, config=config,
                                    settings=wandb.Settings(silent=True))
        self.wandb_path = Path(self.wandb_run.dir).parent
        self.wandb_url = self.wandb_run.url  # None offline

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if v is not None}, step=record["step"])

    def log_video(self, path: Path, caption: str, step: int) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"sample": wandb.Video(str(path), caption=caption)}, step=step)

    def close(self, preempted: bool = False) -> None:
        if self.wandb_run is not None:
            if preempted:
                self.wandb_run.mark_preempting()  # the UI shows it as pre-empted, not crashed
            self.wandb_run.finish(exit_code=75 if preempted else 0)
            self.wandb_run = None


def _truncate_after(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from: those steps will be redone."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))
