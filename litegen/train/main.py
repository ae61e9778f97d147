"""`python -m litegen.train`: Hydra entry point; validates the config, builds the run, trains."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from litegen.config import CONFIG_DIR, compose, register_configs, to_typed
from litegen.config.errors import UserError, user_message
from litegen.parallel.distributed import init_distributed, shutdown
from litegen.train import console
from litegen.train.setup import build_run, describe, resume_if_possible
from litegen.train.trainer import sample_at_end, save_checkpoint, train
from litegen.train.metrics import MetricsWriter
from litegen.train.nonfinite import NonFiniteError


def run_training(cfg: DictConfig, run_dir: Path) -> None:
    typed = to_typed(cfg)
    dist_info = init_distributed(typed.parallel.dist_backend, typed.parallel.timeout_s)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist_info.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    run = build_run(typed, run_dir, dist_info)
    resumed = resume_if_possible(run)
    run.metrics = MetricsWriter(run_dir, dist_info, resume_step=run.step)
    run.metrics.start_wandb(run_dir, typed.logging.wandb_mode, typed.logging.wandb_project,
                            typed.run_name, OmegaConf.to_container(cfg, resolve=True))
    if dist_info.is_main:
        rows = describe(run)
        rows["start"] = f"resumed from {resumed} at step {run.step}" if resumed else "fresh, step 0"
        console.start_summary(rows)
    train(run)
    if run.checkpointer.latest() is None or run.checkpointer.latest()[0] != run.step:
        save_checkpoint(run)  # e.g. resumed at the end: make sure the final step is on disk
    sample = sample_at_end(run)
    run.metrics.close()
    if dist_info.is_main:
        console.end_summary({
            "steps": run.step,
            "checkpoint": str(run.checkpointer.latest()[1]),
            "metrics": str(run_dir / "metrics.jsonl"),
            "sample clip": str(sample) if sample else "disabled (train.sample.enabled=false)",
            "config": str(run_dir / "config.yaml"),
        })
    shutdown(0)


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
