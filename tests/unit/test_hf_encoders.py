"""The diffusers VAE and transformers T5/UMT5 encoders, on tiny randomly initialised models saved
to tmp folders (no hub access): loading, shapes, normalisation, masks and determinism."""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from litegen.config.schema import TextEncoderConfig, VideoEncoderConfig  # noqa: E402
from litegen.encoders import (DiffusersVideoVAE, HFTextEncoder, build_text_encoder,  # noqa: E402
                              build_video_encoder)

WAN_MEAN, WAN_STD = [0.1, -0.2, 0.3, 0.0], [2.0, 0.5, 1.5, 1.0]
COG_SCALE = 0.7


def _clip(frames: int, height: int = 16, width: int = 24, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, frames, height, width, generator=gen) * 2 - 1


# ---- video VAEs -----------------------------------------------------------------------------

def _tiny_wan(**overrides):
    # dim_mult of 3 levels -> 2 downsamples: 4x spatial; both temporal -> 4x temporal, like Wan 2.1.
    args = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[True, True],
                latents_mean=WAN_MEAN, latents_std=WAN_STD)
    torch.manual_seed(0)
    return diffusers.AutoencoderKLWan(**{**args, **overrides})


def _tiny_cogvideox():
    torch.manual_seed(0)
    return diffusers.AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8), down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3, latent_channels=4, layers_per_block=1,
        norm_num_groups=4, sample_height=32, sample_width=32, scaling_factor=COG_SCALE)


@pytest.fixture(scope="module")
def wan_pipeline_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_pipeline")
    _tiny_wan().save_pretrained(root / "vae")  # a pipeline folder: the VAE sits in vae/
    return root


@pytest.fixture(scope="module")
def wan(wan_pipeline_dir):
    return build_video_encoder(VideoEncoderConfig(kind="diffusers", path=str(wan_pipeline_dir), subfolder="vae"))


@pytest.fixture(scope="module")
def cogvideox(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cogvideox")
    _tiny_cogvideox().save_pretrained(folder)
    return build_video_encoder(VideoEncoderConfig(kind="diffusers", path=str(folder)))


def test_wan_reads_compression_from_config(wan):
    assert isinstance(wan, DiffusersVideoVAE) and wan.class_name == "AutoencoderKLWan"
    assert (wan.spatial_factor, wan.temporal_factor, wan.latent_channels) == (4, 4, 4)
    assert wan.latent_shape(9, 16, 24) == (4, 3, 4, 6)
    assert wan.latent_shape(1, 16, 24) == (4, 1, 4, 6)


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_wan_encode_matches_latent_shape(wan, frames):
    z = wan.encode(_clip(frames))
    assert z.shape == (2,) + wan.latent_shape(frames, 16, 24) and z.dtype == torch.float32


def test_wan_normalises_per_channel_and_decode_inverts(wan):
    x = _clip(5)
    z = wan.encode(x)
    with torch.no_grad():
        raw = wan.vae.encode(x).latent_dist.mode()
        mean, std = torch.tensor(WAN_MEAN).view(1, -1, 1, 1, 1), torch.tensor(WAN_STD).view(1, -1, 1, 1, 1)
        assert torch.allclose(z, (raw - mean) / std, atol=1e-6)
        assert not torch.allclose(z, raw, atol=1e-3)
        expected = wan.vae.decode(raw).sample.clamp(-1, 1)
    out = wan.decode(z)
    assert out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    assert torch.allclose(out, expected, atol=1e-5)


def test_wan_is_frozen_and_deterministic(wan):
    assert not wan.vae.training
    assert not any(p.requires_grad for p in wan.vae.parameters())
    x = _clip(5)
    assert torch.equal(wan.encode(x), wan.encode(x))  # mode(), never a sample


def test_wan_rejects_bad_frames_and_size(wan):
    with pytest.raises(ValueError, match="frames - 1 must be divisible by temporal_factor 4"):
        wan.encode(_clip(8))
    with pytest.raises(ValueError, match="height"):
        wan.latent_shape(5, 18, 24)
    assert wan.frames_ok(13) and not wan.frames_ok(12)


def test_signature_is_json_and_tracks_the_weights(wan, tmp_path):
    sig = wan.signature()
    assert json.loads(json.dumps(sig)) == sig
    assert sig["class_name"] == "AutoencoderKLWan" and sig["normalisation"] == "mean_std"
    _tiny_wan(latents_std=[1.0, 1.0, 1.0, 1.0]).save_pretrained(tmp_path)
    other = build_video_encoder(VideoEncoderConfig(kind="diffusers", path=str(tmp_path)))
    assert other.signature() != sig


def test_cogvideox_scales_latents(cogvideox):
    assert (cogvideox.spatial_factor, cogvideox.temporal_factor, cogvideox.latent_channels) == (4, 4, 4)
    x = _clip(9, batch=1)
    z = cogvideox.encode(x)
    assert z.shape == (1,) + cogvideox.latent_shape(9, 16, 24) == (1, 4, 3, 4, 6)
    with torch.no_grad():
        raw = cogvideox.vae.encode(x).latent_dist.mode()
    assert torch.allclose(z, raw * COG_SCALE, atol=1e-6)
    assert cogvideox.signature()["normalisation"] == "scale_shift"


def test_cogvideox_decode_shape_and_clamp(cogvideox):
    out = cogvideox.decode(cogvideox.encode(_clip(9, batch=1)))
    assert out.shape == (1, 3, 9, 16, 24)
    assert out.min() >= -1 and out.max() <= 1


def test_missing_vae_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_video_encoder(VideoEncoderConfig(kind="diffusers", path=str(tmp_path)))


# ---- T5 / UMT5 text encoders ----------------------------------------------------------------

WORDS = "a red circle moving right on blue background green square left two squares spinning".split()
VOCAB = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
MAX_LENGTH = 16


def _tiny_tokenizer(with_eos: bool = True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if with_eos:  # T5 appends </s>; that is what gives "" a token
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")


def _tiny_text_model(model_type: str):
    args = dict(vocab_size=len(VOCAB), d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=64,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    if model_type == "umt5":
        return transformers.UMT5EncoderModel(transformers.UMT5Config(**args))
    return transformers.T5EncoderModel(transformers.T5Config(**args))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")  # one folder with model and tokenizer
    _tiny_text_model("t5").save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5")  # Wan's pipeline layout
    _tiny_text_model("umt5").save_pretrained(root / "text_encoder")
    _tiny_tokenizer().save_pretrained(root / "tokenizer")
    return root


def _build(folder, **kwargs):
    return build_text_encoder(TextEncoderConfig(kind="t5", path=str(folder), max_length=MAX_LENGTH, **kwargs))


CAPTIONS = ["a red circle moving right", "", "two squares spinning on green " * 10]


@pytest.mark.parametrize("layout", ["t5_dir", "umt5_dir"])
def test_text_shapes_mask_and_zeroed_padding(layout, request):
    enc = _build(request.getfixturevalue(layout))
    assert isinstance(enc, HFTextEncoder) and enc.dim == 32
    emb, mask = enc.encode(CAPTIONS)
    assert emb.shape == (3, MAX_LENGTH, 32) and emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [6, 1, MAX_LENGTH]  # 5 words + </s>; "" -> </s>; truncated
    assert torch.all(emb[~mask] == 0)
    assert torch.all(emb[mask].abs().sum(-1) > 0)


@pytest.mark.parametrize("layout,model_type", [("t5_dir", "t5"), ("umt5_dir", "umt5")])
def test_text_matches_raw_model_on_valid_tokens(layout, model_type, request):
    enc = _build(request.getfixturevalue(layout))
    assert enc.model_type == model_type and not enc.model.training
    emb, mask = enc.encode(CAPTIONS)
    ids, tok_mask = enc.tokenize(CAPTIONS)
    assert torch.equal(mask, tok_mask)
    with torch.no_grad():
        hidden = enc.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert torch.allclose(emb[mask], hidden[mask], atol=1e-6)


def test_text_deterministic_across_loads(t5_dir):
    a, b = _build(t5_dir), _build(t5_dir)
    emb_a, mask_a = a.encode(CAPTIONS)
    emb_b, mask_b = b.encode(CAPTIONS)
    assert torch.equal(emb_a, emb_b) and torch.equal(mask_a, mask_b)
    assert torch.equal(a.encode([""])[0][0], emb_a[1])  # the null condition does not depend on the batch
    sig = a.signature()
    assert json.loads(json.dumps(sig)) == sig and sig == b.signature()


def test_text_without_eos_still_gives_empty_caption_a_token(tmp_path):
    _tiny_text_model("t5").save_pretrained(tmp_path)
    _tiny_tokenizer(with_eos=False).save_pretrained(tmp_path)
    emb, mask = _build(tmp_path).encode(["", "red circle"])
    assert mask[0].tolist() == [True] + [False] * (MAX_LENGTH - 1)
    assert mask[1].sum() == 2 and emb[0, 0].abs().sum() > 0


def test_text_bf16_returns_float32(t5_dir):
    emb, _ = _build(t5_dir, dtype="bf16").encode(["red circle"])
    assert emb.dtype == torch.float32


def test_text_rejects_unknown_model_type_and_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        _build(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        _build(tmp_path)
