"""The model families: published sizes on meta, deterministic init, plan seams, structure."""

import math

import pytest
import torch

from litegen.config import CONFIG_DIR, compose
from litegen.models import FAMILIES, build_model, count_params, model_plan
from litegen.models.attention import AttentionCore, attention
from litegen.models.cores import (FrameAttentionCore, GroupedAttentionCore, JointAttentionCore,
                                  TemporalAttentionCore, WindowAttentionCore)
from litegen.models.embeddings import sincos_3d
from litegen.models.rope import grid_positions
from litegen.tools.convert import load_model_config

TINY_EXPERIMENTS = {"wan": "tiny", "cogvideox": "cogvideox_tiny", "vchitect": "vchitect_tiny",
                    "snapvideo": "snapvideo_tiny", "worlddreamer": "worlddreamer_tiny"}

# Published sizes and what each is checked against (README "Model families" says the same).
PUBLISHED = {
    # diffusers' CogVideoXTransformer3DModel with the released configs (THUDM/CogVideoX-2b, -5b);
    # test_cogvideox_counts_equal_diffusers rebuilds them, and ours equals them exactly.
    "cogvideox_2b": (1_693_783_872, 0.02),
    "cogvideox_5b": (5_570_283_072, 0.02),
    "vchitect_2b": (2.0e9, 0.05),  # the published "2B" label (Vchitect-XL-2B); no exact count found
    "snapvideo": (3.9e9, 0.05),  # "3.9B parameters", Snap Video paper, largest model
}


def tiny_cfg(family: str):
    return compose([f"experiment={TINY_EXPERIMENTS[family]}"]).model


def tiny_model(family: str, seed: int = 0):
    model = build_model(tiny_cfg(family))
    model.init_weights(seed)
    return model


def inputs(cfg, batch: int = 2, grid=(4, 4, 4), text_len: int = 6, seed: int = 0):
    """Positional args for the family's forward: latents/tokens, (t,) context, mask."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, text_len, cfg.text_dim, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[0, text_len // 2:] = False
    if cfg.family == "worlddreamer":
        return torch.randint(0, cfg.vocab_size + 1, (batch, *grid), generator=gen), context, mask
    latent = [n * p for n, p in zip(grid, cfg.patch_size)]
    x = torch.randn(batch, cfg.in_channels, *latent, generator=gen)
    return x, torch.rand(batch, generator=gen), context, mask


def liven_heads(model) -> None:
    """Replace zero-initialised output projections so outputs depend on everything."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not p.abs().sum() > 0:
                p.normal_(0.0, 0.05, generator=gen)


# ---- published sizes on meta ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_sizes_build_on_meta_with_published_counts(name):
    cfg = load_model_config(CONFIG_DIR / "model" / f"{name}.yaml")
    with torch.device("meta"):
        model = build_model(cfg)
    assert all(p.is_meta for p in model.parameters())
    published, tolerance = PUBLISHED[name]
    n_params = count_params(model)
    assert abs(n_params - published) / published < tolerance, n_params


def test_cogvideox_counts_equal_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for name, kwargs in (("cogvideox_2b", dict(num_attention_heads=30, num_layers=30)),
                         ("cogvideox_5b", dict(num_attention_heads=48, num_layers=42,
                                               use_rotary_positional_embeddings=True))):
        with torch.device("meta"):
            ref = diffusers.CogVideoXTransformer3DModel(**kwargs)
            ours = build_model(load_model_config(CONFIG_DIR / "model" / f"{name}.yaml"))
        assert count_params(ours) == sum(p.numel() for p in ref.parameters()), name


def test_worlddreamer_count_follows_its_architecture():
    """The paper gives no parameter count: check the model against its own stated layout."""
    cfg = load_model_config(CONFIG_DIR / "model" / "worlddreamer.yaml")
    d, f, layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    attention_block = 4 * (d * d + d) + 2 * d  # q, k, v, o with biases; RMSNorm on q and k
    per_layer = 2 * attention_block + (2 * d * f + f + d) + 3 * 2 * d  # + FFN + 3 LayerNorms
    embeddings = (cfg.vocab_size + 1) * d + (cfg.text_dim * d + d) + (d * d + d)
    head = 2 * d + d * cfg.vocab_size + cfg.vocab_size
    with torch.device("meta"):
        assert count_params(build_model(cfg)) == layers * per_layer + embeddings + head


# ---- every family: init, forward, plan --------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_init_is_deterministic_and_device_independent(family):
    cfg = tiny_cfg(family)
    on_cpu = tiny_model(family, seed=3)
    with torch.device("meta"):
        on_meta = build_model(cfg)
    on_meta.to_empty(device="cpu")
    on_meta.init_weights(3)
    assert list(on_cpu.buffers()) == []  # to_empty would leave buffers as garbage
    for (name, a), (_, b) in zip(on_cpu.named_parameters(), on_meta.named_parameters()):
        assert torch.equal(a, b), name
    other = tiny_model(family, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(other.parameters(), on_cpu.parameters()))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_shape_and_every_parameter_learns(family):
    cfg = tiny_cfg(family)
    model = tiny_model(family)
    args = inputs(cfg)
    out = model(*args)
    if family == "worlddreamer":
        assert out.shape == (*args[0].shape, cfg.vocab_size)
        target = torch.randint(0, cfg.vocab_size, args[0].shape)
        loss_fn = lambda o: torch.nn.functional.cross_entropy(o.flatten(0, -2), target.flatten())  # noqa: E731
    else:
        assert out.shape == args[0].shape and out.dtype == args[0].dtype
        target = torch.randn_like(args[0])
        loss_fn = lambda o: torch.nn.functional.mse_loss(o, target)  # noqa: E731
    assert torch.isfinite(out).all()
    for _ in range(3):  # zero-initialised outputs pass gradient on only after their first step
        model.zero_grad()
        loss_fn(model(*args)).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_plan_names_every_attention_core(family):
    """Swapping every core the plan names intercepts every attention call of a forward pass."""
    cfg = tiny_cfg(family)
    model = tiny_model(family)
    seams = list(model_plan(cfg).attention_seams(model))
    assert seams and all(isinstance(core, AttentionCore) for _, core, _ in seams)
    assert len({name for name, _, _ in seams}) == len(seams)
    calls = []
    original_attention = attention

    def counting(*args, **kwargs):
        calls.append("any")
        return original_attention(*args, **kwargs)

    recorded = []
    for name, core, kind in seams:
        forward = core.forward

        def wrapped(*args, _forward=forward, _name=name, **kwargs):
            recorded.append(_name)
            return _forward(*args, **kwargs)

        core.forward = wrapped
    import litegen.models.attention as attention_module
    import litegen.models.cores as cores_module
    saved = attention_module.attention, cores_module.attention
    attention_module.attention = cores_module.attention = counting
    try:
        model(*inputs(cfg))
    finally:
        attention_module.attention, cores_module.attention = saved
    assert sorted(recorded) == sorted(name for name, _, _ in seams)
    assert len(calls) == len(recorded)  # no attention happens outside the named cores
    blocks = model_plan(cfg).block_list(model)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0


def test_models_accept_bf16():
    for family in sorted(FAMILIES):
        cfg = tiny_cfg(family)
        model = tiny_model(family).to(torch.bfloat16)
        args = [a.bfloat16() if a.is_floating_point() else a for a in inputs(cfg)]
        if family != "worlddreamer":
            args[1] = args[1].float()  # t stays float32
        out = model(*args)
        assert torch.isfinite(out.float()).all(), family


# ---- structured attention cores against explicit masks ---------------------------------------

def masked_reference(q, k, v, allowed):
    """attention() with an explicit [Sq, Sk] boolean mask."""
    return attention(q, k, v, allowed[None, None])


@pytest.mark.parametrize("shifted", [False, True])
def test_structured_cores_equal_attention_with_their_mask(shifted):
    grid = (3, 4, 6)
    s = math.prod(grid)
    pos = grid_positions(grid)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, s, 2, 8, generator=gen) for _ in range(3))
    frame, row, col = pos.unbind(-1)
    same_frame = frame[:, None] == frame[None, :]
    same_place = (row[:, None] == row[None, :]) & (col[:, None] == col[None, :])
    torch.testing.assert_close(FrameAttentionCore()(q, k, v, grid=grid), masked_reference(q, k, v, same_frame))
    torch.testing.assert_close(TemporalAttentionCore()(q, k, v, grid=grid), masked_reference(q, k, v, same_place))
    window = (2, 3)
    shift = (1, 1) if shifted else (0, 0)
    win_row, win_col = (row - shift[0]) % grid[1] // window[0], (col - shift[1]) % grid[2] // window[1]
    same_window = (win_row[:, None] == win_row[None, :]) & (win_col[:, None] == win_col[None, :])
    got = WindowAttentionCore(window, shifted)(q, k, v, grid=grid)
    torch.testing.assert_close(got, masked_reference(q, k, v, same_window))


def test_grouped_and_joint_cores_equal_attention_with_their_mask():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 2, 8, generator=gen)  # 3 groups of 2 queries
    k, v = (torch.randn(2, 12, 2, 8, generator=gen) for _ in range(2))  # 3 groups of 4 keys
    groups_allowed = (torch.arange(6)[:, None] // 2) == (torch.arange(12)[None, :] // 4)
    torch.testing.assert_close(GroupedAttentionCore()(q, k, v, groups=3), masked_reference(q, k, v, groups_allowed))
    tq, tk, tv = (torch.randn(2, 3, 2, 8, generator=gen) for _ in range(3))
    text_mask = torch.tensor([[True, True, False], [True, True, True]])
    video, text = JointAttentionCore()(q, k[:, :6], v[:, :6], tq, tk, tv, text_mask)
    keys = torch.cat([text_mask, torch.ones(2, 6, dtype=torch.bool)], 1)[:, None, None, :]
    full = attention(torch.cat([tq, q], 1), torch.cat([tk, k[:, :6]], 1), torch.cat([tv, v[:, :6]], 1), keys)
    torch.testing.assert_close(video, full[:, 3:])
    torch.testing.assert_close(text, full[:, :3])


# ---- family structure -------------------------------------------------------------------------

def test_vchitect_frames_stay_independent_until_temporal_outputs_learn():
    """Spatial attention is per frame and the temporal output starts at zero (as in Vchitect)."""
    cfg = tiny_cfg("vchitect")
    model = tiny_model("vchitect")
    with torch.no_grad():
        model.head.proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    x, t, context, mask = inputs(cfg, grid=(3, 4, 4))
    moved = x.clone()
    moved[:, :, 2] += 1.0  # change only the last frame
    out, out_moved = model(x, t, context, mask), model(moved, t, context, mask)
    torch.testing.assert_close(out_moved[:, :, :2], out[:, :, :2])
    with torch.no_grad():
        for block in model.blocks:
            block.attn.o_t.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(model(moved, t, context, mask)[:, :, 0], model(x, t, context, mask)[:, :, 0])


def test_snapvideo_latents_connect_groups_and_shapes_are_checked():
    cfg = tiny_cfg("snapvideo")  # group_frames 4
    model = tiny_model("snapvideo")
    liven_heads(model)
    x, t, context, mask = inputs(cfg, grid=(8, 4, 4))  # 2 groups of latents
    assert model.groups((8, 4, 4)) == 2
    moved = x.clone()
    moved[:, :, 7] += 1.0  # the last frame lies in group 1 only
    # Group 0's patches read only group 0, but the latents attend across groups: frame 0 changes.
    assert not torch.allclose(model(moved, t, context, mask)[:, :, 0], model(x, t, context, mask)[:, :, 0])
    with pytest.raises(ValueError, match="group_frames"):
        model(*inputs(cfg, grid=(6, 4, 4)))


def test_worlddreamer_actions_and_mask_token():
    cfg = compose(["experiment=worlddreamer_tiny", "model.action_dim=3"]).model
    model = build_model(cfg)
    model.init_weights(0)
    tokens, context, mask = inputs(cfg)
    actions = torch.randn(2, tokens.shape[1], 3)
    with_actions = model(tokens, context, mask, actions)
    assert not torch.allclose(with_actions, model(tokens, context, mask))
    assert model.token_embedding.num_embeddings == cfg.vocab_size + 1  # the [MASK] id
    plain = tiny_model("worlddreamer")
    with pytest.raises(ValueError, match="action_dim"):
        plain(tokens, context, mask, actions)


def test_cogvideox_masks_padded_text_unless_told_and_learned_table_starts_at_sincos():
    cfg = tiny_cfg("cogvideox")
    model = tiny_model("cogvideox")
    liven_heads(model)
    x, t, context, mask = inputs(cfg)
    scrambled = context.clone()
    scrambled[~mask] = 10 * torch.randn(int((~mask).sum()), context.shape[-1])
    torch.testing.assert_close(model(x, t, scrambled, mask), model(x, t, context, mask), atol=0, rtol=0)
    model.cfg.attend_text_padding = True
    assert not torch.allclose(model(x, t, scrambled, mask), model(x, t, context, mask))
    learned = compose(["experiment=cogvideox_tiny", "model.pos_embedding=learned"]).model
    net = build_model(learned)
    net.init_weights(0)
    torch.testing.assert_close(net.pos_table.data, sincos_3d(net.sample_grid, learned.dim, 1.875, 1.0))
    with pytest.raises(ValueError, match="learned position table"):
        net(*inputs(learned, grid=(2, 4, 4)))
