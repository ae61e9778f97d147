"""Pre-emption: a signal asks the run to stop at the next step boundary, checkpoint, and exit with
REQUEUE_EXIT_CODE, which launch/slurm.sbatch turns into `scontrol requeue`.

    preemption = Preemption(["SIGUSR1", "SIGTERM"]).install()
    ...                                   # after every optimizer step, on every rank:
    if preemption.agreed_stop():          # collective: all ranks answer alike at the same step
        save the checkpoint; preemption.chain_previous(); exit with REQUEUE_EXIT_CODE

The handler only records the signal: checkpointing from inside a signal handler would interrupt a
collective halfway, so the work happens at the step boundary. Ranks can receive the signal at
different moments, hence the one-integer all-reduce that makes them stop at the same step.
"""

import os
import signal
from typing import Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist

# sysexits.h EX_TEMPFAIL, "temporary failure; try again later": checkpoint written, please requeue.
REQUEUE_EXIT_CODE = 75
# SIGUSR1: Slurm's --signal warning and `scancel --signal=USR1`; SIGUSR2: submitit's pre-emption
# signal (hydra/launcher=submitit_slurm); SIGTERM: pre-emption/cancel, sent before SIGKILL.
DEFAULT_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")

Handler = Union[Callable, int, None]


def parse_signals(names: Sequence[str]) -> list[signal.Signals]:
    """["SIGUSR1", "USR2", ...] -> signals; an unknown name raises ValueError naming it."""
    out = []
    for name in names:
        full = name if name.startswith("SIG") else f"SIG{name}"
        if not hasattr(signal.Signals, full) or full in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"{name!r} is not a signal a process can catch (e.g. SIGUSR1, SIGTERM)")
        out.append(signal.Signals[full])
    return out


def cpu_group():
    """The process group for the stop flag: a CPU tensor, so gloo (a new group when NCCL is the
    default: no GPU stream sync per step). Collective: call on every rank, or not at all."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


class Preemption:
    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS, group=None):
        self.signals = parse_signals(signals)
        self.group = group
        self.received: Optional[signal.Signals] = None  # the first signal seen by this process
        self._previous: dict[signal.Signals, Handler] = {}

    def install(self) -> "Preemption":
        """Catch the signals (main thread only); the handlers they replace are kept for later."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        # Only a flag: printing here could re-enter a half-written print of the main thread.
        if self.received is None:
            self.received = signal.Signals(signum)

    @property
    def requested(self) -> bool:
        """This process received a signal (no communication)."""
        return self.received is not None

    def agreed_stop(self) -> bool:
        """True on every rank as soon as any rank received a signal: one small all-reduce."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def chain_previous(self) -> None:
        """Call the Python handler ours replaced for the received signal, if there was one.

        Under submitit (hydra/launcher=submitit_slurm) that is its requeue handler: it runs after
        our checkpoint, so the resubmitted job resumes from it. Default/ignore dispositions are
        not called (SIG_DFL would kill the process before it exits with REQUEUE_EXIT_CODE).
        """
        if self.received is None:
            return
        previous = self._previous.get(self.received)
        if callable(previous):
            previous(int(self.received), None)

    def describe(self) -> str:
        """The signal received here, or the note that another rank received it."""
        if self.received is not None:
            return f"{self.received.name} received (pid {os.getpid()})"
        return "another rank received a pre-emption signal"
