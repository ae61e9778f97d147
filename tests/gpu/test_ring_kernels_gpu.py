"""GPU check of ring attention's CUDA block kernels (memory-efficient SDPA ops with log-sum-exp).

The CPU suite checks the same identities with the CPU flash kernel
(tests/unit/test_parallel_layout.py); these run only where CUDA is present.
"""

import pytest
import torch
import torch.nn.functional as F

from litegen.parallel.ring import block_backward, block_forward, key_bias, merge

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_block_kernels_merge_to_full_attention(dtype, tol, masked):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(2, 4, 200, 64, device="cuda", dtype=dtype, generator=gen) for _ in range(4))
    valid = torch.ones(2, 200, dtype=torch.bool, device="cuda")
    if masked:
        valid[1, 90:] = False  # the second block is fully masked for sample 1
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=valid[:, None, None, :])
    ref.backward(dout)
    blocks = [slice(0, 100), slice(100, 200)]
    biases = [key_bias(valid[:, b], dtype) if masked else None for b in blocks]
    out = lse = None
    for b, bias in zip(blocks, biases):
        out, lse = merge(out, lse, *block_forward(q, k[:, :, b], v[:, :, b], bias))
    out = out.to(dtype)
    torch.testing.assert_close(out, ref.detach(), atol=tol, rtol=tol)
    grads = [block_backward(dout, q, k[:, :, b], v[:, :, b], bias, out, lse) for b, bias in zip(blocks, biases)]
    torch.testing.assert_close(sum(g[0].float() for g in grads).to(dtype), qr.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(torch.cat([g[1] for g in grads], 2), kr.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(torch.cat([g[2] for g in grads], 2), vr.grad, atol=tol, rtol=tol)
