"""Layout rules without processes: mesh factors, invalid layouts, sequence sharding, LSE merging."""

import pytest
import torch
import torch.nn.functional as F

from litegen.config import ConfigError, ParallelConfig, compose
from litegen.parallel.dims import ParallelDims
from litegen.parallel.distributed import DistInfo
from litegen.parallel.ring import block_backward, block_forward, key_bias, merge
from litegen.parallel.sequence import SequenceLayout


def dims(world: int, heads: int = 12, **kw) -> ParallelDims:
    return ParallelDims.from_config(ParallelConfig(**kw), world, num_heads=heads)


def test_rest_of_world_and_ranks():
    d = dims(16, dp_replicate=2, sp_ring=2, sp_ulysses=2)
    assert (d.dp_replicate, d.dp_shard, d.sp_ring, d.sp_ulysses) == (2, 2, 2, 2)
    assert (d.dp, d.sp) == (4, 4)
    # Row-major mesh: the 4 ranks of one SP group are neighbours and share a dp rank.
    assert [d.dp_rank(r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [d.sp_rank(r) for r in range(6)] == [0, 1, 2, 3, 0, 1]


def test_heads_that_do_not_split_suggest_a_2d_layout():
    with pytest.raises(ConfigError) as err:
        dims(8, heads=12, sp_ulysses=8)
    msg = str(err.value)
    assert "12 heads cannot split 8 ways" in msg and "use sp_ulysses=4, sp_ring=2" in msg
    assert "dp_replicate(1) x dp_shard(1) x sp_ring(1) x sp_ulysses(8)" in msg
    dims(8, heads=12, sp_ulysses=4, sp_ring=2)  # the suggestion is valid


def test_product_mismatch_names_every_factor_and_a_fix():
    with pytest.raises(ConfigError) as err:
        dims(8, dp_replicate=2, dp_shard=3, sp_ulysses=2)
    msg = str(err.value)
    assert "dp_replicate(2) x dp_shard(3) x sp_ring(1) x sp_ulysses(2) = 12" in msg
    assert "world size is 8" in msg and "parallel.dp_shard=2" in msg
    with pytest.raises(ConfigError, match="must divide the world size 6"):
        dims(6, dp_replicate=4)


def test_invalid_layout_fails_before_any_work(tmp_path):
    from litegen.train.setup import build_run

    cfg = compose(["experiment=tiny", f"data.shards={tmp_path}/none/*.tar",
                   f"data.generate_dir={tmp_path}/gen", "parallel.sp_ulysses=3"])
    with pytest.raises(ConfigError, match="4 heads cannot split 3 ways"):
        build_run(cfg, tmp_path / "run", DistInfo(0, 6, 0, torch.device("cpu")))
    assert not (tmp_path / "gen").exists()  # no dataset rendered, nothing built


def test_config_rejects_unknown_backend_and_hsdp_without_fsdp():
    with pytest.raises(ConfigError, match="parallel.backend"):
        compose(["parallel.backend=megatron"])
    with pytest.raises(ConfigError, match="parallel.dp_replicate: replicate groups"):
        compose(["parallel=ddp", "parallel.dp_replicate=2"])
    with pytest.raises(ConfigError, match="parallel.zero_stage"):
        compose(["parallel=deepspeed", "parallel.zero_stage=4"])
    assert compose([]).parallel.backend == "fsdp2"
    usp = compose(["parallel=usp"]).parallel
    assert (usp.backend, usp.sp_ulysses, usp.sp_ring) == ("fsdp2", 4, 2)


def test_sequence_layout_pads_and_shards():
    x = torch.arange(2 * 7).reshape(2, 7)
    chunks = [SequenceLayout(7, 3, r).shard(x, 1) for r in range(3)]
    assert all(c.shape == (2, 3) for c in chunks)
    assert torch.equal(torch.cat(chunks, 1)[:, :7], x)
    assert torch.equal(chunks[2][:, 1:], torch.zeros(2, 2, dtype=x.dtype))  # padding at the end
    assert SequenceLayout(7, 3, 0).key_valid("cpu").tolist() == [[True] * 7 + [False] * 2]
    assert SequenceLayout(6, 3, 0).key_valid("cpu") is None


def test_blockwise_kernels_merge_to_full_attention():
    """The ring's per-block kernels + LSE merge equal SDPA; block backward with the global
    out/lse gives the full gradients (the identities ring attention relies on)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(2, 3, 10, 8, generator=gen) for _ in range(4))
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 5:] = False  # second block fully masked for sample 1: weight 0, not NaN
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=valid[:, None, None, :])
    ref.backward(dout)
    out = lse = None
    blocks = [slice(0, 5), slice(5, 10)]
    for b in blocks:
        out, lse = merge(out, lse, *block_forward(q, k[:, :, b], v[:, :, b], key_bias(valid[:, b], q.dtype)))
    torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)
    grads = [block_backward(dout, q, k[:, :, b], v[:, :, b], key_bias(valid[:, b], q.dtype), out, lse)
             for b in blocks]
    torch.testing.assert_close(sum(g[0] for g in grads), qr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([g[1] for g in grads], 2), kr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([g[2] for g in grads], 2), vr.grad, atol=1e-5, rtol=1e-5)
