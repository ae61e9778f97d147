"""`python -m litegen.train`: Hydra entry point; validates the config, builds the run, trains."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from litegen.config import CONFIG_DIR, ConfigError, register_configs, to_typed
from litegen.parallel.distributed import init_distributed, shutdown
from litegen.train import console, summary
from litegen.train.preemption import REQUEUE_EXIT_CODE, Preemption, cpu_group
from litegen.train.setup import build_run, resume_if_possible
from litegen.train.trainer import sample_at_end, save_checkpoint, train
from litegen.train.metrics import MetricsWriter


def under_submitit() -> bool:
    """Launched by hydra/launcher=submitit_slurm: one process per Slurm task, no torchrun."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def adopt_submitit_tasks() -> None:
    """Several Slurm tasks per submitit job: export torchrun's variables (RANK, WORLD_SIZE, ...)."""
    if under_submitit() and "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        # Devices stay visible: pick_device uses cuda:LOCAL_RANK.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def stop_for_requeue(run) -> None:
    """After a pre-emption signal: the checkpoint is written; report, chain, exit 75."""
    run.metrics.close(preempted=True)
    if run.dist.is_main:
        console.end_summary(summary.preempted_rows(run), title="pre-empted.")
    run.preemption.chain_previous()  # e.g. submitit's own requeue, now that the checkpoint exists
    shutdown(REQUEUE_EXIT_CODE, exit_process=not under_submitit())
    sys.exit(REQUEUE_EXIT_CODE)


def run_training(cfg: DictConfig, run_dir: Path) -> None:
    typed = to_typed(cfg)
    adopt_submitit_tasks()
    dist_info = init_distributed(typed.parallel.dist_backend, typed.parallel.timeout_s)
    # Installed before the (long) setup, so a signal during it still ends in a checkpoint.
    preemption = Preemption(typed.train.preempt_signals, cpu_group()).install() \
        if typed.train.preempt_signals else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist_info.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    run = build_run(typed, run_dir, dist_info)
    run.preemption = preemption
    resumed = resume_if_possible(run)
    run.metrics = MetricsWriter(run_dir, dist_info, resume_step=run.step)
    run.metrics.start_wandb(run_dir, typed.logging.wandb_mode, typed.logging.wandb_project,
                            typed.run_name, OmegaConf.to_container(cfg, resolve=True))
    if dist_info.is_main:
        console.start_summary(summary.start_rows(run, resumed))
    with console.Progress(typed.train.steps, "train", "step", initial=run.step,
                          enabled=dist_info.is_main) as progress:
        finished = train(run, progress)
    if not finished:
        stop_for_requeue(run)
    if run.checkpointer.latest() is None or run.checkpointer.latest()[0] != run.step:
        save_checkpoint(run)  # e.g. resumed at the end: make sure the final step is on disk
    sample = sample_at_end(run)
    run.metrics.close()
    if preemption is not None:
        preemption.uninstall()  # a local sweep runs the next job in this process
    if dist_info.is_main:
        console.end_summary(summary.end_rows(run, sample))
    shutdown(0, exit_process=not under_submitit())


@hydra.main(config_path=str(CONFIG_DIR), config_name="litegen", version_base=None)
def hydra_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_training(cfg, run_dir)
    except ConfigError as e:
        # A user mistake: one clear message, no traceback.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    register_configs()
    hydra_main()
