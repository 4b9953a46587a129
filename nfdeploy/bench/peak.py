"""A machine peak measured in the same run, for the share of peak a backend achieves: on CPU a large
float32 matmul (torch.mm, sgemm) on torch's intra-op threads; on CUDA a large matmul in the row's
precision (fp32 with TF32 off, TF32, fp16, bf16), timed with CUDA events. The peak is the best of
several repetitions (achieved GFLOP/s of the fastest one): what this machine delivers on the kind of
work a convolution lowers to, not a datasheet number."""

from __future__ import annotations

import time
from typing import Any

import torch

CPU_N = 1024  # 2.1 GFLOP per matmul: ~10-50 ms on a few cores, large enough to be compute bound
CUDA_N = 8192


def cpu_matmul_peak(seconds: float = 1.0, n: int = CPU_N) -> dict[str, Any]:
    """Best float32 torch.mm GFLOP/s over `seconds` of repetitions on torch's intra-op threads."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best = float("inf")
    reps = 0
    t_end = time.perf_counter() + seconds
    while reps < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return {"device": "cpu", "precision": "fp32", "gflops": 2.0 * n ** 3 / best / 1e9, "n": n, "repetitions": reps,
            "threads": torch.get_num_threads(),
            "what": f"best of {reps} float32 torch.mm {n}x{n} on {torch.get_num_threads()} torch threads"}


def cuda_matmul_peak(precision: str, seconds: float = 1.0, n: int = CUDA_N) -> dict[str, Any]:
    """Best torch.mm GFLOP/s on CUDA device 0 in `precision` (fp32 = TF32 off, tf32, fp16, bf16)."""
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        torch.mm(a, b)
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best, reps = float("inf"), 0
        t_end = time.perf_counter() + seconds
        while reps < 3 or time.perf_counter() < t_end:
            e0.record()
            torch.mm(a, b)
            e1.record()
            e1.synchronize()
            best = min(best, e0.elapsed_time(e1) / 1e3)
            reps += 1
        del a, b
        torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return {"device": "cuda", "precision": precision, "gflops": 2.0 * n ** 3 / best / 1e9, "n": n,
            "repetitions": reps, "what": f"best of {reps} torch.mm {n}x{n} {precision} (CUDA events)"}


def peak_for(device: str, precision: str, cache: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any] | None:
    """The measured peak a row of (device, precision) is compared with, measured once per run
    (`cache`). CPU rows of any precision are compared with the float32 sgemm peak (what the CPU
    runtimes compute in); fp64 rows have no peak here (None)."""
    if precision == "fp64":
        return None
    key = ("cpu", "fp32") if device == "cpu" else ("cuda", precision)
    if key not in cache:
        cache[key] = cpu_matmul_peak() if device == "cpu" else cuda_matmul_peak(precision)
    return cache[key]


__all__ = ["CPU_N", "CUDA_N", "cpu_matmul_peak", "cuda_matmul_peak", "peak_for"]
