"""litegen.tools.convert: diffusers Wan 2.1 / CogVideoX weights load into our models with the same
forward (rtol 1e-4, fp32), export back unchanged, and start training (model.init_from)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from litegen.config import compose
from litegen.models import build_model
from litegen.parallel.distributed import DistInfo
from litegen.tools import convert
from litegen.train.setup import build_network, build_run
from litegen.train.trainer import save_checkpoint, train_step

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

WAN_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=24, in_channels=4,
                out_channels=4, text_dim=40, freq_dim=32, ffn_dim=192, num_layers=2)
COGVIDEOX_TINY = dict(num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
                      time_embed_dim=24, text_embed_dim=20, num_layers=2, sample_width=12, sample_height=8,
                      sample_frames=9, patch_size=2, max_text_seq_length=7)


def randomised(model, seed=0):
    """diffusers initialises some weights to zero; random values make the comparison meaningful."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def save_reference(model, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def import_to(folder: Path, out: Path):
    convert.main(["import", str(folder), str(out)])
    cfg = convert.load_model_config(out.with_suffix(".yaml"))
    net = build_model(cfg)
    convert.load_converted(net, out)
    return cfg, net.eval()


def cogvideox_rope(cfg, grid):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    rows, cols = grid[1] // 2, grid[2] // 2
    crops = get_resize_crop_region_for_grid((rows, cols), cfg.sample_width // 2, cfg.sample_height // 2)
    return get_3d_rotary_pos_embed(embed_dim=cfg.head_dim, crops_coords=crops, grid_size=(rows, cols),
                                   temporal_size=grid[0])


def assert_same_forward(ref, ours, cfg, grid, text_len, text_dim):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, *grid, generator=gen)
    t, context = torch.rand(2, generator=gen), torch.randn(2, text_len, text_dim, generator=gen)
    with torch.no_grad():
        got = ours(x, t, context, torch.ones(2, text_len, dtype=torch.bool))
        if cfg.family == "wan":
            expected = ref(x, t * 1000, context, return_dict=False)[0]
        else:
            rope = cogvideox_rope(cfg, grid) if cfg.pos_embedding == "rope" else None
            expected = ref(x.transpose(1, 2), context, t * 1000, image_rotary_emb=rope,
                           return_dict=False)[0].transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def load_reference(cls, folder: Path):
    """cls.from_pretrained without `accelerate` (Wan's fp32-kept modules require it)."""
    model = cls.from_config(cls.load_config(folder))
    model.load_state_dict(convert.read_safetensors(folder), strict=True)
    return model


def assert_exports_back(ref, out: Path, folder: Path):
    convert.main(["export", str(out), str(folder), "--config", str(out.with_suffix(".yaml"))])
    again = load_reference(type(ref), folder)
    theirs = ref.state_dict()
    for name, value in again.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    assert json.loads((folder / "config.json").read_text())["_class_name"] == type(ref).__name__


def test_wan_diffusers_weights_give_the_same_forward_and_export_back(tmp_path):
    ref = randomised(diffusers.WanTransformer3DModel(**WAN_TINY))
    cfg, ours = import_to(save_reference(ref, tmp_path / "wan"), tmp_path / "wan.safetensors")
    assert cfg.family == "wan" and cfg.dim == 96 and cfg.ffn_dim == 192
    assert_same_forward(ref, ours, cfg, (3, 6, 8), 5, 40)
    assert_exports_back(ref, tmp_path / "wan.safetensors", tmp_path / "wan_back")


@pytest.mark.parametrize("rope", [True, False], ids=["rope-5b", "sincos-2b"])
def test_cogvideox_diffusers_weights_give_the_same_forward_and_export_back(tmp_path, rope):
    ref = randomised(diffusers.CogVideoXTransformer3DModel(**COGVIDEOX_TINY,
                                                           use_rotary_positional_embeddings=rope))
    cfg, ours = import_to(save_reference(ref, tmp_path / "cog"), tmp_path / "cog.safetensors")
    assert cfg.pos_embedding == ("rope" if rope else "sincos") and cfg.sample_frames == 3
    assert_same_forward(ref, ours, cfg, (3, 8, 12), 7, 20)  # the trained grid
    assert_same_forward(ref, ours, cfg, (2, 6, 6), 7, 20)  # another size: interpolated positions
    assert_exports_back(ref, tmp_path / "cog.safetensors", tmp_path / "cog_back")


def test_unsupported_variants_are_refused_by_name(tmp_path):
    folder = tmp_path / "i2v"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**WAN_TINY, "_class_name": "WanTransformer3DModel",
                                                    "image_dim": 1280, "cross_attn_norm": True, "eps": 1e-6}))
    with pytest.raises(ValueError, match="image_dim"):
        convert.from_diffusers(folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(ValueError, match="convertible"):
        convert.from_diffusers(folder)


def tiny_wan_reference():
    """A diffusers Wan with the tiny experiment's widths, so converted weights fit model=tiny."""
    return randomised(diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=12,
        out_channels=12, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4))


def test_training_starts_from_converted_weights_and_checkpoints_export(tmp_path, tiny_shards):
    ref = tiny_wan_reference()
    out = tmp_path / "tiny.safetensors"
    convert.main(["import", str(save_reference(ref, tmp_path / "ref")), str(out)])
    cfg = compose(["experiment=tiny", f"model.init_from={out}", f"data.shards={tiny_shards}",
                   "data.generate_if_missing=false", "logging.wandb_mode=disabled", "data.batch_size=2",
                   "train.ema_decay=0.5"])
    net = build_network(cfg, torch.device("cpu"))
    converted = convert.read_safetensors(out)
    assert all(torch.equal(p, converted[n]) for n, p in net.state_dict().items())
    run = build_run(cfg, tmp_path / "run", DistInfo(0, 1, 0, torch.device("cpu")))
    train_step(run, iter(run.loader))
    checkpoint = save_checkpoint(run)
    convert.main(["export", str(checkpoint), str(tmp_path / "exported"), "--config",
                  str(out.with_suffix(".yaml")), "--ema"])
    exported = load_reference(diffusers.WanTransformer3DModel, tmp_path / "exported")
    back = convert.from_diffusers(tmp_path / "exported")[1]
    for name, value in back.items():
        torch.testing.assert_close(value, run.ema.shadow[name])
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in net.parameters())


@pytest.mark.slow
def test_cli_import_writes_weights_and_model_config(tmp_path):
    import subprocess

    from conftest import REPO

    folder = save_reference(randomised(diffusers.WanTransformer3DModel(**WAN_TINY)), tmp_path / "wan")
    proc = subprocess.run([sys.executable, "-m", "litegen.tools.convert", "import", str(folder),
                           str(tmp_path / "out.safetensors")], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "family wan" in proc.stdout and (tmp_path / "out.yaml").is_file()
    bad = subprocess.run([sys.executable, "-m", "litegen.tools.convert", "import", str(tmp_path),
                          str(tmp_path / "x.safetensors")], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr
