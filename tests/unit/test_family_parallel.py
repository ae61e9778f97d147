"""Every family's sequence-parallel seam and what SP layouts its attention kinds allow, without
processes; the trainer's per-micro-batch strata for v-prediction. (Multi-process parity of every
family lives in tests/dist/test_family_parity.py.)"""

import inspect

import pytest
import torch

from litegen.config import ConfigError, compose
from litegen.models import FAMILIES, model_plan
from litegen.parallel.dims import ParallelDims
from litegen.parallel.distributed import DistInfo
from litegen.parallel.sequence import SequenceLayout, check_sequence_parallel, sequence_parallel_problems
from litegen.train.setup import build_run
from litegen.train.trainer import train_step
from test_families import inputs, tiny_cfg, tiny_model

# (ring, ulysses) layouts of 4 SP ranks; 4 divides every tiny and full-size family's heads.
SP_LAYOUTS = {"ulysses": (1, 4), "ring": (4, 1), "2d": (2, 2)}
ULYSSES_ONLY = {"vchitect", "worlddreamer"}  # their self-attention is structured ('grid' cores)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_runs_through_the_token_stack_seam(family):
    """The seam names real arguments, and forward's whole output comes out of it (so a wrapper
    installed by litegen/parallel sees every token and produces the result)."""
    model, spec = tiny_model(family), model_plan(tiny_cfg(family)).token_stack
    method = getattr(model, spec.method)
    params = inspect.signature(method).parameters
    named = [name for name, _ in spec.sequences] + [spec.output, spec.attends] + [spec.groups] * bool(spec.groups)
    assert all(name in params for name in named), (family, named, list(params))
    args = inputs(tiny_cfg(family), grid=(2, 2, 2))
    expected = model(*args)
    seen = []

    def doubled(*a, **kw):
        out = method(*a, **kw)
        seen.append(out.shape)
        return 2 * out

    setattr(model, spec.method, doubled)
    torch.testing.assert_close(model(*args), 2 * expected)
    assert len(seen) == 1 and seen[0][1] == 8  # 2x2x2 tokens (patches), one call


@pytest.mark.parametrize("layout", sorted(SP_LAYOUTS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sp_layouts_allowed_by_attention_kind(family, layout):
    ring, ulysses = SP_LAYOUTS[layout]
    dims = ParallelDims(1, 1, ring, ulysses, 4)
    plan = model_plan(tiny_cfg(family))
    problems = sequence_parallel_problems(plan, dims, family, num_heads=24)
    if family in ULYSSES_ONLY and ring > 1:
        [(field, msg)] = problems
        assert field == "parallel.sp_ring"
        assert f"model.family={family}" in msg and "'grid' attention cores" in msg
        assert "Ulysses only" in msg and "use parallel.sp_ring=1 parallel.sp_ulysses=4" in msg
        with pytest.raises(ConfigError, match="Ulysses only"):
            check_sequence_parallel(plan, dims, family)
    else:
        assert problems == []


def test_grid_refusal_suggests_a_ulysses_degree_that_divides_the_heads():
    plan = FAMILIES["vchitect"].plan  # vchitect_2b: 24 heads
    [(_, msg)] = sequence_parallel_problems(plan, ParallelDims(1, 1, 2, 8, 16), "vchitect", num_heads=24)
    assert "use parallel.sp_ring=1 parallel.sp_ulysses=8" in msg


def test_a_grouped_plan_without_group_sharding_is_refused():
    from dataclasses import replace

    from litegen.models.plan import TokenStack

    plan = replace(model_plan(tiny_cfg("snapvideo")), token_stack=TokenStack())
    [(field, msg)] = sequence_parallel_problems(plan, ParallelDims(1, 1, 1, 2, 2), "snapvideo")
    assert field == "parallel" and "'grouped' attention cores (read.core, write.core)" in msg


def test_layout_in_whole_groups():
    """3 FIT groups of 9 patches on 2 ranks: 2 groups each, the last one padding."""
    layout = SequenceLayout(27, 2, 1, unit=9)
    assert (layout.padded, layout.chunk) == (36, 18)
    x = torch.arange(27.0)[None, :, None]
    assert layout.shard(x, 1)[0, :, 0].tolist() == list(range(18, 27)) + [0.0] * 9
    assert int(layout.key_valid("cpu").sum()) == 27
    assert SequenceLayout(36, 2, 0, unit=9).key_valid("cpu") is None


def test_v_prediction_strata_follow_the_global_micro_batch(tiny_shards, tmp_path):
    """One process accumulating 2 micro-batches draws micro-batch i's timesteps in [i/2, (i+1)/2):
    what 2 data-parallel ranks with one micro-batch each draw (the dist parity test checks that)."""
    cfg = compose(["experiment=cogvideox_tiny", f"data.shards={tiny_shards}", "data.generate_if_missing=false",
                   "logging.wandb_mode=disabled", "train.grad_accum_steps=2", "data.batch_size=4"])
    run = build_run(cfg, tmp_path, DistInfo(0, 1, 0, torch.device("cpu")))
    strata, times, loss = [], [], run.objective.loss

    def network(x, t, *rest):  # what the network is called with
        times.append(t)
        return run.model(x, t, *rest)

    def recording(model, latents, cond, generator, stratum=(0, 1)):
        strata.append(stratum)
        return loss(network, latents, cond, generator, stratum=stratum)

    run.objective.loss = recording
    train_step(run, iter(run.loader))
    assert strata == [(0, 2), (1, 2)]
    assert float(times[0].max()) < 0.5 <= float(times[1].min()) and len(times[0]) == 4
