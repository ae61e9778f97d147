"""Kill -9 a rank in the middle of checkpoint saves, over and over, and check every restart.

Run as a script (tests/dist/test_kill_during_save.py does): `python kill_during_save.py DIR
TRIALS SEED`. Each trial forks a 2-rank gloo job (fork keeps a trial cheap: torch is imported
once, here) that loads the latest complete checkpoint of DIR, checks it holds exactly the state
of its step, then saves step after step (FSDP2-sharded weights and Adam state whose values encode
the step), alternating sync and async saves by trial. Once both ranks are saving, one rank is
killed with SIGKILL at a random moment and, like torchrun tearing down the job, the other one
right after. A last, unkilled trial verifies the final state. Prints a JSON summary.
"""

import json
import os
import random
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

# Imported once here, not in each forked rank: a trial then costs little more than the kill.
from litegen.parallel.distributed import DistInfo
from litegen.train.checkpoint import Checkpointer, ModelOptimState

WORLD = 2
WIDTH = 256  # 4 layers of 256x256 (+ Adam state): ~3 MB per checkpoint, a few ms to write


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _value(step: int, index: int) -> float:
    return step + index / 1000.0


def _build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(4)])
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, WIDTH)).sum().backward()
    opt.step()  # creates the Adam state that every checkpoint carries
    return model, opt


@torch.no_grad()
def _set_state(model, opt, step: int) -> None:
    """Weights and Adam moments whose every element says which step they belong to."""
    for index, param in enumerate(model.parameters()):
        param.to_local().fill_(_value(step, index))
        state = opt.state[param]
        state["exp_avg"].to_local().fill_(-_value(step, index))
        state["exp_avg_sq"].to_local().fill_(_value(step, index) * 2)


def _check_state(model, opt, step: int) -> bool:
    for index, param in enumerate(model.parameters()):
        state = opt.state[param]
        expected = [(param, _value(step, index)), (state["exp_avg"], -_value(step, index)),
                    (state["exp_avg_sq"], _value(step, index) * 2)]
        if not all(torch.all(t.to_local() == v) for t, v in expected):
            return False
    return True


class Counter:
    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = int(state["step"])


def rank_main(rank: int, port: int, root: Path, async_save: bool, log: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    model, opt = _build()
    counter = Counter()
    state = {"train": ModelOptimState(model, opt), "trainer": counter}
    ckpt = Checkpointer(root, keep_last_k=2, dist_info=DistInfo(rank, WORLD, rank, torch.device("cpu")),
                        async_save=async_save)
    latest = ckpt.latest()
    record = {"rank": rank, "loaded": None, "ok": True}
    if latest is not None:
        ckpt.load(latest[1], state)
        record = {"rank": rank, "loaded": latest[0],
                  "ok": counter.step == latest[0] and _check_state(model, opt, latest[0])}
    with open(log, "a") as f:
        f.write(json.dumps({"event": "loaded", **record}) + "\n")
    dist.barrier()
    (root / f".saving-rank{rank}").touch()
    while True:  # until killed (the final trial stops after one save)
        counter.step += 1
        _set_state(model, opt, counter.step)
        ckpt.save(counter.step, state)
        if rank == 0 and ckpt.saved_step is not None:
            with open(log, "a") as f:  # a save that returned complete must never be lost
                f.write(json.dumps({"event": "confirmed", "step": ckpt.saved_step}) + "\n")
        if os.environ.get("KILL_TRIAL_FINAL"):
            ckpt.wait()
            dist.barrier()
            dist.destroy_process_group()
            os._exit(0)


def spawn(rank: int, *args) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            rank_main(rank, *args)
        except BaseException as exc:  # a killed peer makes the other rank's collectives fail
            print(f"rank {rank}: {exc!r}", file=sys.stderr)
            code = 1
        os._exit(code)
    return pid


def trial(root: Path, index: int, rng: random.Random, log: Path, final: bool) -> dict:
    async_save = index % 2 == 1
    for marker in root.glob(".saving-rank*"):
        marker.unlink()
    if final:
        os.environ["KILL_TRIAL_FINAL"] = "1"
    port = _free_port()
    pids = [spawn(rank, port, root, async_save, log) for rank in range(WORLD)]
    info = {"trial": index, "async": async_save}
    if not final:
        deadline = time.monotonic() + 60
        while len(list(root.glob(".saving-rank*"))) < WORLD and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        victim = rng.randrange(WORLD)
        os.kill(pids[victim], signal.SIGKILL)
        time.sleep(0.05)  # the survivor runs on briefly, as under torchrun before it tears down
        for pid in pids:
            if pid != pids[victim]:
                os.kill(pid, signal.SIGKILL)
        info["victim"] = victim
    codes = [os.waitpid(pid, 0)[1] for pid in pids]
    info["clean_exit"] = all(c == 0 for c in codes)
    info["partial_dirs"] = sorted(p.name for p in root.glob("step-*") if not (p / "COMPLETE").exists())
    return info


def main() -> None:
    root, trials, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    root.mkdir(parents=True, exist_ok=True)
    log = root / "events.jsonl"
    rng = random.Random(seed)
    infos = [trial(root, i, rng, log, final=False) for i in range(trials)]
    infos.append(trial(root, trials, rng, log, final=True))
    events = [json.loads(line) for line in log.read_text().splitlines()]
    print(json.dumps({"trials": infos, "events": events}))


if __name__ == "__main__":
    main()
