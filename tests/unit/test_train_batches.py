"""From loader batches to model inputs: raw clips are encoded in shape groups, packs become tokens."""

import types

import torch

from litegen.config import compose
from litegen.encoders import build_video_encoder
from litegen.models.packed import pack_clips
from litegen.train.batches import batch_work, encode_pixels, model_inputs


class CountingEncoder:
    """The pixel encoder, counting calls to show raw clips are encoded one batch per shape."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def encode(self, pixels):
        self.calls.append(tuple(pixels.shape))
        return self.inner.encode(pixels)


def fake_run(encoder):
    cfg = compose([])
    return types.SimpleNamespace(cfg=cfg, video_encoder=encoder, dist=types.SimpleNamespace(device=torch.device("cpu")),
                                 dims=types.SimpleNamespace(dp=1))


def test_raw_packed_clips_are_encoded_per_shape_and_packed():
    cfg = compose([])
    encoder = CountingEncoder(build_video_encoder(cfg.encoders.video))
    gen = torch.Generator().manual_seed(0)
    pixels = [torch.rand(3, 8, 32, 32, generator=gen) * 2 - 1, torch.rand(3, 4, 32, 48, generator=gen) * 2 - 1,
              torch.rand(3, 8, 32, 32, generator=gen) * 2 - 1]
    batch = {"pixels": pixels, "packed": True, "captions": ["a", "b", "c"], "token_budget": 4096}
    _, packed = model_inputs(fake_run(encoder), batch)
    assert sorted(encoder.calls) == [(1, 3, 4, 32, 48), (2, 3, 8, 32, 32)]
    want = pack_clips([encoder.inner.encode(p[None])[0] for p in pixels], cfg.model.patch_size)
    assert torch.equal(packed.tokens, want.tokens) and packed.layout.lengths == want.layout.lengths
    clips, tokens, flops = batch_work(cfg.model, packed, text_len=32)
    assert clips == 3 and tokens == 8 * 8 * 8 * 2 + 4 * 8 * 12 and flops > 0


def test_bucket_batch_of_raw_clips_is_one_encoder_call():
    cfg = compose([])
    encoder = CountingEncoder(build_video_encoder(cfg.encoders.video))
    latents = encode_pixels(encoder, torch.zeros(4, 3, 8, 32, 32), torch.device("cpu"))
    assert encoder.calls == [(4, 3, 8, 32, 32)] and latents.shape == (4, 12, 8, 16, 16)
