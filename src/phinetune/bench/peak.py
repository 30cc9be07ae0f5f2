"""The device's matmul peak, measured (not taken from a datasheet), for MFU figures."""

from __future__ import annotations

import time

import torch


def matmul_peak(
    dtype: torch.dtype, device: str = "cpu", size: tuple[int, int, int] = (2048, 3072, 3072), reps: int = 5
) -> float:
    """Best FLOP/s of an (m x k) @ (k x n) matmul over a few timed repetitions."""
    m, k, n = size
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best = 0.0
    for i in range(reps + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 2:  # warm-up excluded
            best = max(best, 2 * m * k * n / (time.perf_counter() - start))
    return best


def measured_peaks(device: str) -> dict[str, float]:
    size = (8192, 8192, 8192) if device == "cuda" else (2048, 3072, 3072)
    return {"bf16": matmul_peak(torch.bfloat16, device, size), "fp32": matmul_peak(torch.float32, device, size)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
