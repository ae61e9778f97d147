"""Console: a live bar only on a terminal, plain lines elsewhere; summaries; sampling progress."""

import io

import torch
from torch import nn

from litegen.train.console import Progress, progress_line, table
from litegen.train.sampling import evaluation_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_pipe_writes_only_the_lines():
    out = io.StringIO()
    with Progress(10, "train", "step", stream=out) as p:
        for _ in range(3):
            p.update()
        p.write("step 3/10 | loss 1.0")
    assert out.getvalue() == "step 3/10 | loss 1.0\n"


def test_progress_with_plain_steps_prints_a_line_per_tenth_off_a_terminal():
    out = io.StringIO()
    with Progress(20, "prep", "clips", initial=4, stream=out, plain_steps=10) as p:
        for n in (1, 1, 5, 9):  # 5, 6, 11, 20 done
            p.update(n)
    assert out.getvalue().splitlines() == ["prep: 6/20 clips (30%)", "prep: 11/20 clips (55%)",
                                           "prep: 20/20 clips (100%)"]
    terminal = Terminal()
    with Progress(20, "prep", "clips", stream=terminal, plain_steps=10) as p:
        p.update(20)
    assert "prep: 20/20 clips (100%)\n" not in terminal.getvalue()  # the bar instead


def test_progress_on_a_terminal_draws_a_bar_and_keeps_the_lines():
    out = Terminal()
    with Progress(10, "train", "step", initial=2, stream=out) as p:
        p.update(3)
        p.set_postfix("loss 0.5")
        p.write("step 5/10 | loss 0.5")
    text = out.getvalue()
    assert "step 5/10 | loss 0.5\n" in text
    assert "5/10" in text.replace("step 5/10", "") and "\r" in text  # the redrawn bar


def test_disabled_progress_prints_nothing():
    out = Terminal()
    with Progress(10, "train", "step", enabled=False, stream=out) as p:
        p.update()
        p.write("hidden")
    assert out.getvalue() == ""


def test_table_aligns_keys_and_continues_multiline_values():
    lines = table("title", {"a": 1, "longer": "x\ny"})
    assert lines == ["title", "  a       1", "  longer  x", "          y"]


def test_progress_line_includes_memory_when_measured():
    record = {"step": 3, "loss": 1.0, "lr": 1e-4, "grad_norm": 0.5, "step_time_s": 0.2,
              "tokens_per_s": 12000.0, "mfu": 0.25, "mem_peak_gib": 1.5}
    line = progress_line(record, 10, 61)
    assert "mem 1.50 GiB" in line and "12.0k tok/s" in line and "mfu 25.0%" in line and "eta 1m01s" in line


def test_evaluation_progress_counts_forward_calls_and_removes_its_hook():
    net = nn.Linear(2, 2)
    with evaluation_progress(net, enabled=True) as progress:
        progress.bar = None  # not a terminal under pytest; count through a stand-in instead
        counted = []
        progress.update = lambda n=1: counted.append(n)
        for _ in range(3):
            net(torch.zeros(1, 2))
    assert len(counted) == 3
    assert not net._forward_hooks
