"""Checkpoints with torch.distributed.checkpoint that count only once fully written.

Layout: <root>/step-<N>/ holds DCP shards plus `.metadata` (and a sub-directory per state entry
that saves itself, such as DeepSpeed's engine); the file COMPLETE is written last, by rank 0,
atomically, once every rank's data is on disk. Resume considers only directories with COMPLETE,
so a crash (even kill -9) at any moment of a save can never be resumed from.

With `async_save` the state is staged (copied to CPU memory) in the step loop and written by a
background thread while training goes on; the marker follows when the write has finished on
every rank (DCP gathers every rank's write result on rank 0 before it finishes the save).
"""

import json
import logging
import os
import re
import shutil
import socket
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from litegen.parallel.distributed import DistInfo, barrier, is_distributed

log = logging.getLogger(__name__)
MARKER = "COMPLETE"
LEASE_PREFIX = ".loading-"  # <dir>/.loading-<host>-<pid>: a process is reading this checkpoint
_STEP_DIR = re.compile(r"^step-(\d+)$")

# DCP reports a failed write on any rank as a CheckpointException, a BaseException.
_SAVE_ERRORS = (Exception, CheckpointException)

# DCP warns on every call without a process group; one process is a supported layout here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class CheckpointSaveError(RuntimeError):
    """A save failed; the previous complete checkpoint stays the latest."""


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


def _step_dirs(root: Path) -> Iterator[tuple[int, Path]]:
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match:
                yield int(match.group(1)), path


def complete_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint under root, oldest first."""
    return sorted((step, path) for step, path in _step_dirs(root) if (path / MARKER).is_file())


def _write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the directory: after a crash the file is absent or whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _lease_alive(lease: Path) -> bool:
    """A lease of a process on this host that no longer exists is stale (it was killed)."""
    host, _, pid = lease.name[len(LEASE_PREFIX):].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's reader: trust it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def in_use(path: Path) -> bool:
    """Whether some live process holds a read lease on this checkpoint directory."""
    return any(_lease_alive(lease) for lease in path.glob(LEASE_PREFIX + "*"))


@dataclass
class PendingSave:
    step: int
    path: Path
    future: Future
    started: float


class Checkpointer:
    def __init__(self, root: Path, keep_last_k: int, dist_info: DistInfo, async_save: bool = False):
        self.root, self.keep_last_k, self.dist = Path(root), keep_last_k, dist_info
        self.async_save = async_save
        self.pending: Optional[PendingSave] = None
        self.saved_step: Optional[int] = None  # the newest step this process saved (every rank alike)
        # The background writer's collectives get their own gloo group: sharing the training
        # group would interleave its collectives with the step loop's in a different order on
        # different ranks (and NCCL groups cannot run DCP's CPU-side coordination anyway).
        self.group = dist.new_group(backend="gloo") if async_save and is_distributed() else None

    def latest(self) -> Optional[tuple[int, Path]]:
        steps = complete_steps(self.root)
        return steps[-1] if steps else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of `step` (collective). Async: returns once the state is staged."""
        self.wait()  # at most one save in flight
        path = step_dir(self.root, step)
        if self.saved_step == step:
            return path  # already written (e.g. the final step right after a pre-emption save)
        if self.dist.is_main and path.exists():
            shutil.rmtree(path)  # a leftover of a crashed save at this step: never complete
        barrier()
        start = time.perf_counter()
        dcp_state, own = _split(state)
        for key, value in own.items():  # synchronous; DCP's first gather orders them before the marker
            value.save_to_dir(path / key)
        if self.async_save:
            future = dcp.async_save(dcp_state, checkpoint_id=str(path), process_group=self.group)
            self.pending = PendingSave(step, path, future, start)
            return path
        try:
            dcp.save(dcp_state, checkpoint_id=str(path))
        except _SAVE_ERRORS as exc:
            raise self._failed(step, exc) from exc
        barrier()  # every rank's shards are on disk before the marker says so
        self._finish(step, path, start)
        barrier()
        return path

    def poll(self) -> None:
        """Step-boundary check (no collective): mark a finished background save complete."""
        if self.pending is not None and self.pending.future.done() and self.pending.future.exception() is None:
            self.wait()

    def wait(self) -> None:
        """Block until the background save (if any) is written and marked; raise if it failed.

        Every rank calls this at the same step (the next save, the end of training), and a failed
        write on any rank fails every rank's future (DCP reduces write results over the group),
        so all ranks raise together.
        """
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            pending.future.result()
        except _SAVE_ERRORS as exc:
            raise self._failed(pending.step, exc) from exc
        self._finish(pending.step, pending.path, pending.started)

    def load(self, path: Path, state: dict[str, Any]) -> None:
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        lease = path / f"{LEASE_PREFIX}{socket.gethostname()}-{os.getpid()}"
        try:
            lease.touch()  # retention elsewhere (a still-saving rank 0, another job) leaves it alone
        except OSError:
            pass  # a read-only checkpoint: nobody can delete it under us anyway
        try:
            dcp_state, own = _split(state)
            dcp.load(dcp_state, checkpoint_id=str(path))
            for key, value in own.items():
                value.load_from_dir(path / key)
        finally:
            lease.unlink(missing_ok=True)

    def _failed(self, step: int, exc: BaseException) -> CheckpointSaveError:
        latest = self.latest()
        return CheckpointSaveError(
            f"saving the checkpoint of step {step} failed ({exc!r}); "
            f"the latest complete checkpoint stays {latest[1] if latest else 'none'}")

    def _finish(self, step: int, path: Path, started: float) -> None:
        """Rank 0, once every rank's data is on disk: the marker, then retention."""
        self.saved_step = step
        if self.dist.is_main:
            info = {"step": step, "world_size": self.dist.world_size, "async": self.async_save,
                    "save_s": round(time.perf_counter() - started, 3),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            _write_atomic(path / MARKER, json.dumps(info))
            self._prune(keep=path)

    def _prune(self, keep: Path) -> None:
        """Delete complete checkpoints beyond keep_last_k and incomplete leftovers older than the
        newest complete one; never one being read; a failed deletion only warns."""
        complete = complete_steps(self.root)
        old = [p for _, p in complete[:-self.keep_last_k]] if self.keep_last_k > 0 else []
        newest = complete[-1][0] if complete else -1
        leftovers = [p for s, p in _step_dirs(self.root) if s < newest and not (p / MARKER).is_file()]
        for path in old + leftovers:
            if path == keep or in_use(path):
                continue
            try:
                (path / MARKER).unlink(missing_ok=True)  # first invisible to resume, then delete
                shutil.rmtree(path)
            except OSError as e:
                log.warning("could not delete old checkpoint %s (training goes on): %s", path, e)
