"""Checkpoints with torch.distributed.checkpoint that count only once fully written.

Layout: <root>/step-<N>/ holds DCP shards plus `.metadata` (and a sub-directory per state entry
that saves itself, such as DeepSpeed's engine); the file COMPLETE is written (by rank 0,
atomically, after every rank finished) last. Resume considers only directories with COMPLETE, so
a crash mid-save can never be resumed from.
"""

import json
import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from litegen.parallel.distributed import DistInfo, barrier

log = logging.getLogger(__name__)
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")

# DCP warns on every call without a process group; one process is a supported layout here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class ModelOptimState(Stateful):
    """Model + optimizer under layout-independent names (no DDP/FSDP wrapper prefixes)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entries for DCP, entries that write their own directory, e.g. DeepSpeed's engine)."""
    own = {k: v for k, v in state.items() if hasattr(v, "save_to_dir")}
    return {k: v for k, v in state.items() if k not in own}, own


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def complete_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint under root, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / MARKER).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


class Checkpointer:
    def __init__(self, root: Path, keep_last_k: int, dist_info: DistInfo):
        self.root, self.keep_last_k, self.dist = Path(root), keep_last_k, dist_info

    def latest(self) -> Optional[tuple[int, Path]]:
        steps = complete_steps(self.root)
        return steps[-1] if steps else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = step_dir(self.root, step)
        if self.dist.is_main and path.exists():
            shutil.rmtree(path)  # a leftover of a crashed save at this step: never complete
        barrier()
        start = time.perf_counter()
        dcp_state, own = _split(state)
        dcp.save(dcp_state, checkpoint_id=str(path))
        for key, value in own.items():
            value.save_to_dir(path / key)
        barrier()  # every rank's shards are on disk before the marker says so
        if self.dist.is_main:
            self._mark_complete(path, step, time.perf_counter() - start)
            self._prune(keep=path)
        barrier()
        return path

    def load(self, path: Path, state: dict[str, Any]) -> None:
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        dcp_state, own = _split(state)
        dcp.load(dcp_state, checkpoint_id=str(path))
        for key, value in own.items():
            value.load_from_dir(path / key)

    def _mark_complete(self, path: Path, step: int, save_s: float) -> None:
        info = {"step": step, "world_size": self.dist.world_size, "save_s": round(save_s, 3),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = path / (MARKER + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path / MARKER)  # atomic on POSIX: the marker is either absent or whole

    def _prune(self, keep: Path) -> None:
        """Delete complete checkpoints beyond keep_last_k; a failed deletion only warns."""
        if self.keep_last_k <= 0:
            return
        old = [p for _, p in complete_steps(self.root)][:-self.keep_last_k]
        for path in old:
            if path == keep:
                continue
            try:
                (path / MARKER).unlink()  # first make it invisible to resume, then delete
                shutil.rmtree(path)
            except OSError as e:
                log.warning("could not delete old checkpoint %s: %s", path, e)
