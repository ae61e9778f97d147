"""DeepSpeed ZeRO 1/2/3 behind the same step interface as TorchSteps, config generated from ours.

Our torch AdamW is handed to DeepSpeed (no fused-Adam JIT build; the LR schedule keeps driving
its param groups), clipping and accumulation come from optim/train, precision from
train.mixed_precision. Model and optimizer state go through DeepSpeed's own checkpointing into
the step directory; everything else stays in the DCP checkpoint beside it.
"""

import contextlib
from pathlib import Path
from typing import Any, ContextManager, Optional

import torch
from torch import Tensor, nn

from litegen.config import LiteGenConfig

CHECKPOINT_TAG = "zero"


def deepspeed_config(cfg: LiteGenConfig, bf16: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum_steps,
        "gradient_clipping": max(cfg.optim.grad_clip_norm, 0.0),  # 0 disables
        "bf16": {"enabled": bf16},
        # Stage 3 keeps DeepSpeed's memory-efficient linear, which replaces
        # torch.nn.functional.linear process-wide: one backend per process, as torchrun runs it.
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        # ZeRO checks the optimizer against a list of its own; torch AdamW is fine.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # our console line reports progress
        "wall_clock_breakdown": False,
    }


def initialize(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: LiteGenConfig,
               bf16: bool) -> "DeepSpeedSteps":
    # Imported here: DeepSpeed is optional and slow to import. On first use it JIT-builds a
    # shared-memory comm op into TORCH_EXTENSIONS_DIR (~30 s), reused by later runs.
    import deepspeed

    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, bf16),
        dist_init_required=False)
    return DeepSpeedSteps(engine, ds_optimizer)


class DeepSpeedSteps:
    def __init__(self, engine, optimizer):
        self.engine, self.optimizer = engine, optimizer
        self.model = engine  # forward goes through the engine, as DeepSpeed expects

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def accumulate(self, last: bool) -> ContextManager:
        # We call engine.step() once per optimizer step, so tell ZeRO which backward is the
        # boundary (where it reduces gradients) instead of letting it count micro-steps.
        self.engine.set_gradient_accumulation_boundary(last)
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the trainer already divided by accum

    def step(self, clip_norm: float) -> Tensor:
        """Clipping happens inside DeepSpeed (config gradient_clipping); returns the pre-clip norm."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float(norm) if norm is not None else float("nan"))

    def checkpoint_state(self) -> "DeepSpeedCheckpoint":
        return DeepSpeedCheckpoint(self.engine)


class DeepSpeedCheckpoint:
    """Model + optimizer through engine.save_checkpoint/load_checkpoint (collective on all ranks).

    The Checkpointer calls save_to_dir/load_from_dir for entries that have them instead of
    putting them into the DCP state.
    """

    def __init__(self, engine):
        self.engine = engine

    def save_to_dir(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, save_latest=False)

    def load_from_dir(self, path: Path) -> None:
        loaded, _ = self.engine.load_checkpoint(str(path), tag=CHECKPOINT_TAG,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")


def zero3_partitions(model: nn.Module) -> Optional[dict[str, Tensor]]:
    """name -> this rank's flat partition of each parameter under ZeRO-3, else None.

    ZeRO-3 leaves empty placeholders in the module; whatever must follow the weights (the EMA)
    follows these partitions instead.
    """
    params = dict(model.named_parameters())
    if not params or not all(hasattr(p, "ds_tensor") for p in params.values()):
        return None
    return {name: p.ds_tensor for name, p in params.items()}
