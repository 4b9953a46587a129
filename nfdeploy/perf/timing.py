"""Timing one call of an active backend (BatchTimer), its own memory, and one backend alone (time_backend).

What a number is, is part of the number (HOST_TIMING, DEVICE_TIMING, SCOPE say it in the reports):
host_ms is host wall time of one call, synchronisation included; device_ms (CUDA only) is the time
between two CUDA events recorded around the same call. A backend whose run includes host<->device
copies (ONNX Runtime, TensorRT on CUDA: `copies_in_run`) is timed through run(numpy); the others
through run_tensor on an input already on their device.

Memory of a backend ("own memory", MEMORY_KIND): on CPU, the growth of the process's resident set
during activate() plus the peak growth during the first run at a batch size: VmRSS from
/proc/self/status before, VmHWM after, with the high-water mark reset (/proc/self/clear_refs "5")
just before, so one backend's peak does not leak into the next. Memory freed earlier and reused by
the allocator is not counted. On CUDA: the same two growths of torch.cuda.max_memory_allocated
(torch's allocator only). ONNX Runtime and TensorRT on CUDA allocate outside torch's allocator: their
memory is not measured (None, MEMORY_KIND["cuda-outside-torch"]), never a torch growth of about 0 MiB.

A backend that cannot be activated or crashes while timed is a failure with its message (not_timed:
broken, "failed to load"; crashed, "crashed while timing"); only BackendUnavailable is skipped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nfdeploy.errors import one_line
from nfdeploy.perf.result import CRASHED_TIMING, LOAD_FAILED, NotTimed
from nfdeploy.perf.rounds import RoundPlan, interleaved_rounds
from nfdeploy.runtime.base import Backend, BackendBroken, BackendUnavailable, random_batch
from nfdeploy.status import Status

HOST_TIMING = {
    "cpu": "host wall time (time.perf_counter) of backend.run(numpy batch) -> numpy logits",
    "cuda-torch": "host wall time of run_tensor on a pre-allocated device input + wait for the device "
    "(no host<->device copies)",
    "cuda-run": "host wall time of the synchronous backend.run(numpy batch), "
    "host->device and device->host copies included",
}
DEVICE_TIMING = {
    "cuda-torch": "CUDA events around run_tensor on a device-resident input: device compute only",
    "cuda-run": "CUDA events around the synchronous run(): GPU-clock span of the whole call, copies included",
}
SCOPE = {"cpu": "run() host", "cuda-torch": "device compute", "cuda-run": "run() incl. copies"}


MEMORY_KIND = {
    "cpu": "RSS growth during activate() + peak RSS growth during the first run at this batch "
    "(/proc/self/status VmRSS before, VmHWM after a /proc/self/clear_refs reset)",
    "cuda": "torch.cuda.max_memory_allocated growth during activate() + during the first run at this batch "
    "(torch's allocator only)",
    "cuda-outside-torch": "not measured: the runtime allocates device memory outside torch's allocator",
}


class Stopwatch:
    """Seconds since it started: how long a step took, for a log line or a report's wall time (never a latency
    figure: those come from interleaved rounds)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def memory_kind(backend: Backend) -> str:
    """The key of MEMORY_KIND that says how `backend`'s own memory is measured (or that it is not)."""
    if backend.device != "cuda":
        return "cpu"
    return "cuda-outside-torch" if backend.copies_in_run else "cuda"


def not_timed(name: str, e: BaseException, *, stage: str, **extra: Any) -> NotTimed:
    """Why backend `name` has no row after exception `e` at `stage` ("load": activate(), "run": while timing):
    skipped (BackendUnavailable: cannot run here), broken (it failed to load, or BackendBroken), or crashed."""
    if isinstance(e, BackendUnavailable):
        return NotTimed(name, Status.SKIPPED, str(e), **extra)
    if stage == "load" or isinstance(e, BackendBroken):
        return NotTimed(name, Status.BROKEN, one_line(e), LOAD_FAILED, **extra)
    return NotTimed(name, Status.CRASHED, one_line(e), CRASHED_TIMING, **extra)


# --------------------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_growth_mb(device: str, fn: Callable[[], Any]) -> float | None:
    """Peak memory growth (MiB) while `fn()` runs: CPU resident set (VmHWM after a reset minus VmRSS
    before; without a resettable VmHWM, VmRSS after minus before), CUDA torch allocator. None where
    neither can be read."""
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - start) / 2**20
    before = _proc_status_kib("VmRSS")
    hwm = _reset_hwm()
    fn()
    after = _proc_status_kib("VmHWM" if hwm else "VmRSS")
    if before is None or after is None:
        return None
    return max(0, after - before) / 1024


# --------------------------------------------------------------------------------------- timing


class BatchTimer:
    """One timed call of an active backend on a fixed random batch (runtime.base.random_batch): returns
    (host_ms, device_ms or None). `mode` keys HOST_TIMING / DEVICE_TIMING / SCOPE; `primary` is the
    timing that latencies use (device_ms on CUDA, host_ms on CPU)."""

    def __init__(self, backend: Backend, batch_size: int, input_shape: Sequence[int], seed: int = 0):
        self.backend, self.batch = backend, int(batch_size)
        self.input_shape = [int(s) for s in input_shape]
        x = random_batch(backend, self.batch, seed)
        self.cuda = backend.device == "cuda"
        if self.cuda:
            if not torch.cuda.is_available():
                raise BackendUnavailable("CUDA backend but torch sees no CUDA device")
            self.mode = "cuda-run" if backend.copies_in_run else "cuda-torch"
            if backend.copies_in_run:
                self._call: Callable[[], Any] = lambda: backend.run(x)
                self._stream = backend.stream or torch.cuda.current_stream()
            else:  # the input lives on the device, outside the timing; the events bracket device work only
                xd = torch.from_numpy(x).to(device=backend.input_device, dtype=backend.input_dtype)
                self._call = lambda: backend.run_tensor(xd)
                self._stream = torch.cuda.current_stream()
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        else:
            self.mode = "cpu"
            self._call = lambda: backend.run(x)
        self.primary = "device_ms" if self.cuda else "host_ms"
        self.scope = SCOPE[self.mode]

    def __call__(self) -> tuple[float, float | None]:
        if self.cuda:
            e0, e1 = self._events
            t0 = time.perf_counter()
            e0.record(self._stream)
            self._call()
            e1.record(self._stream)
            e1.synchronize()
            t1 = time.perf_counter()
            return (t1 - t0) * 1e3, e0.elapsed_time(e1)
        t0 = time.perf_counter()
        self._call()
        return (time.perf_counter() - t0) * 1e3, None

    def first_run_memory_mb(self) -> float | None:
        """Peak memory growth of one (untimed) call: the batch's activations and workspaces (None: not measured)."""
        if memory_kind(self.backend) == "cuda-outside-torch":
            self._call()
            return None
        return memory_growth_mb(self.backend.device, self._call)


def activate_measured(backend: Backend) -> float | None:
    """backend.activate(), returning the memory growth (MiB) it caused (see MEMORY_KIND; None: not measured)."""
    if memory_kind(backend) == "cuda-outside-torch":
        backend.activate()
        return None
    return memory_growth_mb(backend.device, backend.activate)


def _threads(backend: Backend) -> int | None:
    try:
        return backend.describe().get("threads")
    except Exception:  # noqa: BLE001 - describe() is informational
        return None


def member_row(timer: BatchTimer, m: dict[str, Any], memory_mb: float | None) -> dict[str, Any]:
    """A report row of one backend at one batch from its interleaved_rounds member result."""
    b = timer.backend
    row: dict[str, Any] = {
        "name": b.name,
        "device": b.device,
        "precision": b.precision,
        "math_mode": b.math_mode,
        "batch": timer.batch,
        "input_shape": timer.input_shape,
        **{
            k: m[k]
            for k in (
                "iterations",
                "rounds",
                "round_iters",
                "warmup_iterations",
                "warmup_s",
                "timed_s",
                "settled",
                "noisy",
                "cv",
                "median_ci95_ms",
                "window_medians_ms",
                "round_medians_ms",
            )
        },
        "truncated": m["iterations"] < 3,
        "host_ms": m["host_ms"],
        "device_ms": m["device_ms"],
        "primary": timer.primary,
        "timing": {"host_ms": HOST_TIMING[timer.mode], "device_ms": DEVICE_TIMING.get(timer.mode)},
        "scope": timer.scope,
        "threads": _threads(b),
        "median_ms": m["median_ms"],
        "memory_mb": memory_mb,
        "memory_kind": MEMORY_KIND[memory_kind(b)],
        # torch.compile backends: whether this batch size ran compiled (False: dynamo fell back to eager).
        "ran_compiled": (getattr(b, "compiled_batches", None) or {}).get(timer.batch),
    }
    row["throughput_ips"] = timer.batch / (row["median_ms"] / 1e3)
    row["host_throughput_ips"] = timer.batch / (row["host_ms"]["median"] / 1e3)
    return row


def time_backend(
    backend: Backend,
    batch_size: int,
    input_shape: Sequence[int],
    warmup_s: float = 1.0,
    min_time_s: float = 2.0,
    min_iters: int = 10,
    max_iters: int = 100_000,
    *,
    max_time_s: float | None = None,
    seed: int = 0,
    activation_memory_mb: float | None = 0.0,
    budget_end: float | None = None,
) -> dict[str, Any]:
    """Time one active `backend` alone at `batch_size` in rounds until stable (rounds.py; a
    one-member group): warm-up by time, then rounds until min_time_s, min_iters and stability, or
    the max_time_s cap ("noisy": true when it did not settle). `activation_memory_mb` is added to the
    first run's memory growth to give the row's memory_mb."""
    timer = BatchTimer(backend, batch_size, input_shape, seed)
    run_mb = timer.first_run_memory_mb()
    plan = RoundPlan(
        warmup_s=warmup_s,
        min_time_s=min_time_s,
        min_iters=min_iters,
        max_time_s=max_time_s,
        max_iters=max_iters,
        min_warmup_calls=2 if timer.cuda else 1,
    )
    res = interleaved_rounds({backend.name: timer}, plan, primary=timer.primary, budget_end=budget_end)
    mem = None if run_mb is None or activation_memory_mb is None else activation_memory_mb + run_mb
    row = member_row(timer, res["members"][backend.name], mem)
    row["stopped_by"] = res["stopped_by"]
    return row


def time_group(
    backends: dict[str, Backend],
    batch_size: int,
    input_shape: Sequence[int],
    plan: RoundPlan,
    *,
    ratios: dict[str, tuple[str, str]] | None = None,
    activation_memory_mb: dict[str, float | None] | None = None,
    budget_end: float | None = None,
    seed: int = 0,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Time active `backends` ({label: backend}) side by side in interleaved rounds at one batch size.

    `ratios`: {ratio name: (label A, label B)}, each reported as A/B from paired rounds.
    Returns ({label: row}, {ratio name: ratio_summary}, {"rounds", "settled", "stopped_by", ...}).
    Each row's memory_mb is its activation memory (from `activation_memory_mb`) plus its first run's."""
    ratios = ratios or {}
    timers = {k: BatchTimer(b, batch_size, input_shape, seed) for k, b in backends.items()}
    run_mb = {k: t.first_run_memory_mb() for k, t in timers.items()}
    primaries = {t.primary for t in timers.values()}
    primary = primaries.pop() if len(primaries) == 1 else "host_ms"  # mixed devices: compare host time
    res = interleaved_rounds(timers, plan, ratios=list(ratios.values()), primary=primary, budget_end=budget_end)
    act = activation_memory_mb or {}
    rows = {}
    for k, t in timers.items():
        a = act.get(k, 0.0)
        mem = None if run_mb[k] is None or a is None else a + run_mb[k]
        rows[k] = member_row(t, res["members"][k], mem)
        rows[k]["stopped_by"] = res["stopped_by"]
        if primary != t.primary:
            rows[k]["primary"] = primary
    out_ratios = {name: res["ratios"][f"{a}/{b}"] for name, (a, b) in ratios.items()}
    info = {
        k: res[k]
        for k in (
            "rounds",
            "settled",
            "stopped_by",
            "warmup_s",
            "timed_s",
            "cap_s",
            "band",
            "window_rounds",
            "windows",
            "order",
        )
    }
    info["members"] = list(backends)
    return rows, out_ratios, info


__all__ = [
    "Stopwatch",
    "DEVICE_TIMING",
    "HOST_TIMING",
    "MEMORY_KIND",
    "SCOPE",
    "BatchTimer",
    "activate_measured",
    "member_row",
    "memory_growth_mb",
    "memory_kind",
    "not_timed",
    "time_backend",
    "time_group",
]
