"""`python -m litegen.train`: Hydra entry point; validates the config, builds the run, trains."""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from litegen.config import CONFIG_DIR, compose, register_configs, to_typed
from litegen.config.errors import UserError, user_message
from litegen.parallel.distributed import init_distributed, shutdown
from litegen.train import console, summary
from litegen.train.preemption import REQUEUE_EXIT_CODE, Preemption, cpu_group
from litegen.train.setup import build_run, resume_if_possible
from litegen.train.trainer import ensure_checkpoint, sample_at_end, train
from litegen.train.metrics import MetricsWriter
from litegen.train.nonfinite import NonFiniteError


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
    ensure_checkpoint(run)  # e.g. resumed at the end: make sure the final step is on disk
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
    except UserError as e:
        # A user mistake (config field, data, paths): one clear message, no traceback.
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as e:
        # Not a bug either: the message names the step; the last checkpoint is the last good state.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)


def hydra_message(e: Exception) -> str:
    """Hydra's message plus its cause's first line (which names the key or the bad value),
    without the config search path."""
    text = str(e).split("\nConfig search path:")[0].strip()
    if e.__cause__ is not None:
        text += "\n  " + str(e.__cause__).splitlines()[0]
    return text


def check_overrides(argv: list[str]) -> None:
    """Compose the command line's overrides before Hydra runs: a misspelled key or a bad value
    exits 2 with Hydra's message naming the key (Hydra itself would exit 1, like a crash)."""
    from hydra.errors import HydraException

    if any(arg.startswith("-") for arg in argv):
        return  # --help, --cfg, --multirun, ...: Hydra's own modes
    overrides = [a for a in argv if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        compose(overrides)
    except HydraException as e:
        print(f"error: {hydra_message(e)}", file=sys.stderr)
        sys.exit(2)
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    register_configs()
    check_overrides(sys.argv[1:])
    hydra_main()
