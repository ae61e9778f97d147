"""`python -m litegen.tools.torchrun ARGS`: torchrun (same arguments) that keeps pre-emption intact.

launch/torchrun.sh runs the trainer through this. Two things differ from plain torchrun:

- A pre-emption signal (SIGUSR1, SIGUSR2, SIGTERM) that reaches this agent is passed on to the
  worker processes, which checkpoint at their next step boundary and exit. Plain torchrun dies of
  SIGUSR1 (no handler), and answers SIGTERM by killing the workers after a fixed timeout,
  however far their checkpoint got. Slurm signals every process of a step, so the workers often
  get the signal twice; the trainer only records it.
- When every failed worker exited with REQUEUE_EXIT_CODE (checkpoint written, please requeue),
  this exits with that code as well, which launch/slurm.sbatch turns into `scontrol requeue`.
  Plain torchrun reports every worker failure as exit code 1.
- Each restart attempt (`--max-restarts`) gets a fresh c10d store hosted by its rank 0, instead of
  the agent's one store for all attempts, where a restarted worker can read a dead worker's
  address (pytorch#135712; on one node litegen.parallel.distributed also scopes keys per attempt).
"""

import os
import signal
import sys
from typing import Optional

from litegen.train.preemption import DEFAULT_SIGNALS, REQUEUE_EXIT_CODE, parse_signals

# torchrun's own handlers, minus the pre-emption signals we handle (it would replace ours).
TORCHRUN_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent`: torchrun's workers are its direct children."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        # Field 2 (the command name) may contain spaces and ')': the parent pid is the second
        # field after its last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry))
    return found


def forward_to_workers(signum: int, frame) -> None:
    for pid in child_pids(os.getpid()):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def exit_code_of(failures: dict) -> Optional[int]:
    """REQUEUE_EXIT_CODE when every failed worker asked for a requeue, else None."""
    codes = {failure.exitcode for failure in failures.values()}
    return REQUEUE_EXIT_CODE if codes == {REQUEUE_EXIT_CODE} else None


def main(argv: Optional[list[str]] = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    for sig in parse_signals(DEFAULT_SIGNALS):
        signal.signal(sig, forward_to_workers)
    try:
        # Our flag goes first, so an explicit --signals-to-handle of the caller still wins.
        torchrun_main([f"--signals-to-handle={TORCHRUN_SIGNALS}", *argv])
    except ChildFailedError as e:
        code = exit_code_of(e.failures)
        if code is None:
            raise
        print(f"litegen.tools.torchrun: workers checkpointed after a pre-emption signal; "
              f"exiting with {code} (requeue)", file=sys.stderr, flush=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
