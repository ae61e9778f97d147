"""Ulysses, ring and 2D attention on 2 and 4 gloo ranks vs one-process SDPA on the full sequence.

One spawn per world size runs every layout and case; each rank checks its own chunk of the
output and of the q/k/v gradients against the reference, and counts the bytes it sent. The same
worlds check the other core kinds' parallel versions: joint text+video attention (every layout),
packed clips' variable-length attention (every layout) and the structured grid cores (Ulysses)
against the model's own cores on one process.
"""

import pytest
import torch
import torch.nn.functional as F
from harness import run_ranks

from litegen.parallel.ring import ring_bytes_per_rank
from litegen.parallel.ulysses import ulysses_bytes_per_rank

pytestmark = pytest.mark.slow

B, H, D = 2, 4, 8
LAYOUTS = {2: [("ulysses", 1, 2), ("ring", 2, 1)],
           4: [("ulysses", 1, 4), ("ring", 4, 1), ("2d", 2, 2)]}
# (name, sequence length, mask some keys of sample 1)
CASES = [("odd", 13, False), ("masked", 16, True), ("odd_masked", 11, True)]


def full_inputs(seq: int, masked: bool):
    gen = torch.Generator().manual_seed(seq)
    q, k, v, dout = (torch.randn(B, seq, H, D, generator=gen) for _ in range(4))
    key_valid = torch.ones(B, seq, dtype=torch.bool)
    if masked:
        key_valid[1, seq // 3: seq // 3 + 4] = False  # a hole, so masking is not just "the end"
        key_valid[1, -2:] = False
    return q, k, v, dout, key_valid


def reference(q, k, v, dout, key_valid):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=key_valid[:, None, None, :]).transpose(1, 2)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def sp_case(groups, seq: int, masked: bool):
    """Max |error| of this rank's output and q/k/v gradient chunks against the reference."""
    from litegen.parallel.sequence import SequenceLayout

    q, k, v, dout, key_valid = full_inputs(seq, masked)
    expected = reference(q, k, v, dout, key_valid)
    split = SequenceLayout(seq, groups.sp, groups.sp_rank)
    local = [split.shard(x, 1).clone().requires_grad_() for x in (q, k, v)]
    full_valid = torch.cat([key_valid, torch.zeros(B, split.padded - seq, dtype=torch.bool)], 1)
    out = groups.attend(*local, full_valid)
    out.backward(split.shard(dout, 1))
    got = [out.detach(), *(x.grad for x in local)]
    # Compare real token positions only: rows of padding queries are discarded by design.
    real = split.shard(torch.ones(1, seq, dtype=torch.bool), 1)[0]
    return [(g[:, real] - split.shard(e, 1)[:, real]).abs().max().item() for g, e in zip(got, expected)]


def count_case(groups, seq: int):
    """Bytes this rank sent for one forward and one backward of the attention."""
    from litegen.parallel.comm import count_bytes

    q, k, v, dout, _ = full_inputs(seq, False)
    local = [x[:, groups.sp_rank * seq // groups.sp:][:, :seq // groups.sp].clone().requires_grad_()
             for x in (q, k, v)]
    with count_bytes() as forward:
        out = groups.attend(*local)
    with count_bytes() as backward:
        out.backward(dout[:, :seq // groups.sp])
    return dict(forward), dict(backward)


TEXT = 5  # joint attention: caption tokens in front of the video
GRID = (3, 3, 3)  # grid cores: 27 tokens, padded under 2 and 4 ranks


# (name, video length, hide 3 of sample 1's caption tokens; else text_mask=None)
JOINT_CASES = [("odd_text_masked", 13, True), ("even", 16, False)]


def joint_case(groups, seq: int, text_masked: bool):
    """Joint attention: this rank's video output/grad chunks, the text output and the SP-summed
    text grads vs the model's JointAttentionCore on one process. Each rank's copy of the text
    output gets 1/P of the text gradient, as the ranks' consumers of a whole stream do in a model."""
    import torch.distributed as dist

    from litegen.models.cores import JointAttentionCore
    from litegen.parallel.sequence import SequenceLayout
    from litegen.parallel.sp_cores import joint_attention

    q, k, v, dout, _ = full_inputs(seq, False)
    gen = torch.Generator().manual_seed(7)
    text = [torch.randn(B, TEXT, H, D, generator=gen) for _ in range(4)]  # q, k, v, dout
    text_valid = None
    if text_masked:
        text_valid = torch.ones(B, TEXT, dtype=torch.bool)
        text_valid[1, 2:] = False
    full = [x.clone().requires_grad_() for x in (q, k, v, *text[:3])]
    ref_out, ref_text = JointAttentionCore()(*full, text_valid)
    torch.autograd.backward([ref_out, ref_text], [dout, text[3]])
    split = SequenceLayout(seq, groups.sp, groups.sp_rank)
    local = [split.shard(x, 1).clone().requires_grad_() for x in (q, k, v)]
    text_in = [x.clone().requires_grad_() for x in text[:3]]
    out, text_out = joint_attention(groups, *local, *text_in, text_valid, split.key_valid("cpu"))
    torch.autograd.backward([out, text_out], [split.shard(dout, 1), text[3] / groups.sp])
    real = split.shard(torch.ones(1, seq, dtype=torch.bool), 1)[0]
    errors = [(out.detach() - split.shard(ref_out.detach(), 1))[:, real].abs().max().item(),
              (text_out.detach() - ref_text.detach()).abs().max().item()]
    for got, ref in zip(local, full[:3]):
        errors.append((got.grad - split.shard(ref.grad, 1))[:, real].abs().max().item())
    for got, ref in zip(text_in, full[3:]):
        grad = got.grad.clone()
        dist.all_reduce(grad, group=groups.sp_group)
        errors.append((grad - ref.grad).abs().max().item())
    return errors


def compare_chunks(groups, q, k, v, dout, reference, parallel) -> list[float]:
    """reference(q, k, v) on one process vs parallel(split, *this rank's chunks): max |error| of
    the output and of the q/k/v gradients over this rank's real (unpadded) tokens."""
    from litegen.parallel.sequence import SequenceLayout

    seq = q.shape[1]
    full = [x.clone().requires_grad_() for x in (q, k, v)]
    expected = reference(*full)
    expected.backward(dout)
    split = SequenceLayout(seq, groups.sp, groups.sp_rank)
    groups.layout = split
    local = [split.shard(x, 1).clone().requires_grad_() for x in (q, k, v)]
    out = parallel(split, *local)
    out.backward(split.shard(dout, 1))
    real = split.shard(torch.ones(1, seq, dtype=torch.bool), 1)[0]
    pairs = [(out.detach(), expected.detach())] + [(x.grad, y.grad) for x, y in zip(local, full)]
    return [(got - split.shard(ref, 1))[:, real].abs().max().item() for got, ref in pairs]


def grid_case(groups, core):
    """A structured core under Ulysses: this rank's output and q/k/v grad chunks vs the core."""
    from litegen.parallel.sp_cores import grid_attention

    q, k, v, dout, _ = full_inputs(GRID[0] * GRID[1] * GRID[2], False)
    return compare_chunks(groups, q, k, v, dout, lambda *x: core(*x, grid=GRID),
                          lambda split, *x: grid_attention(groups, core, *x, grid=GRID))


# Packed clips (one sequence, variable-length attention): clip lengths; 13 tokens are padded.
PACKED_CASES = [("three_clips_odd", (5, 7, 1)), ("straddling", (9, 3, 4)), ("long_middle", (2, 11, 3))]


def packed_case(groups, lengths):
    """Self-attention over packed clips (boundaries straddling the SP chunks) vs the model's
    variable-length attention on one process."""
    from litegen.models.attention import Varlen, attention
    from litegen.parallel.packed import with_padding_clip

    q, k, v, dout, _ = (x[:1] for x in full_inputs(sum(lengths), False))
    varlen = Varlen.from_lengths(list(lengths), list(lengths))
    return compare_chunks(groups, q, k, v, dout, lambda *x: attention(*x, varlen=varlen),
                          lambda split, *x: groups.attend_packed(*x, with_padding_clip(varlen, split.padded)))


def grid_cores():
    from litegen.models.cores import FrameAttentionCore, TemporalAttentionCore, WindowAttentionCore

    return {"frame": FrameAttentionCore(), "temporal": TemporalAttentionCore(),
            "window_shifted": WindowAttentionCore((3, 3), shifted=True)}


def worker(world: int):
    import torch.distributed as dist

    from litegen.parallel.dims import ParallelDims
    from litegen.parallel.sequence import SequenceParallelGroups

    results = {}
    for name, ring, ulysses in LAYOUTS[world]:
        dims = ParallelDims(1, 1, ring, ulysses, world)
        dims.build_mesh("cpu")
        groups = SequenceParallelGroups(dims, dist.get_rank())
        for case, seq, masked in CASES:
            results[(name, case)] = sp_case(groups, seq, masked)
        for case, seq, text_masked in JOINT_CASES:
            results[(name, "joint_" + case)] = joint_case(groups, seq, text_masked)
        results[(name, "bytes")] = count_case(groups, 16 * world)
        for case, lengths in PACKED_CASES:
            results[(name, "packed_" + case)] = packed_case(groups, lengths)
        if ring == 1:
            for core_name, core in grid_cores().items():
                results[(name, "grid_" + core_name)] = grid_case(groups, core)
    return results


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def world_results(request):
    return request.param, run_ranks(worker, request.param, request.param)


def test_matches_sdpa_outputs_and_grads(world_results):
    world, ranks = world_results
    for rank, results in enumerate(ranks):
        for name, _, _ in LAYOUTS[world]:
            for case, _, _ in CASES:
                errors = results[(name, case)]
                assert max(errors) <= 1e-5, (name, case, rank, errors)


def test_joint_attention_matches_one_process(world_results):
    world, ranks = world_results
    for rank, results in enumerate(ranks):
        for name, _, _ in LAYOUTS[world]:
            for case, _, _ in JOINT_CASES:
                errors = results[(name, "joint_" + case)]
                assert len(errors) == 8 and max(errors) <= 1e-5, (name, case, rank, errors)


def test_packed_clips_match_one_process_under_every_layout(world_results):
    world, ranks = world_results
    for rank, results in enumerate(ranks):
        for name, _, _ in LAYOUTS[world]:
            for case, _ in PACKED_CASES:
                errors = results[(name, "packed_" + case)]
                assert len(errors) == 4 and max(errors) <= 1e-5, (name, case, rank, errors)


def test_grid_cores_under_ulysses_match_one_process(world_results):
    world, ranks = world_results
    for rank, results in enumerate(ranks):
        for core_name in grid_cores():
            errors = results[("ulysses", "grid_" + core_name)]
            assert len(errors) == 4 and max(errors) <= 1e-5, (core_name, rank, errors)


def test_bytes_match_formula(world_results):
    world, ranks = world_results
    s = 16  # tokens per rank in count_case
    fp32 = 4
    for results in ranks:
        for name, ring, ulysses in LAYOUTS[world]:
            forward, backward = results[(name, "bytes")]
            qkv_block = B * s * H * D * fp32
            if name == "ulysses":  # q, k, v out and the output back; 1/P of each stays local
                assert forward == {"all_to_all": 4 * qkv_block * (world - 1) // world}
                assert backward == {"all_to_all": 4 * qkv_block * (world - 1) // world}
                formula = ulysses_bytes_per_rank(B, s, H, D, world, fp32)
                assert (forward["all_to_all"], backward["all_to_all"]) == (formula["forward"], formula["backward"])
            elif name == "ring":  # K and V travel P-1 hops; backward adds fp32 dK/dV for P hops
                assert forward == {"ring": 2 * qkv_block * (world - 1)}
                assert backward == {"ring": 2 * qkv_block * (world - 1) + 2 * B * s * H * D * 4 * world}
                formula = ring_bytes_per_rank(B, s, H, D, world, fp32)
                assert (forward["ring"], backward["ring"]) == (formula["forward"], formula["backward"])
            else:  # 2D: Ulysses exchange inside, then the ring over U*s tokens of H/U heads
                a2a = 4 * qkv_block * (ulysses - 1) // ulysses
                ring_block = qkv_block  # (U*s tokens) x (H/U heads): same size as the local block
                assert forward == {"all_to_all": a2a, "ring": 2 * ring_block * (ring - 1)}
                assert backward == {"all_to_all": a2a,
                                    "ring": 2 * ring_block * (ring - 1) + 2 * ring_block * ring}
