"""Console output on rank 0: a start summary, one live progress line per log step, an end summary."""

import sys
from typing import Any, Optional


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
        f"eta {_eta(eta_s)}",
    ]
    return " | ".join(parts)


def say(*lines: str) -> None:
    print("\n".join(lines), flush=True)


def start_summary(rows: dict[str, Any]) -> None:
    width = max(len(k) for k in rows)
    say("LiteGen training run", *(f"  {k.ljust(width)}  {v}" for k, v in rows.items()))


def end_summary(rows: dict[str, Any]) -> None:
    width = max(len(k) for k in rows)
    say("done.", *(f"  {k.ljust(width)}  {v}" for k, v in rows.items()))
    sys.stdout.flush()
