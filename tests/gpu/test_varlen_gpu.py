"""GPU check of packed (variable-length) attention: flash-attn's varlen kernel equals per-clip SDPA."""

import pytest
import torch
import torch.nn.functional as F

from litegen.models.attention import Varlen, attention, attention_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_varlen_matches_each_clip_alone(dtype):
    pytest.importorskip("flash_attn")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q_lens, k_lens = [300, 17, 1024], [300, 17, 1024]
    q, k, v = (torch.randn(1, sum(lens), 8, 64, device="cuda", dtype=dtype, generator=gen)
               for lens in (q_lens, k_lens, k_lens))
    varlen = Varlen.from_lengths(q_lens, k_lens, device="cuda")
    assert attention_backend(q, k, v, varlen=varlen) == "flash_varlen"
    alone = [F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in parts)).transpose(1, 2)
             for parts in zip(q.split(q_lens, 1), k.split(k_lens, 1), v.split(k_lens, 1))]
    torch.testing.assert_close(attention(q, k, v, varlen=varlen), torch.cat(alone, 1), atol=2e-2, rtol=2e-2)


def test_fp32_packed_attention_on_cuda_falls_back_to_sdpa():
    q = torch.randn(1, 96, 4, 32, device="cuda")
    varlen = Varlen.from_lengths([32, 64], [32, 64], device="cuda")
    assert attention_backend(q, q, q, varlen=varlen) in ("sdpa_mask", "sdpa_loop")
    out = attention(q, q, q, varlen=varlen)
    ref = F.scaled_dot_product_attention(*(x[:, :32].transpose(1, 2) for x in (q, q, q))).transpose(1, 2)
    torch.testing.assert_close(out[:, :32], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_flash_varlen_on_an_sp_chunk_with_empty_clips_matches_sdpa(dtype):
    """A sequence-parallel rank's cross-attention chunk (litegen/parallel/packed.query_chunk): clips
    with no query in the chunk (zero-length segments), a straddling clip and padding queries; the
    flash kernel's output and gradients must equal per-clip SDPA in fp32."""
    pytest.importorskip("flash_attn")
    from litegen.parallel.packed import query_chunk

    gen = torch.Generator(device="cuda").manual_seed(1)
    clips, captions = [300, 17, 1024, 40], [12, 7, 30, 5]
    varlen = query_chunk(Varlen.from_lengths(clips, captions, device="cuda"), 310, 310 + 1100)
    assert varlen.q_lens == (0, 7, 1024, 40 + 29)  # 29 padding queries join the last clip
    q = torch.randn(1, 1100, 8, 64, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    k, v = (torch.randn(1, sum(captions), 8, 64, device="cuda", dtype=dtype, generator=gen).requires_grad_()
            for _ in range(2))
    assert attention_backend(q, k, v, varlen=varlen) == "flash_varlen"
    out = attention(q, k, v, varlen=varlen)
    out.float().square().sum().backward()
    grads = [x.grad for x in (q, k, v)]
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = torch.cat([F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q32[:, qs:qe], k32[:, ks:ke],
                                                                                   v32[:, ks:ke]))).transpose(1, 2)
                     for qs, qe, ks, ke in varlen.segments()], 1)
    ref.square().sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    for got, want in zip(grads, (q32.grad, k32.grad, v32.grad)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)
    assert float(k.grad[0, :12].abs().max()) == 0.0  # clip 0 has no query here: its caption keys get none
