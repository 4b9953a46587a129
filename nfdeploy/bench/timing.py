"""Timing one active backend at one batch size: warm-up by time, host wall time and CUDA events.

What a number is, is part of the number (HOST_TIMING, DEVICE_TIMING, SCOPE say it in the reports):
host_ms is host wall time of one call, synchronisation included; device_ms (CUDA only) is the time
between two CUDA events recorded around the same call. A backend whose run includes host<->device
copies (ONNX Runtime, TensorRT on CUDA: `copies_in_run`) is timed through run(numpy); the others
through run_tensor on an input already on their device.
"""

from __future__ import annotations

import platform
import resource
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nfdeploy.runtime.base import Backend, BackendUnavailable

HOST_TIMING = {
    "cpu": "host wall time (time.perf_counter) of backend.run(numpy batch) -> numpy logits",
    "cuda-torch": "host wall time of run_tensor on a pre-allocated device input + wait for the device (no host<->device copies)",
    "cuda-run": "host wall time of the synchronous backend.run(numpy batch), host->device and device->host copies included",
}
DEVICE_TIMING = {
    "cuda-torch": "CUDA events around run_tensor on a device-resident input: device compute only",
    "cuda-run": "CUDA events around the synchronous run(): GPU-clock span of the whole call, copies included",
}
SCOPE = {"cpu": "run() host", "cuda-torch": "device compute", "cuda-run": "run() incl. copies"}


# --------------------------------------------------------------------------------------- timing

def _stats(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"min": float(a.min()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


def _max_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if platform.system() == "Darwin" else r / 1024


def _threads(backend: Backend) -> int | None:
    try:
        return backend.describe().get("threads")
    except Exception:  # noqa: BLE001 - describe() is informational
        return None


def time_backend(backend: Backend, batch_size: int, input_shape: Sequence[int], warmup_s: float = 1.0,
                 min_time_s: float = 2.0, min_iters: int = 10, max_iters: int = 10_000, *,
                 max_time_s: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Time `backend` on a random N(0,1) float32 batch of `batch_size` x `input_shape`.

    Warm-up: calls until `warmup_s` has passed (at least one; two on CUDA, where the first may
    compile or capture a graph). Timed: calls until both `min_time_s` and `min_iters` are reached,
    or `max_iters`; `max_time_s` (optional) stops a very slow backend early, after at least 3 calls
    ("truncated": true in the result). See the module docstring for what host_ms / device_ms mean."""
    x = np.random.default_rng(seed).standard_normal((batch_size, *input_shape)).astype(np.float32)
    cuda = backend.device == "cuda"
    events = stream = None
    if cuda:
        if not torch.cuda.is_available():
            raise BackendUnavailable("CUDA backend but torch sees no CUDA device")
        mode = "cuda-run" if backend.copies_in_run else "cuda-torch"
        if backend.copies_in_run:
            call = lambda: backend.run(x)  # noqa: E731
            stream = backend.stream or torch.cuda.current_stream()
        else:  # the input lives on the device, outside the timing; the events bracket device work only
            xd = torch.from_numpy(x).to(device=backend.input_device, dtype=backend.input_dtype)
            call: Callable[[], Any] = lambda: backend.run_tensor(xd)  # noqa: E731
            stream = torch.cuda.current_stream()
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        sync = events[1].synchronize
    else:
        mode = "cpu"
        call = lambda: backend.run(x)  # noqa: E731
        sync = lambda: None  # noqa: E731

    # Warm-up by time.
    t_w0 = time.perf_counter()
    n_warm, min_warm = 0, 2 if cuda else 1
    while True:
        call()
        if cuda:
            torch.cuda.synchronize()
        n_warm += 1
        if time.perf_counter() - t_w0 >= warmup_s and n_warm >= min_warm:
            break
    warm_s = time.perf_counter() - t_w0

    if cuda:
        torch.cuda.synchronize()
        start_alloc = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    host: list[float] = []
    dev: list[float] = []
    truncated = False
    t0_all = time.perf_counter()
    while len(host) < max_iters:
        if cuda:
            t0 = time.perf_counter()
            events[0].record(stream)
            call()
            events[1].record(stream)
            sync()
            t1 = time.perf_counter()
            dev.append(events[0].elapsed_time(events[1]))
        else:
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
        host.append((t1 - t0) * 1e3)
        elapsed = t1 - t0_all
        if elapsed >= min_time_s and len(host) >= min_iters:
            break
        if max_time_s is not None and elapsed >= max_time_s and len(host) >= 3:
            truncated = len(host) < min_iters
            break
    timed_s = time.perf_counter() - t0_all

    row: dict[str, Any] = {
        "name": backend.name, "device": backend.device, "precision": backend.precision,
        "math_mode": backend.math_mode, "batch": int(batch_size), "input_shape": [int(s) for s in input_shape],
        "iterations": len(host), "warmup_iterations": n_warm, "warmup_s": warm_s, "timed_s": timed_s,
        "truncated": truncated,
        "host_ms": _stats(host), "device_ms": _stats(dev) if dev else None,
        "primary": "device_ms" if dev else "host_ms",
        "timing": {"host_ms": HOST_TIMING[mode], "device_ms": DEVICE_TIMING.get(mode)},
        "scope": SCOPE[mode],
        "threads": _threads(backend),
    }
    med = row[row["primary"]]["median"]
    row["median_ms"] = med
    row["throughput_ips"] = batch_size / (med / 1e3)
    row["host_throughput_ips"] = batch_size / (row["host_ms"]["median"] / 1e3)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        row.update(peak_memory_mb=peak / 2**20, peak_memory_above_start_mb=max(0, peak - start_alloc) / 2**20,
                   peak_memory_kind="torch.cuda.max_memory_allocated (torch's allocator, whole process; "
                                    "ONNX Runtime / TensorRT internal allocations not counted)")
    else:
        row.update(peak_memory_mb=_max_rss_mb(), peak_memory_kind="process max RSS (getrusage ru_maxrss; "
                                                                   "monotonic over the whole process)")
    return row


__all__ = ["DEVICE_TIMING", "HOST_TIMING", "SCOPE", "time_backend"]
