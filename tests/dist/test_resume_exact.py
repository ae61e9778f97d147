"""Bitwise resume: 20 straight steps vs 10 + resume + 10 on 2 gloo ranks (FSDP2), with EMA, a
progressive schedule (packed stage, then bucket batches from step 14) and num_workers 0 and 2.
Every logged loss is equal (==), and so are the final weights, EMA, optimizer state, LR
schedule and data cursor. Runs go through the real trainer loop (train(), metrics.jsonl)."""

import json
from pathlib import Path

import pytest
from harness import run_ranks

pytestmark = pytest.mark.slow

STEPS, STOP = 20, 10


def _overrides(shards: str, workers: int) -> list[str]:
    return ["experiment=tiny_progressive", "parallel=fsdp2", f"data.shards={shards}",
            "data.generate_if_missing=false", "logging.wandb_mode=disabled", "train.sample.enabled=false",
            f"train.steps={STEPS}", "train.log_every_steps=1", "train.ckpt_every_steps=100",
            "train.peak_tflops=1", "optim.warmup_steps=3", f"data.num_workers={workers}",
            "data.batch_size=2", "data.stages.0.token_budget=1024", "data.stages.1.start_step=14"]


def _run(overrides: list[str], run_dir: Path, stop_at: int):
    from litegen.config import compose
    from litegen.parallel.distributed import init_distributed
    from litegen.train.metrics import MetricsWriter
    from litegen.train.setup import build_run, resume_if_possible
    from litegen.train.trainer import train

    run_dir.mkdir(parents=True, exist_ok=True)
    run = build_run(compose(overrides), run_dir, init_distributed())
    resume_if_possible(run)
    run.metrics = MetricsWriter(run_dir, run.dist, resume_step=run.step)
    run.cfg.train.steps = stop_at  # built for 20 steps (the LR horizon), trained until stop_at
    train(run)
    return run


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _fingerprint(run) -> dict:
    """This rank's part of everything a resume must restore (same layout: same shards)."""
    import torch

    optim = {f"{i}.{k}": _local(v).clone() for i, (p, s) in enumerate(run.optimizer.state.items())
             for k, v in s.items() if isinstance(v, torch.Tensor)}
    return {"model": [_local(p).detach().clone() for p in run.model.parameters()],
            "ema": {k: _local(v).clone() for k, v in run.ema.shadow.items()},
            "optim": optim, "lr": run.scheduler.state_dict(), "data": run.loader.state_dict(),
            "step": run.step}


def _equal(a, b) -> list[str]:
    import torch

    diffs = []
    if not all(torch.equal(x, y) for x, y in zip(a["model"], b["model"])):
        diffs.append("model")
    for key in ("ema", "optim"):
        if a[key].keys() != b[key].keys() or not all(torch.equal(a[key][k], b[key][k]) for k in a[key]):
            diffs.append(key)
    diffs += [key for key in ("lr", "data", "step") if a[key] != b[key]]
    return diffs


def worker(shards: str, tmp: str) -> dict:
    out = {}
    for workers in (0, 2):
        overrides = _overrides(shards, workers)
        straight = _fingerprint(_run(overrides, Path(tmp) / f"straight{workers}", STEPS))
        _run(overrides, Path(tmp) / f"resumed{workers}", STOP)
        resumed_run = _run(overrides, Path(tmp) / f"resumed{workers}", STEPS)
        out[workers] = {"diffs": _equal(straight, _fingerprint(resumed_run)), "resumed_at": STOP}
    return out


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def results(tiny_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume_exact")
    return tmp, run_ranks(worker, 2, tiny_shards, str(tmp))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bitwise(results, workers):
    tmp, ranks = results
    straight, resumed = _losses(tmp / f"straight{workers}"), _losses(tmp / f"resumed{workers}")
    assert [s for s, _ in straight] == list(range(1, STEPS + 1))
    assert resumed == straight  # every logged loss, ==
    for rank, r in enumerate(ranks):
        assert r[workers]["diffs"] == [], (rank, r[workers]["diffs"])
