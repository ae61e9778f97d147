"""Pure tests of the weight-free encoders (pixel space-to-depth, hashed text) and the builders."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from litegen.config.schema import TextEncoderConfig, VideoEncoderConfig
from litegen.encoders import (HashedTextEncoder, PixelSpaceToDepth, TextEncoder, VideoEncoder,
                              build_text_encoder, build_video_encoder)


def _clip(frames: int, height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=gen) * 2 - 1


# ---- pixel space-to-depth -------------------------------------------------------------------

@pytest.mark.parametrize("sf,tf,shape", [(1, 1, (3, 4, 5)), (2, 1, (3, 8, 6)), (2, 2, (4, 8, 12)),
                                          (4, 1, (1, 16, 8)), (3, 4, (8, 9, 6))])
def test_pixel_round_trip_is_bit_exact(sf, tf, shape):
    enc = PixelSpaceToDepth(sf, tf)
    x = _clip(*shape)
    x[0, 0, 0, 0, 0], x[1, 2, -1, -1, -1] = -1.0, 1.0  # the range ends must survive too
    z = enc.encode(x)
    assert z.shape == (2,) + enc.latent_shape(*shape)
    assert enc.latent_channels == 3 * tf * sf * sf
    assert torch.equal(enc.decode(z), x)


def test_pixel_channels_hold_local_blocks():
    enc = PixelSpaceToDepth(spatial_factor=2, temporal_factor=2)
    x = _clip(4, 4, 4, batch=1)
    z = enc.encode(x)
    # Latent (t'=1, h'=0, w'=1) holds pixels t in 2..3, h in 0..1, w in 2..3.
    block = x[0, :, 2:4, 0:2, 2:4].reshape(-1)
    assert torch.equal(z[0, :, 1, 0, 1], block)


@pytest.mark.parametrize("shape,name", [((3, 8, 8), "frames"), ((4, 6, 8), "height"), ((4, 8, 10), "width")])
def test_pixel_indivisible_shape_names_dimension_and_factor(shape, name):
    enc = PixelSpaceToDepth(spatial_factor=4, temporal_factor=2)
    with pytest.raises(ValueError, match=name) as err:
        enc.encode(_clip(*shape, batch=1))
    factor = "temporal_factor 2" if name == "frames" else "spatial_factor 4"
    assert factor in str(err.value)
    assert not enc.shape_ok(*shape)
    with pytest.raises(ValueError, match=name):
        enc.latent_shape(*shape)


def test_pixel_rejects_wrong_rank_and_channels():
    enc = PixelSpaceToDepth(2, 1)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        enc.encode(torch.zeros(1, 4, 2, 4, 4))
    with pytest.raises(ValueError, match="latents"):
        enc.decode(torch.zeros(1, 5, 2, 2, 2))


def test_pixel_decode_clamps_and_signature_is_json():
    enc = PixelSpaceToDepth(2, 2)
    out = enc.decode(torch.full((1, enc.latent_channels, 1, 2, 2), 3.0))
    assert out.max() == 1.0
    sig = enc.signature()
    assert json.loads(json.dumps(sig)) == sig
    assert sig != PixelSpaceToDepth(2, 1).signature()
    assert enc.frames_ok(4) and not enc.frames_ok(3)


# ---- hashed text ----------------------------------------------------------------------------

CAPTIONS = ["a red circle moving right on a blue background", "", "Two squares, spinning!"]


def _checksum(emb: torch.Tensor, mask: torch.Tensor) -> str:
    return hashlib.sha256(emb.numpy().tobytes() + mask.numpy().tobytes()).hexdigest()


def test_hashed_shapes_mask_and_zeroed_padding():
    enc = HashedTextEncoder(dim=16, max_length=12)
    emb, mask = enc.encode(CAPTIONS)
    assert emb.shape == (3, 12, 16) and emb.dtype == torch.float32
    assert mask.shape == (3, 12) and mask.dtype == torch.bool
    # 9 words + end; "" -> end only; "two squares , spinning !" + end.
    assert mask.sum(1).tolist() == [10, 1, 6]
    assert torch.all(emb[~mask] == 0)
    assert torch.all(emb[mask].abs().sum(-1) > 0)


def test_hashed_empty_caption_is_valid_and_deterministic():
    enc = HashedTextEncoder(dim=16, max_length=8)
    emb_a, mask_a = enc.encode(["", ""])
    assert mask_a.tolist() == [[True] + [False] * 7] * 2
    assert torch.equal(emb_a[0], emb_a[1])
    assert torch.equal(emb_a, HashedTextEncoder(dim=16, max_length=8).encode([""])[0].expand(2, -1, -1))


def test_hashed_deterministic_across_instances():
    a = HashedTextEncoder(dim=32, max_length=16).encode(CAPTIONS)
    b = HashedTextEncoder(dim=32, max_length=16).encode(CAPTIONS)
    assert _checksum(*a) == _checksum(*b)


def test_hashed_deterministic_across_processes():
    code = ("import hashlib; from litegen.encoders import HashedTextEncoder as H; "
            f"e, m = H(dim=32, max_length=16).encode({CAPTIONS!r}); "
            "print(hashlib.sha256(e.numpy().tobytes() + m.numpy().tobytes()).hexdigest())")
    # A different hash seed proves nothing depends on Python's salted hash().
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    expected = _checksum(*HashedTextEncoder(dim=32, max_length=16).encode(CAPTIONS))
    assert out.stdout.strip() == expected


def test_hashed_different_captions_and_word_order_differ():
    enc = HashedTextEncoder(dim=32, max_length=16)
    emb, _ = enc.encode(["red circle on blue", "blue circle on red", "a green square"])
    assert not torch.allclose(emb[0], emb[1])
    assert not torch.allclose(emb[0], emb[2])
    # Same bag of words, so without a position signal the two token *sets* would be identical and
    # an order-blind attention layer could not tell them apart.
    assert not any(torch.allclose(emb[0, 0], row) for row in emb[1])


def test_hashed_normalises_case_and_spacing():
    enc = HashedTextEncoder(dim=16, max_length=8)
    a, _ = enc.encode(["A  Red   Circle"])
    b, _ = enc.encode(["a red circle"])
    assert torch.equal(a, b)


def test_hashed_truncates_long_captions_but_keeps_end_token():
    enc = HashedTextEncoder(dim=8, max_length=5)
    long = " ".join(f"word{i}" for i in range(50))
    emb, mask = enc.encode([long, "word0 word1 word2 word3"])
    assert emb.shape == (2, 5, 8) and mask.all()
    assert enc.tokens(long)[-1] == "<end>" and len(enc.tokens(long)) == 5
    assert torch.equal(emb[0], emb[1])  # both truncate to the same four words + end


def test_hashed_signature_and_input_checks():
    enc = HashedTextEncoder(dim=8, max_length=4)
    sig = enc.signature()
    assert json.loads(json.dumps(sig)) == sig
    assert sig != HashedTextEncoder(dim=8, max_length=5).signature()
    with pytest.raises(TypeError, match="list of str"):
        enc.encode("a bare string")


# ---- builders -------------------------------------------------------------------------------

def test_build_video_encoder_pixel():
    enc = build_video_encoder(VideoEncoderConfig(kind="pixel", spatial_factor=4, temporal_factor=2))
    assert isinstance(enc, VideoEncoder) and isinstance(enc, PixelSpaceToDepth)
    assert enc.latent_shape(8, 32, 48) == (96, 4, 8, 12)


def test_build_text_encoder_hashed():
    enc = build_text_encoder(TextEncoderConfig(kind="hashed", dim=24, max_length=10))
    assert isinstance(enc, TextEncoder) and isinstance(enc, HashedTextEncoder)
    emb, mask = enc.encode(["hello"])
    assert emb.shape == (1, 10, 24) and enc.dim == 24


def test_build_rejects_unknown_kind_and_missing_path():
    with pytest.raises(ValueError, match="kind"):
        build_video_encoder(VideoEncoderConfig(kind="magic"))
    with pytest.raises(ValueError, match="kind"):
        build_text_encoder(TextEncoderConfig(kind="magic"))
    with pytest.raises(ValueError, match="path"):
        build_video_encoder(VideoEncoderConfig(kind="diffusers"))
    with pytest.raises(ValueError, match="path"):
        build_text_encoder(TextEncoderConfig(kind="t5"))


def test_hf_kinds_without_the_extra_say_how_to_install(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import x` raise ImportError, as if x were not installed.
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", "model_type": "t5"}))
    with pytest.raises(ImportError, match=r"litegen\[hf\]"):
        build_video_encoder(VideoEncoderConfig(kind="diffusers", path=str(tmp_path)))
    with pytest.raises(ImportError, match=r"litegen\[hf\]"):
        build_text_encoder(TextEncoderConfig(kind="t5", path=str(tmp_path)))
