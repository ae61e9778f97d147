"""Unit tests for litegen/models: patchify, 3D RoPE, attention dispatch, the Wan DiT, init, registry."""

import math
import re
import types
from pathlib import Path

import pytest
import torch

import litegen.models.attention as attention_mod
from litegen.config import compose
from litegen.config.model import WanConfig
from litegen.models import FAMILIES, build_model, count_params, model_plan
from litegen.models.attention import AttentionCore, attention, attention_backend
from litegen.models.embeddings import patchify, unpatchify
from litegen.models.rope import RotaryEmbedding3D, apply_rope, grid_positions, rope_axis_dims
from litegen.tools.diffusers_maps import WAN_KEYS

# Parameter counts of the released Wan 2.1 T2V checkpoints (2.84 GB / 28.6 GB in bf16); equal to
# diffusers' WanTransformer3DModel built with the same config.
PUBLISHED_PARAMS = {"wan_1_3b": 1_418_996_800, "wan_14b": 14_288_491_584}
BIG_OVERRIDES = ["encoders/video=diffusers_vae", "encoders.video.path=/x",
                 "encoders/text=t5", "encoders.text.path=/x"]


def tiny_config(**changes) -> WanConfig:
    return WanConfig(**{**dict(dim=128, ffn_dim=512, num_heads=4, num_layers=4, freq_dim=64,
                               in_channels=12, out_channels=12, text_dim=64), **changes})


def tiny_model(seed: int = 0, live_head: bool = True, **changes) -> torch.nn.Module:
    """A tiny Wan with initialised weights; live_head replaces the zero head so outputs vary."""
    model = build_model(tiny_config(**changes))
    model.init_weights(seed)
    if live_head:
        with torch.no_grad():
            model.head.head.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(seed))
    return model


def inputs(batch=2, shape=(2, 4, 6), text_len=7, channels=12, text_dim=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *shape, generator=gen)
    t = torch.rand(batch, generator=gen)
    context = torch.randn(batch, text_len, text_dim, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[0, text_len // 2:] = False  # first sample is padded
    return x, t, context, mask


# ---- patchify / token order -------------------------------------------------------------------

@pytest.mark.parametrize("shape,patch", [((2, 4, 6), (1, 2, 2)), ((4, 6, 2), (2, 2, 1)), ((3, 3, 3), (1, 1, 1))])
def test_patchify_unpatchify_round_trip_is_exact(shape, patch):
    x = torch.randn(2, 5, *shape)
    grid = tuple(n // p for n, p in zip(shape, patch))
    tokens = patchify(x, patch)
    assert tokens.shape == (2, math.prod(grid), 5 * math.prod(patch))
    assert torch.equal(unpatchify(tokens, grid, patch), x)


def test_patchify_refuses_partial_patches():
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 3, 2, 5, 4), (1, 2, 2))


def test_token_order_matches_grid_positions():
    grid, patch = (2, 3, 4), (1, 2, 2)
    coords = torch.stack(torch.meshgrid(*[torch.arange(g * p) for g, p in zip(grid, patch)],
                                        indexing="ij")).float()[None]  # [1, 3, T, H, W]
    first_in_patch = patchify(coords, patch)[0, :, :3]  # (t, h, w) of each patch's corner
    expected = grid_positions(grid) * torch.tensor(patch)
    assert torch.equal(first_in_patch, expected.float())
    pos = grid_positions(grid)
    assert pos[13].tolist() == [1, 0, 1]  # 13 = 1*12 + 0*4 + 1


def test_conv_patch_embedding_is_patchify_then_linear():
    model = tiny_model()
    x = torch.randn(2, 12, 2, 4, 6)
    tokens, grid = model.embed(x)
    conv = model.patch_embedding
    weight = conv.weight.permute(0, 2, 3, 4, 1).flatten(1)  # channels last, like patchify
    expected = patchify(x, model.patch_size) @ weight.T + conv.bias
    assert grid == (2, 2, 3)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


# ---- 3D RoPE ----------------------------------------------------------------------------------

def test_rope_axis_split_matches_wan():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert sum(rope_axis_dims(32)) == 32


def test_rope_shapes_and_norm_preservation():
    rope = RotaryEmbedding3D(32)(grid_positions((3, 4, 5)))
    assert rope.shape == (60, 16, 2) and rope.dtype == torch.float32
    x = torch.randn(2, 60, 4, 32)
    rotated = apply_rope(x, rope)
    assert rotated.shape == x.shape
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    origin = RotaryEmbedding3D(32)(torch.zeros(1, 3, dtype=torch.long))
    torch.testing.assert_close(apply_rope(x[:, :1], origin), x[:, :1])


def test_each_axis_rotates_only_its_channels():
    rope_module, head_dim = RotaryEmbedding3D(32), 32
    t_dim, h_dim, _ = rope_axis_dims(head_dim)
    x = torch.randn(1, 1, 1, head_dim)
    moved_in_time = apply_rope(x, rope_module(torch.tensor([[3, 0, 0]])))
    assert torch.equal(moved_in_time[..., t_dim:], x[..., t_dim:])
    moved_in_rows = apply_rope(x, rope_module(torch.tensor([[0, 2, 0]])))
    assert torch.equal(moved_in_rows[..., :t_dim], x[..., :t_dim])
    assert torch.equal(moved_in_rows[..., t_dim + h_dim:], x[..., t_dim + h_dim:])


def test_rope_scores_depend_only_on_position_difference():
    rope_module = RotaryEmbedding3D(48, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 48), torch.randn(1, 1, 1, 48)

    def score(pos_q, pos_k):
        rq = apply_rope(q, rope_module(torch.tensor([pos_q])))
        rk = apply_rope(k, rope_module(torch.tensor([pos_k])))
        return (rq * rk).sum()

    base = score([1, 2, 3], [4, 0, 7])
    torch.testing.assert_close(score([6, 7, 13], [9, 5, 17]), base, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(score([1, 2, 3], [5, 0, 7]), base, atol=1e-3)


# ---- attention dispatch -----------------------------------------------------------------------

def naive_attention(q, k, v, mask=None):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def test_sdpa_path_matches_naive_reference_with_padding_mask():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, s, 3, 16, generator=gen) for s in (10, 6, 6))
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]
    full = torch.rand(2, 3, 10, 6, generator=gen) > 0.3
    full[..., 0] = True  # every query keeps at least one key
    for mask in (None, pad, full):
        torch.testing.assert_close(attention(q, k, v, mask), naive_attention(q, k, v, mask),
                                   atol=1e-5, rtol=1e-5)


def test_backend_selection(monkeypatch):
    cpu = torch.randn(1, 4, 2, 8, dtype=torch.bfloat16)
    assert attention_backend(cpu, cpu, cpu) == "sdpa"
    cuda_bf16 = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(1, 4, 2, 128))
    cuda_fp32 = types.SimpleNamespace(is_cuda=True, dtype=torch.float32, shape=(1, 4, 2, 128))
    wide_head = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(1, 4, 2, 512))
    monkeypatch.setattr(attention_mod, "_flash_attn_func", lambda: (lambda *a, **kw: None))
    assert attention_backend(cuda_bf16, cuda_bf16, cuda_bf16) == "flash"
    assert attention_backend(cuda_bf16, cuda_bf16, cuda_bf16, attn_mask=object()) == "sdpa"
    assert attention_backend(cuda_fp32, cuda_fp32, cuda_fp32) == "sdpa"
    assert attention_backend(wide_head, wide_head, wide_head) == "sdpa"
    monkeypatch.setattr(attention_mod, "_flash_attn_func", lambda: None)
    assert attention_backend(cuda_bf16, cuda_bf16, cuda_bf16) == "sdpa"


def test_every_attention_goes_through_a_swappable_core():
    model = tiny_model()
    cores = list(model_plan(model.cfg).attention_cores(model))
    assert len(cores) == 2 * model.cfg.num_layers
    assert all(isinstance(core, AttentionCore) for _, core in cores)
    calls = []

    class Recording(AttentionCore):
        def forward(self, q, k, v, attn_mask=None):
            calls.append((tuple(q.shape), tuple(k.shape)))
            return super().forward(q, k, v, attn_mask)

    for name, _ in cores:
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, Recording())
    model(*inputs())
    assert len(calls) == 2 * model.cfg.num_layers
    assert calls[0] == ((2, 12, 4, 32), (2, 12, 4, 32)) and calls[1][1] == (2, 7, 4, 32)


# ---- the Wan DiT ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 2, 2), (2, 4, 6), (3, 8, 4), (4, 2, 10)])
def test_forward_shapes(shape):
    model = tiny_model()
    x, t, context, mask = inputs(shape=shape)
    out = model(x, t, context, mask)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_forward_rejects_latents_not_divisible_by_patch():
    x, t, context, mask = inputs(shape=(2, 5, 4))
    with pytest.raises(ValueError, match="patch_size"):
        tiny_model()(x, t, context, mask)


def test_forward_keeps_input_dtype_in_bf16():
    model = tiny_model().to(torch.bfloat16)
    x, t, context, mask = inputs()
    out = model(x.bfloat16(), t, context.bfloat16(), mask)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_fresh_model_predicts_zero_then_gradients_reach_every_parameter():
    model = tiny_model(live_head=False)
    x, t, context, mask = inputs()
    target = torch.randn_like(x)
    assert torch.equal(model(x, t, context, mask), torch.zeros_like(x))
    for _ in range(2):  # step 1 moves the zero head; only then can gradient pass through it
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, context, mask), target).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_cross_attention_mask_hides_padded_text():
    model = tiny_model()
    x, t, context, mask = inputs()
    out = model(x, t, context, mask)
    scrambled = context.clone()
    scrambled[~mask] = torch.randn(int((~mask).sum()), context.shape[-1]) * 10
    torch.testing.assert_close(model(x, t, scrambled, mask), out, atol=0, rtol=0)
    changed_real = context.clone()
    changed_real[0, 0] += 1.0
    assert not torch.allclose(model(x, t, changed_real, mask)[0], out[0])


def test_timestep_changes_output():
    model = tiny_model()
    x, t, context, mask = inputs()
    assert not torch.allclose(model(x, t, context, mask), model(x, 1 - t, context, mask))


# ---- init and meta construction ---------------------------------------------------------------

def test_init_is_deterministic_and_device_independent():
    cfg = tiny_config()
    on_cpu = build_model(cfg)
    on_cpu.init_weights(seed=7)
    with torch.device("meta"):
        on_meta = build_model(cfg)
    assert all(p.is_meta for p in on_meta.parameters())
    on_meta.to_empty(device="cpu")
    on_meta.init_weights(seed=7)
    # No buffers: to_empty would leave them as garbage, and init_weights only fills parameters.
    assert list(on_cpu.buffers()) == []
    for (name, a), (_, b) in zip(on_cpu.named_parameters(), on_meta.named_parameters()):
        assert torch.equal(a, b), name
    other = build_model(cfg)
    other.init_weights(seed=8)
    assert not torch.equal(other.blocks[0].self_attn.q.weight, on_cpu.blocks[0].self_attn.q.weight)


def test_init_follows_wan_rules():
    model = tiny_model(live_head=False)
    dim = model.cfg.dim
    assert torch.equal(model.head.head.weight, torch.zeros_like(model.head.head.weight))
    assert model.blocks[0].ffn[0].bias.abs().sum() == 0 and model.patch_embedding.bias.abs().sum() == 0
    assert abs(model.blocks[0].modulation.std().item() * math.sqrt(dim) - 1) < 0.1
    assert abs(model.text_embedding[0].weight.std().item() - 0.02) < 0.002
    bound = math.sqrt(6 / (2 * dim))
    q = model.blocks[1].self_attn.q.weight
    assert q.abs().max() <= bound and q.abs().max() > 0.9 * bound
    assert torch.equal(model.blocks[0].norm3.weight, torch.ones(dim))
    # Different blocks draw different values from the same seed.
    assert not torch.equal(model.blocks[0].self_attn.q.weight, q)


def test_init_ignores_wrapper_names():
    from litegen.models.wan import canonical_name
    assert canonical_name("blocks.3._checkpoint_wrapped_module.self_attn.q.weight") == "blocks.3.self_attn.q.weight"
    assert canonical_name("_orig_mod.head.modulation") == "head.modulation"


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_released_sizes_build_on_meta_with_published_param_counts(name):
    cfg = compose([f"model={name}", *BIG_OVERRIDES]).model
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    n_params = count_params(model)
    assert abs(n_params - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.02, n_params


# ---- registry and hygiene ---------------------------------------------------------------------

def test_registry():
    assert "wan" in FAMILIES
    with pytest.raises(ValueError, match="not registered"):
        build_model(WanConfig(family="nope"))
    assert count_params(tiny_model()) == sum(p.numel() for p in tiny_model().parameters())


def test_models_package_never_imports_torch_distributed():
    root = Path(__import__("litegen.models").models.__file__).parent
    imports = re.compile(r"^\s*(from|import)\s+torch(\.distributed|\s+import\s+distributed)", re.M)
    offenders = [p.name for p in root.glob("*.py") if imports.search(p.read_text())]
    assert offenders == []


# ---- agreement with the published architecture (diffusers' port of Wan 2.1) ------------------

# our (original Wan) names -> diffusers names: the converter's map (litegen/tools/diffusers_maps.py)
DIFFUSERS_KEYS = WAN_KEYS


def test_matches_diffusers_wan_with_all_text_attended():
    diffusers = pytest.importorskip("diffusers")
    changes = dict(dim=96, num_heads=4, num_layers=2, ffn_dim=192, freq_dim=32, in_channels=4,
                   out_channels=4, text_dim=40)
    ours = tiny_model(**changes)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=24, in_channels=4,
        out_channels=4, text_dim=40, freq_dim=32, ffn_dim=192, num_layers=2)
    state = {}
    for key, value in ours.state_dict().items():
        for pattern, repl in DIFFUSERS_KEYS:
            key = re.sub(pattern, repl, key)
        state[key] = value
    ref.load_state_dict(state, strict=True)
    x, t, context, _ = inputs(shape=(3, 6, 8), channels=4, text_dim=40)
    with torch.no_grad():
        expected = ref(x, t * ours.cfg.timestep_scale, context, return_dict=False)[0]
        got = ours(x, t, context, torch.ones(context.shape[:2], dtype=torch.bool))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_absolute_position_embedding_breaks_translation_symmetry():
    from litegen.config.model import WanConfig
    from litegen.models import build_model
    from litegen.models.embeddings import absolute_position_embedding
    from litegen.models.rope import grid_positions

    pos = grid_positions((2, 3, 4))
    emb = absolute_position_embedding(pos, 48)
    assert emb.shape == (24, 48)
    assert torch.unique(emb, dim=0).shape[0] == 24  # every token gets its own code
    # On a constant input a RoPE-only model answers the same at every interior token; with the
    # embedding the answer depends on where the token is.
    outputs = {}
    for flag in (False, True):
        cfg = WanConfig(dim=48, ffn_dim=96, num_heads=2, num_layers=1, freq_dim=16, in_channels=4,
                        out_channels=4, text_dim=8, patch_size=[1, 1, 1], absolute_pos_embed=flag)
        net = build_model(cfg)
        net.init_weights(0)
        torch.nn.init.normal_(net.head.head.weight, std=0.1)  # zero-init head would hide it
        x = torch.ones(1, 4, 1, 1, 8)  # one row of 8 identical tokens
        out = net(x, torch.tensor([0.5]), torch.ones(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))
        outputs[flag] = out[0, :, 0, 0, 1:-1].detach()  # interior tokens (values are identical,
        # so without position codes attention returns the same mix everywhere)
    spread = {k: float((v - v.mean(-1, keepdim=True)).abs().max()) for k, v in outputs.items()}
    assert spread[True] > 100 * max(spread[False], 1e-7)
