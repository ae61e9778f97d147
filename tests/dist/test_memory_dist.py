"""Checkpointing and offload change nothing numerically under FSDP2 and Ulysses on 2 gloo ranks.

One spawn runs every layout x memory case: each rank builds the tiny model through the real
`parallelize` (SP, then checkpointing/offload, then FSDP2), runs one fp32 forward/backward on the
same batch, and compares its gradient shards with the same layout's run without checkpointing or
offload using torch.equal. The offloader's counters come back too, to show offload really ran.
"""

import pytest
import torch
from harness import run_ranks

pytestmark = pytest.mark.slow

LAYOUTS = {
    "fsdp2": ["parallel=fsdp2"],
    "ulysses2": ["parallel=fsdp2", "parallel.sp_ulysses=2"],
}
OFFLOAD = ["parallel.offload.enabled=true"]
CASES = {
    "none": [],
    "full": ["parallel.activation_checkpointing=full"],
    "selective_half_matmuls": ["parallel.activation_checkpointing=selective", "parallel.ac_ratio=0.5",
                               "parallel.ac_policy=save_matmuls"],
    "selective_attention": ["parallel.activation_checkpointing=selective", "parallel.ac_policy=save_attention"],
    "offload": OFFLOAD,
    "full_offload": ["parallel.activation_checkpointing=full", *OFFLOAD],
    "selective_offload_half": ["parallel.activation_checkpointing=selective", "parallel.ac_ratio=0.5",
                               *OFFLOAD, "parallel.offload.ratio=0.5", "parallel.offload.prefetch_blocks=0"],
}


def inputs(cfg):
    """The same batch on every rank (SP ranks must see the same clip; FSDP ranks may)."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, cfg.in_channels, 3, 6, 10, generator=gen)  # 45 tokens: padded under SP
    context = torch.randn(2, 5, cfg.text_dim, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return latents, torch.rand(2, generator=gen), context, mask


def one_case(overrides: list[str]) -> tuple[float, dict, dict]:
    """(loss, local gradient shards, offloader counters) of one forward/backward."""
    import torch.distributed as dist

    from litegen.config import compose
    from litegen.models import build_model
    from litegen.parallel.dims import ParallelDims
    from litegen.parallel.parallelize import parallelize

    cfg = compose(["experiment=tiny", *overrides])
    dims = ParallelDims.from_config(cfg.parallel, dist.get_world_size(), cfg.model.num_heads)
    dims.build_mesh("cpu")
    with torch.device("meta"):
        net = build_model(cfg.model)
    net = parallelize(net, cfg, dims, dist.get_rank(), torch.device("cpu"))
    loss = (net(*inputs(cfg.model)).float() ** 2).mean()
    loss.backward()
    grads = {n: getattr(p.grad, "_local_tensor", p.grad).clone() for n, p in net.named_parameters()}
    offloader = getattr(net, "activation_memory", (None, None))[1]
    return loss.item(), grads, offloader.state_dict() if offloader is not None else {}


def memory_worker() -> dict:
    torch.set_num_threads(1)
    results = {}
    for layout, parallel in LAYOUTS.items():
        loss0, grads0, _ = one_case(parallel)
        for case, extra in CASES.items():
            loss, grads, counters = one_case(parallel + extra)
            different = sorted(n for n in grads0 if not torch.equal(grads[n], grads0[n]))
            results[layout, case] = {"loss_equal": loss == loss0, "different": different,
                                     "params": len(grads), "counters": counters}
    return results


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(memory_worker, 2)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gradients_identical_on_two_ranks(layout, case, ranks):
    for rank, results in enumerate(ranks):
        got = results[layout, case]
        assert got["params"] > 0
        assert got["loss_equal"], (rank, layout, case)
        assert not got["different"], f"rank {rank} {layout} {case}: gradients differ for {got['different'][:5]}"
        counters = got["counters"]
        if "offload" in case:  # offload really moved bytes both ways, and nothing more came back
            assert counters["bytes_to_host"] > 0, (rank, layout, case, counters)
            assert 0 < counters["bytes_to_device"] <= counters["bytes_to_host"], (rank, layout, case, counters)
        else:
            assert counters == {}, (rank, layout, case, counters)
