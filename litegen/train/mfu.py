"""Peak FLOP/s per device for the MFU estimate.

CUDA: dense bf16 tensor-core spec figures. CPU has no meaningful spec figure, so MFU there is
relative to a measured fp32 matmul rate on this machine (said so in the console and README).
"""

import time
from typing import Optional

import torch

# Dense (no sparsity) bf16 peak TFLOP/s by device-name substring, most specific first.
CUDA_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("H800", 989.0), ("L40S", 362.0), ("L40", 181.0),
    ("A6000", 155.0), ("A10", 125.0), ("4090", 165.0), ("B200", 2250.0),
)


def measured_matmul_tflops(device: torch.device, size: int = 1024, repeats: int = 8) -> float:
    """Best-of fp32 matmul throughput; ~0.3 s on 2 CPU cores."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up (thread pool, allocator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def peak_tflops(device: torch.device, override: Optional[float]) -> tuple[Optional[float], str]:
    """(peak TFLOP/s per device, where it came from)."""
    if override:
        return override, "config train.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in CUDA_PEAK_TFLOPS:
            if key in name:
                return value, f"{name} bf16 dense spec"
        return None, f"unknown GPU {name!r}: set train.peak_tflops"
    return measured_matmul_tflops(device), "measured fp32 matmul on this CPU"
