"""GPU check of the attention seam: the flash-attn path agrees with PyTorch SDPA in bf16/fp16."""

import pytest
import torch
import torch.nn.functional as F

from litegen.models.attention import attention, attention_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def sdpa_reference(q, k, v, attn_mask=None):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seq_q,seq_k", [(256, 256), (300, 77)])
def test_flash_path_matches_sdpa(dtype, seq_q, seq_k):
    pytest.importorskip("flash_attn")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, seq_q, 8, 64, device="cuda", dtype=dtype, generator=gen)
    k, v = (torch.randn(2, seq_k, 8, 64, device="cuda", dtype=dtype, generator=gen) for _ in range(2))
    assert attention_backend(q, k, v) == "flash"
    torch.testing.assert_close(attention(q, k, v), sdpa_reference(q, k, v), atol=2e-2, rtol=2e-2)


def test_masked_attention_on_cuda_uses_sdpa_and_masks():
    q = torch.randn(2, 128, 4, 64, device="cuda", dtype=torch.bfloat16)
    k = v = torch.randn(2, 16, 4, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(2, 1, 1, 16, dtype=torch.bool, device="cuda")
    mask[1, ..., 8:] = False
    assert attention_backend(q, k, v, mask) == "sdpa"
    torch.testing.assert_close(attention(q, k, v, mask)[1], attention(q, k[:, :8], v[:, :8])[1],
                               atol=2e-2, rtol=2e-2)
