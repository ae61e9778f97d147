"""Per-rank watchdog: a phase of the step loop that runs past `timeout_s` ends the job.

The loop marks phases (`data`, `forward_backward`, `optimizer`, `checkpoint`) with a plain
attribute write. A daemon thread publishes this rank's (step, phase) to the job's c10d store and,
when the current phase has run too long, reads every rank's, names the rank(s) furthest behind
(a rank stuck outside collectives is behind the ranks waiting for it inside one), dumps this
rank's Python stacks and exits the process with HANG_EXIT_CODE. torchrun then stops the other
workers; each of them also has its own watchdog, so no rank outlives the timeout by much.
"""

import faulthandler
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from litegen.parallel.distributed import DistInfo, job_store

HANG_EXIT_CODE = 124  # as timeout(1): the job did not finish in time
PHASES = ("data", "forward_backward", "optimizer", "checkpoint")
_KEY = "litegen/watchdog/rank{}"


def _store(timeout_s: float):
    """A client of the job's store (torchrun's or rank 0's), if there is a job."""
    try:
        return job_store(timeout_s, wait_for_workers=False)
    except Exception:  # the watchdog still guards this rank without its peers' view
        return None


def laggards(beats: dict[int, tuple[int, str]]) -> list[int]:
    """Ranks whose (step, phase) is furthest behind."""
    order = {rank: (step, PHASES.index(phase) if phase in PHASES else len(PHASES))
             for rank, (step, phase) in beats.items()}
    low = min(order.values())
    return sorted(rank for rank, key in order.items() if key == low)


class Watchdog:
    def __init__(self, timeout_s: float, dist_info: DistInfo, exit_code: int = HANG_EXIT_CODE):
        self.timeout_s, self.dist, self.exit_code = timeout_s, dist_info, exit_code
        self.poll_s = min(max(timeout_s / 5, 0.2), 5.0)
        self.current: Optional[tuple[int, str, float]] = None  # (step, phase, monotonic start)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def phase(self, name: str, step: int) -> None:
        self.current = (step, name, time.monotonic())  # one attribute write: no I/O in the loop

    def start(self) -> "Watchdog":
        if self.timeout_s > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="litegen-watchdog", daemon=True)
            self._thread.start()
        return self

    @contextmanager
    def watching(self) -> Iterator["Watchdog"]:
        """Watch the enclosed loop; stop watching however it ends (an error, a return)."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.current = None

    def _run(self) -> None:
        store = _store(timeout_s=max(self.poll_s * 4, 5.0))
        while not self._stop.wait(self.poll_s):
            current = self.current
            if current is None:
                continue
            step, name, since = current
            self._publish(store, step, name)
            if time.monotonic() - since > self.timeout_s:
                self._fire(store, step, name, time.monotonic() - since)

    def _publish(self, store, step: int, name: str) -> None:
        if store is not None:
            try:
                store.set(_KEY.format(self.dist.rank), json.dumps([step, name]))
            except Exception:
                pass  # the store's host may be the rank that died; keep watching locally

    def _peers(self, store) -> dict[int, tuple[int, str]]:
        beats = {}
        for rank in range(self.dist.world_size):
            try:
                step, name = json.loads(store.get(_KEY.format(rank)))
                beats[rank] = (step, name)
            except Exception:
                continue  # a rank that never published (or an unreachable store)
        return beats

    def _fire(self, store, step: int, name: str, ran_s: float) -> None:
        beats = self._peers(store) if store is not None else {}
        beats[self.dist.rank] = (step, name)
        behind = laggards(beats)
        where = ", ".join(f"rank {r}: {p!r} of step {s}" for r, (s, p) in sorted(beats.items()))
        print(f"error: watchdog on rank {self.dist.rank}: phase {name!r} of step {step} ran "
              f"{ran_s:.1f} s > train.step_timeout_s={self.timeout_s:g}. Stalled: rank(s) {behind} "
              f"in phase {beats[behind[0]][1]!r} of step {beats[behind[0]][0]} (all ranks: {where}). "
              f"Exiting with {self.exit_code}; this rank's stacks follow.", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(self.exit_code)
