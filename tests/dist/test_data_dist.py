"""Two gloo processes (spawned once for the module): bad samples never desynchronise the ranks'
step counts, packed clips move between ranks to even out attention cost, and the loader state
saved through torch.distributed.checkpoint by two ranks resumes on one."""

import json
import multiprocessing as mp
import os
import socket
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from corrupt_data import GOOD_KEYS, make_corrupt_dataset

pytestmark = pytest.mark.slow
STEPS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_samples(rank: int, spec: str) -> dict:
    import torch.distributed as dist

    from litegen.config.schema import DataConfig
    from litegen.data.loader import build_loader

    loader = build_loader(DataConfig(shards=spec, batch_size=1, shuffle_buffer=3, seed=2), rank, 2)
    steps, keys = 0, []
    for batch in loader:
        dist.all_reduce(torch.ones(1))  # a training step's collective: a rank short of batches would hang here
        keys += [k for k, e in zip(batch["keys"], batch["epochs"]) if e == 0]
        steps += 1
        if steps == STEPS:
            break
    return {"steps": steps, "skips": loader.skip_counts(), "keys": keys}


def _packed_batch(rank: int) -> dict:
    # Rank 0: two 768-token clips and two of 64; rank 1: eight of 256. Clip values encode
    # (rank, index) so the receiver can check what arrived.
    sizes = [768, 768, 64, 64] if rank == 0 else [256] * 8
    clips = [torch.full((4, size // 4, 1, 1), float(rank * 100 + i)) for i, size in enumerate(sizes)]
    n = len(sizes)
    return {"latents": clips, "packed": True, "captions": [f"c{rank}-{i}" for i in range(n)],
            "keys": [f"k{rank}-{i}" for i in range(n)], "meta": [{"i": i} for i in range(n)],
            "epochs": [0] * n, "sources": ["s"] * n, "tokens": sizes, "stage": "x", "token_budget": 2048,
            "text_emb": torch.full((n, 3, 2), float(rank)), "text_mask": torch.ones(n, 3, dtype=torch.bool)}


def _rebalance(rank: int) -> dict:
    from litegen.parallel.rebalance import rebalance_packed

    out = rebalance_packed(_packed_batch(rank), 2048, torch.device("cpu"))
    ok = all(float(c.flatten()[0]) == int(k[1]) * 100 + int(k.split("-")[1]) and
             c.shape[1] * 4 == tok for c, k, tok in zip(out["latents"], out["keys"], out["tokens"]))
    text_ok = all(float(e[0, 0]) == int(k[1]) for e, k in zip(out["text_emb"], out["keys"]))
    return {"keys": out["keys"], "tokens": out["tokens"], "clips_match_keys": ok, "text_match": text_ok,
            "captions_match": [c[1:] for c in out["captions"]] == [k[1:] for k in out["keys"]]}


def _checkpoint(rank: int, spec: str, ckpt: str) -> dict:
    import torch.distributed.checkpoint as dcp

    from litegen.config.schema import DataConfig
    from litegen.data.loader import build_loader
    from litegen.train.data_state import LoaderCheckpoint

    loader = build_loader(DataConfig(shards=spec, batch_size=1, shuffle_buffer=3, seed=2), rank, 2)
    keys = []
    for _, batch in zip(range(5), loader):
        keys += [k for k, e in zip(batch["keys"], batch["epochs"]) if e == 0]
    dcp.save({"data": LoaderCheckpoint(loader)}, checkpoint_id=ckpt)
    return {"keys": keys}


def _worker(rank: int, port: int, spec: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    code = 0
    try:
        dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
        result = {"bad": _bad_samples(rank, spec), "rebalance": _rebalance(rank),
                  "checkpoint": _checkpoint(rank, spec, os.path.join(out_dir, "ckpt"))}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    except Exception:
        Path(out_dir, f"rank{rank}.error").write_text(traceback.format_exc())
        code = 1
    # Leave cleanly, then exit hard: gloo's threads can abort an interpreter shutdown.
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    os._exit(code)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    spec = make_corrupt_dataset(root / "corrupt")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, spec, str(root))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    errors = [f.read_text() for f in root.glob("*.error")]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)], spec, root


def test_bad_samples_leave_step_counts_equal(results):
    ranks, _, _ = results
    assert [r["bad"]["steps"] for r in ranks] == [STEPS, STEPS]
    assert sum(sum(r["bad"]["skips"].values()) for r in ranks) >= 3
    epoch0 = ranks[0]["bad"]["keys"] + ranks[1]["bad"]["keys"]
    assert len(epoch0) == len(set(epoch0)) and set(epoch0) <= set(GOOD_KEYS)


def test_rebalance_moves_clips_to_even_attention_cost(results):
    ranks, _, _ = results
    got = [r["rebalance"] for r in ranks]
    assert all(g["clips_match_keys"] and g["text_match"] and g["captions_match"] for g in got)
    assert sorted(got[0]["keys"] + got[1]["keys"]) == sorted([f"k0-{i}" for i in range(4)] + [f"k1-{i}" for i in range(8)])
    costs = [sum(t * t for t in g["tokens"]) for g in got]
    # Before: 2*768^2 + 2*64^2 = 1.19M vs 8*256^2 = 0.52M (1.39x the mean); after: within 5% of it.
    assert max(costs) / (sum(costs) / 2) <= 1.05, costs
    assert all(sum(g["tokens"]) <= 2048 for g in got)


def test_loader_state_saved_by_two_ranks_resumes_on_one(results):
    import torch.distributed.checkpoint as dcp

    from litegen.config.schema import DataConfig
    from litegen.data.loader import build_loader
    from litegen.train.data_state import LoaderCheckpoint
    from data_helpers import epoch_keys

    ranks, spec, root = results
    loader = build_loader(DataConfig(shards=spec, batch_size=1, shuffle_buffer=3, seed=2), 0, 1)
    dcp.load({"data": LoaderCheckpoint(loader)}, checkpoint_id=str(root / "ckpt"))
    assert loader.delivered == 5
    before = ranks[0]["checkpoint"]["keys"] + ranks[1]["checkpoint"]["keys"]
    assert sorted(before + epoch_keys([loader], 0, units_per_epoch=4)) == GOOD_KEYS
