"""Parallelism on CPU, 2 gloo ranks, in one run: memory and traffic of FSDP2 vs DDP, Ulysses vs
ring traffic, and our Ulysses attention vs DeepSpeed's DistributedAttention.

1. Per-rank bytes of parameters + gradients + AdamW state after one real training step of the
   tiny DiT, read from the tensors each rank holds (target: FSDP2 <= 0.55x DDP).
2. Bytes each backend's collectives carry per training step, from torch.profiler's record of every
   gloo collective (DDP's C++ reducer included), converted to bytes each rank sends with ring
   algorithms: all-reduce 2(P-1)/P, all-gather and reduce-scatter (P-1)/P of the full buffer
   (expected: FSDP2 with reshard_after_forward ~ 1.5x DDP).
3. Bytes sent per attention call (forward, backward) by Ulysses and by ring attention at the same
   sequence length, counted by litegen.parallel.comm.
4. litegen's Ulysses attention vs deepspeed.sequence.layer.DistributedAttention on identical
   inputs, same local SDPA: max output difference and the median forward+backward time ratio
   over interleaved repetitions (target: ratio <= 1.0).

    python benchmarks/parallel.py [--reps 21] [--tokens 2048]
"""

import argparse
import json
import os
import socket
import statistics
from collections import Counter
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
_GLOO_OPS = {"gloo:all_reduce": "all_reduce", "gloo:all_gather": "all_gather",
             "gloo:reduce_scatter": "reduce_scatter", "gloo:broadcast": "broadcast"}


# ---- 1 + 2: FSDP2 vs DDP -------------------------------------------------------------------------


def build_backend(backend: str):
    from litegen.config import compose
    from litegen.models import build_model
    from litegen.objectives import build_objective
    from litegen.parallel.distributed import init_distributed
    from litegen.parallel.parallelize import build_steps, parallelize
    from litegen.train.setup import build_dims, build_optimizer

    cfg = compose(["experiment=tiny", f"parallel={backend}", "logging.wandb_mode=disabled"])
    info = init_distributed()
    dims = build_dims(cfg, info)
    with torch.device("meta"):
        net = build_model(cfg.model)
    model = parallelize(net, cfg, dims, info.rank, info.device)
    optimizer = build_optimizer(model, cfg)
    return cfg, model, optimizer, build_steps(model, optimizer, cfg, None), build_objective(cfg.objective)


def one_step(cfg, model, steps, objective, step: int) -> None:
    from litegen.objectives import Cond

    gen = torch.Generator().manual_seed(step * WORLD + dist.get_rank())
    latents = torch.randn(cfg.data.batch_size, 12, 8, 16, 16, generator=gen)
    cond = Cond(torch.randn(cfg.data.batch_size, 16, cfg.model.text_dim, generator=gen),
                torch.ones(cfg.data.batch_size, 16, dtype=torch.bool))
    steps.zero_grad()
    steps.backward(objective.loss(model, latents, cond, gen).loss)
    steps.step(cfg.optim.grad_clip_norm)


def local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def state_bytes(model, optimizer) -> dict[str, int]:
    params = list(model.parameters())
    optim = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values()
                if torch.is_tensor(v))
    return {"params": sum(local_bytes(p) for p in params),
            "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optimizer": optim}


def _numel(shape) -> int:
    numel = 1
    for n in shape:
        numel *= n
    return numel


def collective_bytes(prof) -> dict[str, int]:
    """Bytes this rank sends per collective kind, from the profiler's record of gloo's work.

    gloo events carry the tensor each rank contributes. Costs are those of ring algorithms:
    all-reduce 2(P-1)/P n, all-gather (P-1) x own shard, reduce-scatter (P-1)/P n, broadcast
    (P-1)/P n. gloo has no native reduce-scatter: FSDP2's reduce-scatters run as all-reduces of
    the full buffer there; they are matched to the c10d reduce-scatter calls by size and charged
    as the reduce-scatter they stand for (what NCCL would send).
    """
    events = list(prof.events())
    pending_rs = Counter(_numel(e.input_shapes[1]) for e in events
                         if e.name == "c10d::_reduce_scatter_base_")
    factor = {"all_reduce": 2 * (WORLD - 1) / WORLD, "all_gather": WORLD - 1,
              "reduce_scatter": (WORLD - 1) / WORLD, "broadcast": (WORLD - 1) / WORLD}
    sent: Counter = Counter()
    for e in events:
        kind = _GLOO_OPS.get(e.name)
        if kind is None or not e.input_shapes or not e.input_shapes[0]:
            continue
        numel = _numel(e.input_shapes[0])
        if kind == "all_reduce" and pending_rs[numel] > 0:
            pending_rs[numel] -= 1
            kind = "reduce_scatter"
        sent[kind] += int(4 * numel * factor[kind])  # fp32 everywhere in this benchmark
    return dict(sent)


def measure_backend(backend: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    cfg, model, optimizer, steps, objective = build_backend(backend)
    one_step(cfg, model, steps, objective, 0)  # warm-up; optimizer state now exists
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        one_step(cfg, model, steps, objective, 1)
    return {"bytes": state_bytes(model, optimizer), "comm": collective_bytes(prof)}


# ---- 3 + 4: sequence-parallel attention ------------------------------------------------------------


def sp_groups(ring: int, ulysses: int):
    from litegen.parallel.dims import ParallelDims
    from litegen.parallel.sequence import SequenceParallelGroups

    dims = ParallelDims(1, 1, ring, ulysses, WORLD)
    dims.build_mesh("cpu")
    return SequenceParallelGroups(dims, dist.get_rank())


def local_qkv(tokens: int, heads: int, head_dim: int, batch: int = 1):
    gen = torch.Generator().manual_seed(7 + dist.get_rank())
    return [torch.randn(batch, tokens // WORLD, heads, head_dim, generator=gen).requires_grad_()
            for _ in range(3)]


def sp_traffic(tokens: int, heads: int, head_dim: int) -> dict:
    from litegen.parallel.comm import count_bytes

    result = {}
    for name, ring, ulysses in (("ulysses", 1, WORLD), ("ring", WORLD, 1)):
        groups = sp_groups(ring, ulysses)
        q, k, v = local_qkv(tokens, heads, head_dim)
        with count_bytes() as forward:
            out = groups.attend(q, k, v)
        with count_bytes() as backward:
            out.sum().backward()
        result[name] = {"forward": sum(forward.values()), "backward": sum(backward.values())}
    return result


def _sdpa_bshd(q, k, v, *args, **kwargs):
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                           v.transpose(1, 2))
    return out.transpose(1, 2)


def timed_fwd_bwd(fn, qkv) -> tuple[float, torch.Tensor]:
    for t in qkv:
        t.grad = None
    dist.barrier()
    start = time.perf_counter()
    out = fn(*qkv)
    out.sum().backward()
    dist.barrier()
    return time.perf_counter() - start, out.detach()


def _exchange_only(q, k, v, *args, **kwargs):
    return q + k + v  # a trivial "attention": what is left to time is the exchange itself


def compare_with_deepspeed(local, tokens: int, heads: int, head_dim: int, reps: int) -> dict:
    """Max output difference and median fwd+bwd times of both Ulysses layers around `local`."""
    from deepspeed.sequence.layer import DistributedAttention

    from litegen.parallel.ulysses import ulysses_attention

    group = sp_groups(1, WORLD).ulysses_group
    ds_attn = DistributedAttention(local, group, scatter_idx=2, gather_idx=1)
    ours = lambda q, k, v: ulysses_attention(q, k, v, group, lambda q, k, v, _: local(q, k, v))
    theirs = lambda q, k, v: ds_attn(q, k, v, 0)
    qkv = local_qkv(tokens, heads, head_dim, batch=2)
    times = {"litegen": [], "deepspeed": []}
    for rep in range(reps + 1):  # interleaved, alternating who goes first; rep 0 is warm-up
        order = [("litegen", ours), ("deepspeed", theirs)][:: 1 if rep % 2 else -1]
        outs = {}
        for name, fn in order:
            seconds, outs[name] = timed_fwd_bwd(fn, qkv)
            if rep:
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"max_abs_diff": (outs["litegen"] - outs["deepspeed"]).abs().max().item(),
            "median_s": med, "ratio": med["litegen"] / med["deepspeed"]}


def ulysses_vs_deepspeed(tokens: int, heads: int, head_dim: int, reps: int) -> dict:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")  # DeepSpeed's comm layer wraps our group
    return {"attention": compare_with_deepspeed(_sdpa_bshd, tokens, heads, head_dim, reps),
            "exchange_only": compare_with_deepspeed(_exchange_only, tokens, heads, head_dim, reps)}


# ---- driver ------------------------------------------------------------------------------------------


def worker(rank: int, port: int, args, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    results = {"ddp": measure_backend("ddp"), "fsdp2": measure_backend("fsdp2"),
               "sp_bytes": sp_traffic(args.tokens, 8, 64),
               "ulysses_vs_deepspeed": ulysses_vs_deepspeed(args.tokens, 8, 64, args.reps)}
    if rank == 0:
        Path(out_path).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # see notes/cpu-stack.md: interpreter teardown of gloo threads can abort


def report(r: dict, args) -> list[str]:
    ddp, fsdp = (sum(r[b]["bytes"].values()) for b in ("ddp", "fsdp2"))
    ddp_comm, fsdp_comm = (sum(r[b]["comm"].values()) for b in ("ddp", "fsdp2"))
    u, g, cmp = r["sp_bytes"]["ulysses"], r["sp_bytes"]["ring"], r["ulysses_vs_deepspeed"]
    return [
        f"tiny DiT, world {WORLD}, per rank after one step: DDP {ddp:,} B {r['ddp']['bytes']}, "
        f"FSDP2 {fsdp:,} B {r['fsdp2']['bytes']}: FSDP2/DDP = {fsdp / ddp:.3f} (target <= 0.55)",
        f"collective bytes sent per rank per step: DDP {ddp_comm:,} {r['ddp']['comm']}, "
        f"FSDP2 {fsdp_comm:,} {r['fsdp2']['comm']}: FSDP2/DDP = {fsdp_comm / ddp_comm:.3f} (expected ~1.5)",
        f"attention bytes sent per rank, {args.tokens} tokens, 8 heads x 64, fp32: Ulysses forward "
        f"{u['forward']:,} backward {u['backward']:,}; ring forward {g['forward']:,} backward {g['backward']:,}",
        *(f"Ulysses vs DeepSpeed DistributedAttention, {what} ({args.tokens} tokens, batch 2, "
          f"8 heads x 64, fwd+bwd, median of {args.reps}): max |diff| {c['max_abs_diff']:.2e}, "
          f"litegen {c['median_s']['litegen'] * 1e3:.1f} ms, deepspeed {c['median_s']['deepspeed'] * 1e3:.1f} ms, "
          f"ratio {c['ratio']:.3f} (target <= 1.0)" for what, c in cmp.items()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_path = os.path.join(tempfile.mkdtemp(prefix="litegen-parallel-bench-"), "results.json")
    mp.spawn(worker, args=(port, args, out_path), nprocs=WORLD)
    results = json.loads(Path(out_path).read_text())
    print("\n".join(report(results, args)))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
