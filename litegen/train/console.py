"""Console output on rank 0: a start summary, live progress, one line per log step, an end summary.

On a terminal, progress is a live tqdm bar (training steps, sampler evaluations, prep clips) and
the log lines scroll above it. Anywhere else (CI logs, Slurm's log files, pipes) there is no bar:
only the lines, so the logs stay readable; a bar made with `plain_steps=N` (prep, dataset
generation: no log lines of their own) prints one plain line at every N-th of its total instead.
"""

import sys
from typing import Any, Optional, TextIO


def _eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def progress_line(record: dict[str, Any], total_steps: int, eta_s: float) -> str:
    mfu: Optional[float] = record.get("mfu")
    parts = [
        f"step {record['step']}/{total_steps}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.2e}",
        f"gnorm {record['grad_norm']:.3f}",
        f"{record['step_time_s']:.3f} s/step",
        f"{_si(record['tokens_per_s'])} tok/s",
        f"mfu {100 * mfu:.1f}%" if mfu is not None else "mfu n/a",
    ]
    if record.get("mem_peak_gib") is not None:
        parts.append(f"mem {record['mem_peak_gib']:.2f} GiB")
    parts.append(f"eta {_eta(eta_s)}")
    return " | ".join(parts)


def say(*lines: str) -> None:
    print("\n".join(lines), flush=True)


class Progress:
    """A live bar when `stream` is a terminal and `enabled` (rank 0); otherwise only write() prints.

    total=None counts without an end (e.g. sampler network evaluations). plain_steps=N: off a
    terminal, print `desc: n/total unit (p%)` each time another N-th of the total is done.
    """

    def __init__(self, total: Optional[int], desc: str, unit: str, initial: int = 0,
                 enabled: bool = True, stream: Optional[TextIO] = None, plain_steps: int = 0):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.bar = None
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.plain_steps = plain_steps if enabled and total else 0
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain_steps:
            before, self.done = self.done, self.done + n
            if self.done * self.plain_steps // self.total > before * self.plain_steps // self.total:
                print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)",
                      file=self.stream, flush=True)

    def set_postfix(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, line: str) -> None:
        """A permanent line (above the bar on a terminal); nothing on a disabled (non-main) rank."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def table(title: str, rows: dict[str, Any]) -> list[str]:
    """A title and aligned `key  value` rows; a multi-line value continues under its column."""
    width = max(len(k) for k in rows)
    lines = [title]
    for key, value in rows.items():
        first, *rest = str(value).splitlines() or [""]
        lines.append(f"  {key.ljust(width)}  {first}")
        lines += [f"  {' ' * width}  {more}" for more in rest]
    return lines


def start_summary(rows: dict[str, Any]) -> None:
    say(*table("LiteGen training run", rows))


def end_summary(rows: dict[str, Any], title: str = "done.") -> None:
    say(*table(title, rows))
    sys.stdout.flush()
