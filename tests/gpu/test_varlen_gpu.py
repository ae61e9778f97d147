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
