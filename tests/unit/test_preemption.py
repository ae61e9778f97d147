"""Pre-emption signals: handler flag, agreement, chaining; torchrun wrapper pieces; config checks."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from litegen.config import ConfigError, TrainConfig, compose
from litegen.tools.torchrun import child_pids, exit_code_of, forward_to_workers
from litegen.train.preemption import (DEFAULT_SIGNALS, REQUEUE_EXIT_CODE, Preemption,
                                      parse_signals)


def test_parse_signals_accepts_short_names_and_refuses_uncatchable():
    assert parse_signals(["SIGUSR1", "TERM"]) == [signal.SIGUSR1, signal.SIGTERM]
    with pytest.raises(ValueError, match="SIGKILL"):
        parse_signals(["SIGKILL"])
    with pytest.raises(ValueError, match="SIGNOPE"):
        parse_signals(["SIGNOPE"])


def test_signal_sets_flag_then_agreed_stop_and_uninstall_restores():
    before = signal.getsignal(signal.SIGUSR1)
    p = Preemption(["SIGUSR1", "SIGUSR2"]).install()
    try:
        assert not p.requested and not p.agreed_stop()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.requested and p.agreed_stop()
        assert p.received == signal.SIGUSR2  # the first one is kept
        assert "SIGUSR2 received" in p.describe()
    finally:
        p.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_chain_previous_calls_the_replaced_python_handler_only():
    calls = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        p = Preemption(["SIGUSR2", "SIGTERM"]).install()
        p.chain_previous()  # nothing received yet: nothing to chain
        os.kill(os.getpid(), signal.SIGUSR2)
        p.chain_previous()
        assert calls == [signal.SIGUSR2]
        p.uninstall()
        # SIGTERM's previous handler is SIG_DFL: chaining it would kill us, so it is skipped.
        q = Preemption(["SIGTERM"]).install()
        q._on_signal(signal.SIGTERM, None)
        q.chain_previous()
        q.uninstall()
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_config_default_signals_are_the_wrappers_and_bad_names_fail_loudly():
    assert TrainConfig().preempt_signals == list(DEFAULT_SIGNALS)
    with pytest.raises(ConfigError, match="train.preempt_signals"):
        compose(["train.preempt_signals=[SIGUSR1,SIGBOGUS]"])
    with pytest.raises(ConfigError, match="train.sample_every_steps"):
        compose(["train.sample_every_steps=-1"])


def test_wrapper_exit_code_is_requeue_only_when_every_failure_asked_for_it():
    failure = lambda code: SimpleNamespace(exitcode=code)  # noqa: E731
    assert exit_code_of({0: failure(75), 1: failure(75)}) == REQUEUE_EXIT_CODE
    assert exit_code_of({0: failure(75), 1: failure(1)}) is None
    assert exit_code_of({0: failure(-9)}) is None


def test_wrapper_forwards_a_signal_to_its_child_processes():
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75))\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert child.pid in child_pids(os.getpid())
        forward_to_workers(signal.SIGUSR1, None)
        assert child.wait(timeout=30) == 75
    finally:
        if child.poll() is None:
            child.kill()
