"""Packed clips: varlen attention equals per-clip attention, the packed model and loss equal per-clip
runs, and the packer fills its budget while steering every pack to the same attention cost."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import litegen.models.attention as attention_mod
from litegen.config import RectifiedFlowConfig
from litegen.config.model import WanConfig
from litegen.data.balance import balance_clips
from litegen.data.packing import choose_pack, first_fit_pack, pack_cost, ready_bucket
from litegen.models import build_model
from litegen.models.attention import Varlen, attention, attention_backend
from litegen.models.packed import pack_clips, unpack_clips
from litegen.objectives import Cond, RectifiedFlow

SHAPES = [(2, 4, 6), (1, 2, 2), (3, 4, 4)]  # latent (T, H, W) of three clips of different sizes
TEXT_LENS = [5, 2, 7]  # real caption tokens of each (padded to 8)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("backend", ["sdpa_mask", "sdpa_loop"])
def test_varlen_attention_equals_each_clip_alone(monkeypatch, backend):
    monkeypatch.setattr(attention_mod, "_MASK_WASTE", 100 if backend == "sdpa_mask" else 1)
    gen = torch.Generator().manual_seed(0)
    q_lens, k_lens = [7, 1, 12], [5, 9, 2]  # cross-attention-like: different query and key lengths
    q = torch.randn(1, sum(q_lens), 4, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, sum(k_lens), 4, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, sum(k_lens), 4, 16, generator=gen, requires_grad=True)
    varlen = Varlen.from_lengths(q_lens, k_lens)
    assert attention_backend(q, k, v, varlen=varlen) == backend
    packed = attention(q, k, v, varlen=varlen)
    alone = torch.cat([sdpa(qi, ki, vi) for qi, ki, vi in
                       zip(q.split(q_lens, 1), k.split(k_lens, 1), v.split(k_lens, 1))], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    # Gradients too: no key of another clip leaks into any query.
    grads = torch.autograd.grad(packed.square().sum(), (q, k, v))
    want = torch.autograd.grad(alone.square().sum(), (q, k, v))
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_varlen_dispatch_picks_flash_varlen_on_cuda_half(monkeypatch):
    varlen = Varlen.from_lengths([4, 4], [4, 4])
    cuda_bf16 = torch.empty(1, 8, 2, 64, device="meta", dtype=torch.bfloat16)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: self.device.type == "meta"))
    monkeypatch.setattr(attention_mod, "_flash_attn_varlen_func", lambda: (lambda *a, **kw: None))
    assert attention_backend(cuda_bf16, cuda_bf16, cuda_bf16, varlen=varlen) == "flash_varlen"
    monkeypatch.setattr(attention_mod, "_flash_attn_varlen_func", lambda: None)
    assert attention_backend(cuda_bf16, cuda_bf16, cuda_bf16, varlen=varlen) == "sdpa_mask"  # 2x waste
    many = Varlen.from_lengths([1] * 8, [1] * 8)
    assert attention_backend(cuda_bf16, cuda_bf16, cuda_bf16, varlen=many) == "sdpa_loop"  # 8x waste


def tiny_model() -> torch.nn.Module:
    cfg = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, in_channels=12,
                    out_channels=12, text_dim=16, patch_size=[1, 2, 2])
    model = build_model(cfg)
    model.init_weights(0)
    with torch.no_grad():  # a live head (the zero init predicts 0 everywhere)
        model.head.head.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    return model


def clips_and_captions():
    gen = torch.Generator().manual_seed(3)
    latents = [torch.randn(12, *shape, generator=gen) for shape in SHAPES]
    context = torch.randn(len(SHAPES), 8, 16, generator=gen)
    mask = torch.arange(8)[None, :] < torch.tensor(TEXT_LENS)[:, None]
    return latents, Cond(context, mask)


def test_pack_unpack_round_trip_and_layout():
    latents, _ = clips_and_captions()
    packed = pack_clips(latents, (1, 2, 2))
    assert packed.layout.lengths == [2 * 2 * 3, 1 * 1 * 1, 3 * 2 * 2]
    assert packed.layout.segment_ids.tolist() == [0] * 12 + [1] + [2] * 12
    assert packed.layout.positions[12].tolist() == [0, 0, 0]  # every clip's positions start at 0
    for got, want in zip(unpack_clips(packed.tokens, packed.layout, (1, 2, 2)), latents):
        assert torch.equal(got, want)


def test_packed_forward_equals_each_clip_alone():
    model = tiny_model()
    latents, cond = clips_and_captions()
    t = torch.tensor([0.2, 0.9, 0.5])
    packed = pack_clips(latents, (1, 2, 2))
    out = model(packed.tokens, t, cond.context, cond.context_mask, layout=packed.layout)
    for i, (got, x) in enumerate(zip(unpack_clips(out, packed.layout, (1, 2, 2)), latents)):
        alone = model(x[None], t[i:i + 1], cond.context[i:i + 1], cond.context_mask[i:i + 1])[0]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_packed_loss_is_the_mean_of_per_clip_losses():
    model = tiny_model()
    latents, cond = clips_and_captions()
    packed = pack_clips(latents, (1, 2, 2))
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(packed.tokens.shape, generator=gen)
    t = torch.rand(len(latents), generator=gen)
    loss = RectifiedFlow(RectifiedFlowConfig()).packed_losses(model, packed, noise, t, cond).mean()
    per_clip = []
    for i, (x0, eps) in enumerate(zip(latents, unpack_clips(noise, packed.layout, (1, 2, 2)))):
        x_t = (1 - t[i]) * x0 + t[i] * eps
        pred = model(x_t[None], t[i:i + 1], cond.context[i:i + 1], cond.context_mask[i:i + 1])
        per_clip.append(F.mse_loss(pred[0], eps - x0))
    torch.testing.assert_close(loss, torch.stack(per_clip).mean(), atol=1e-5, rtol=1e-5)
    # The objective's entry point takes packed clips too and backpropagates.
    out = RectifiedFlow(RectifiedFlowConfig()).loss(model, packed, cond, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert model.patch_embedding.weight.grad is not None and torch.isfinite(out.loss)


# ---- the packer ---------------------------------------------------------------------------------

def test_choose_pack_keeps_budget_takes_oldest_and_steers_cost():
    rng = np.random.default_rng(0)
    pool = list(rng.choice([256, 512, 768, 1024, 1536], size=64))
    budget = 4096
    chosen = choose_pack(pool, budget)
    tokens, cost = pack_cost([pool[i] for i in chosen])
    assert chosen[0] == 0 and len(set(chosen)) == len(chosen) and tokens <= budget
    assert tokens >= 0.98 * budget
    target = budget * sum(s * s for s in pool) / sum(pool)
    assert abs(cost / target - 1) < 0.1
    with pytest.raises(ValueError, match="does not fit"):
        choose_pack([5000, 10], budget)


def simulated_steps(packer, ranks=8, steps=100, budget=4096, lookahead=4, fill=1.0,
                    sizes=(256, 512, 768, 1024, 1536, 2048)):
    """Each step, every rank packs from its own random stream: per rank, the clip sizes of its pack."""
    rngs = [np.random.default_rng(r) for r in range(ranks)]
    pools = [[] for _ in range(ranks)]
    for _ in range(steps):
        step = []
        for rng, pool in zip(rngs, pools):
            while sum(pool) < lookahead * budget:
                pool.append(int(rng.choice(sizes)))
            chosen = packer(pool, int(fill * budget))
            step.append([pool[i] for i in chosen])
            pool[:] = [s for i, s in enumerate(pool) if i not in set(chosen)]
        yield step


def imbalance(step: list[list[int]]) -> float:
    costs = [pack_cost(clips)[1] for clips in step]
    return max(costs) / float(np.mean(costs))


def test_steered_packs_are_fuller_and_more_even_than_first_fit():
    steered, naive = list(simulated_steps(choose_pack)), list(simulated_steps(first_fit_pack))
    fill = lambda steps: np.mean([sum(p) / 4096 for step in steps for p in step])
    assert fill(steered) > 0.98 > fill(naive)
    assert np.mean([imbalance(s) for s in steered]) < np.mean([imbalance(s) for s in naive])


def test_balance_clips_evens_attention_cost_across_ranks():
    # Clip sizes of the 8 shapes of benchmarks/data.py; packs filled to 95% leave room to move clips.
    ratios, before = [], []
    sizes = (256, 512, 768, 768, 768, 1024, 1152, 2304)
    for step in simulated_steps(choose_pack, budget=8192, fill=0.95, sizes=sizes):
        plan = balance_clips(step, budget=8192)
        assert sorted(x for rank in plan for x in rank) == sorted((r, i) for r, p in enumerate(step) for i in range(len(p)))
        assert all(plan)  # every rank keeps at least one clip
        moved = [[step[r][i] for r, i in rank] for rank in plan]
        assert max(sum(p) for p in moved) <= 8192
        ratios.append(imbalance(moved))
        before.append(imbalance(step))
    assert np.mean(ratios) <= 1.05 < np.mean(before), (np.mean(ratios), np.mean(before))
    even = [[512, 512], [512, 512]]
    assert balance_clips(even, 4096) == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]  # balanced: nothing moves


# Step 16 of benchmarks/data.py's stream: ten 2304-token clips on 8 ranks. The first version
# (LPT, then moves of the single costliest rank) stopped at max/mean 1.066 here; an integer
# program's optimum is 1.042.
TWO_LARGE_ON_SOME_RANK = [
    [512, 1024, 1024, 2304, 768, 768, 768, 512], [256, 1152, 2304, 1024, 2304, 256, 256],
    [768, 1152, 1024, 2304, 768, 768, 768], [512, 1152, 1152, 1024, 2304, 1024, 512],
    [512, 1024, 2304, 768, 768, 768, 768, 768], [256, 1152, 1024, 1024, 768, 768, 2304, 256],
    [512, 1152, 1152, 768, 768, 2304, 512, 512], [768, 2304, 768, 768, 768, 2304]]


def test_balance_clips_gets_past_the_two_large_clips_plateau():
    step = TWO_LARGE_ON_SOME_RANK
    plan = balance_clips(step, budget=8192)
    moved = [[step[r][i] for r, i in rank] for rank in plan]
    assert sorted(x for rank in plan for x in rank) == sorted((r, i) for r, p in enumerate(step) for i in range(len(p)))
    assert all(moved) and max(sum(p) for p in moved) <= 8192
    assert imbalance(moved) <= 1.05, imbalance(moved)
    assert plan == balance_clips(step, budget=8192)  # deterministic: every rank computes the same


def test_ready_bucket_is_the_first_full_one_in_pool_order():
    assert ready_bucket(["a", "b", "b", "a", "b"], 2) == "a"
    assert ready_bucket(["a", "b", "c"], 2) is None
