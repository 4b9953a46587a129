"""A machine peak measured in the same run, for the share of peak a backend achieves, and that share.

A peak is what this machine delivers on the kind of work a convolution lowers to, not a datasheet number:
on CPU a large float32 matmul (the faster of torch.mm and ONNX Runtime's MatMul) on torch's intra-op thread
count, and for bf16 rows a bf16 torch.mm where the CPU computes bf16 matmuls natively (oneDNN on AVX512_BF16
or AMX; elsewhere bf16 rows have no peak of their kind, and the entry says why); on CUDA a large matmul in the
row's precision (fp32 with TF32 off, TF32, fp16, bf16), timed with CUDA events. Int8 rows are compared with an
integer matmul (CPU: ONNX Runtime's u8 x s8 -> int32 MatMulInteger, the MLAS GEMM its QLinearConv lowers to;
CUDA: int8 x int8 -> int32 torch._int_mm), never with a float peak; without one they have no peak.

Each measurement is the best of several repetitions; a bench measures each peak before its timing and again
after it (measure_again) and keeps the best, so a peak taken while the machine was busy does not stand. A row
whose achieved GFLOP/s still exceed the peak is flagged (above_peak) and named in a warning
(above_peak_warning), never shown as a bare share above 100%."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from nfdeploy.errors import MissingExtraError, one_line, require
from nfdeploy.perf.flops import gflops
from nfdeploy.perf.result import Row
from nfdeploy.precision import get_precision

CPU_N = 1024  # 2.1 GFLOP per matmul: ~10-50 ms on a few cores, large enough to be compute bound
CUDA_N = 8192


def best_seconds(call: Callable[[], Any], seconds: float) -> tuple[float, int]:
    """(fastest call of `call` in wall seconds, repetitions) over `seconds`, at least 3 calls, after one
    warm-up call (thread pool, packed buffers)."""
    call()
    best, reps = float("inf"), 0
    t_end = time.perf_counter() + seconds
    while reps < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best, reps


def matmul_peak(
    device: str, precision: str, n: int, best_s: float, reps: int, what: str, **extra: Any
) -> dict[str, Any]:
    """The peak entry of an n x n x n matmul whose fastest call took `best_s`: 2 n^3 operations per call."""
    gflops = 2.0 * n**3 / best_s / 1e9
    return {
        "device": device,
        "precision": precision,
        "gflops": gflops,
        "n": n,
        "repetitions": reps,
        **extra,
        "what": what,
    }


def cpu_matmul_peak(seconds: float = 1.0, n: int = CPU_N) -> dict[str, Any]:
    """Best float32 matmul GFLOP/s on torch's intra-op thread count: the faster of torch.mm and ONNX Runtime's
    MatMul (MLAS sgemm) where ONNX Runtime is installed. Both are measured because neither always wins:
    torch's BLAS on an AMD EPYC with AVX-512 reached half of MLAS's rate (233 vs 519 GFLOP/s, 2 threads),
    and a peak below what the backends achieve would report shares above 100%."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    candidates = {"torch.mm": lambda: torch.mm(a, b)}
    try:
        candidates["onnxruntime MatMul"] = ort_matmul("fp32", n)
    except MissingExtraError:
        pass
    timed = {name: best_seconds(call, seconds / len(candidates)) for name, call in candidates.items()}
    rates = {name: 2.0 * n**3 / best / 1e9 for name, (best, _) in timed.items()}
    top = max(rates, key=rates.get)
    threads = torch.get_num_threads()
    what = (
        f"best of {timed[top][1]} float32 {top} {n}x{n} on {threads} threads (faster of "
        f"{' and '.join(f'{k} {v:.0f}' for k, v in rates.items())} GFLOP/s)"
    )
    return matmul_peak("cpu", "fp32", n, *timed[top], what, threads=threads, candidates_gflops=rates)


def ort_matmul(kind: str, n: int = CPU_N, threads: int | None = None) -> Callable[[], Any]:
    """One n x n x n matmul on ONNX Runtime's CPU EP (intra-op spinning off, as every nfdeploy session), as a
    call: kind "fp32" (MatMul, MLAS sgemm) or "int8" (MatMulInteger uint8 x int8 -> int32, MLAS's integer
    GEMM). The same runtime and threads for both: their ratio is the ceiling of int8 over fp32 on this CPU."""
    require("onnx", "onnx")
    ort = require("onnxruntime", "onnx")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
        types, op, out = (TensorProto.FLOAT, TensorProto.FLOAT), "MatMul", TensorProto.FLOAT
    elif kind == "int8":
        a, b = rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-127, 128, (n, n), dtype=np.int8)
        types, op, out = (TensorProto.UINT8, TensorProto.INT8), "MatMulInteger", TensorProto.INT32
    else:
        raise ValueError(f"kind must be fp32 or int8, got {kind!r}")
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])],
        f"peak_{kind}",
        [helper.make_tensor_value_info("a", types[0], [n, n]), helper.make_tensor_value_info("b", types[1], [n, n])],
        [helper.make_tensor_value_info("y", out, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"a": a, "b": b}
    return lambda: session.run(None, feeds)


def cpu_int8_matmul_peak(seconds: float = 1.0, n: int = CPU_N) -> dict[str, Any]:
    """Best uint8 x int8 -> int32 matmul giga-ops/s on ONNX Runtime's CPU EP (ort_matmul "int8") on torch's
    intra-op thread count; "gflops" holds them (2 ops per multiply-accumulate). A reason without ONNX Runtime."""
    try:
        run = ort_matmul("int8", n)
    except MissingExtraError as e:
        return no_peak("cpu", "int8", str(e))
    best, reps = best_seconds(run, seconds)
    threads = torch.get_num_threads()
    what = f"best of {reps} ONNX Runtime MatMulInteger u8 x s8 -> int32 {n}x{n} on {threads} threads (giga-ops/s)"
    return matmul_peak("cpu", "int8", n, best, reps, what, threads=threads)


def cpu_bf16_matmul_peak(seconds: float = 1.0, n: int = CPU_N) -> dict[str, Any]:
    """Best bf16 torch.mm GFLOP/s on torch's intra-op thread count, where oneDNN computes bf16 natively
    (AVX512_BF16 or AMX); elsewhere no peak: a bf16 matmul there is a float32 one with conversions, and a row
    set against it would compare with the wrong kind of work."""
    if not native_cpu_bf16():
        return no_peak("cpu", "bf16", "this CPU has no native bf16 matmul (oneDNN: no AVX512_BF16 or AMX)")
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    best, reps = best_seconds(lambda: torch.mm(a, b), seconds)
    threads = torch.get_num_threads()
    return matmul_peak("cpu", "bf16", n, best, reps, f"best of {reps} bf16 torch.mm {n}x{n} on {threads} threads",
                       threads=threads)  # fmt: skip


def native_cpu_bf16() -> bool:
    """Whether torch's CPU matmuls run bf16 natively here (oneDNN's check for AVX512_BF16/AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def best_cuda_seconds(fn: Any, seconds: float) -> tuple[float, int]:
    """(fastest call of `fn` in seconds by CUDA events, repetitions) over `seconds`, at least 3 calls, after a
    synchronised warm-up call."""
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best, reps = float("inf"), 0
    t_end = time.perf_counter() + seconds
    while reps < 3 or time.perf_counter() < t_end:
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        best = min(best, e0.elapsed_time(e1) / 1e3)
        reps += 1
    return best, reps


def cuda_matmul_peak(precision: str, seconds: float = 1.0, n: int = CUDA_N) -> dict[str, Any]:
    """Best torch.mm GFLOP/s on CUDA device 0 in `precision` (fp32 = TF32 off, tf32, fp16, bf16)."""
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        best, reps = best_cuda_seconds(lambda: torch.mm(a, b), seconds)
        a = b = None  # free the operands before empty_cache
        torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return matmul_peak("cuda", precision, n, best, reps, f"best of {reps} torch.mm {n}x{n} {precision} (CUDA events)")


def cuda_int8_matmul_peak(seconds: float = 1.0, n: int = CUDA_N) -> dict[str, Any]:
    """Best int8 x int8 -> int32 matmul (torch._int_mm) giga-ops/s on CUDA device 0; "gflops" holds them
    (2 ops per multiply-accumulate, as for the float peaks). A reason instead where the device has no int8 matmul."""
    if not hasattr(torch, "_int_mm"):
        return no_peak("cuda", "int8", f"torch {torch.__version__} has no int8 matmul (torch._int_mm)")
    a = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
    b = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
    try:
        torch._int_mm(a, b)
    except RuntimeError as e:  # e.g. a GPU without int8 tensor-core matmuls in this build
        return no_peak("cuda", "int8", f"torch._int_mm failed here: {one_line(e, 200)}")
    best, reps = best_cuda_seconds(lambda: torch._int_mm(a, b), seconds)
    a = b = None  # free the operands before empty_cache
    torch.cuda.empty_cache()
    what = f"best of {reps} int8 torch._int_mm {n}x{n} -> int32 (CUDA events; giga-ops/s)"
    return matmul_peak("cuda", "int8", n, best, reps, what)


def no_peak(device: str, precision: str, reason: str) -> dict[str, Any]:
    """The peak entry of a (device, precision) for which nothing was measured: gflops None and why."""
    return {"device": device, "precision": precision, "gflops": None, "what": f"no {precision} peak measured: {reason}"}


def peak_kind(device: str, precision: str) -> tuple[str, str]:
    """The (device, matmul kind) a row is compared with: int8 forms (quantized precisions) share one int8
    peak; on CPU bf16 rows have a bf16 peak and the other float rows share the float32 sgemm peak (what the
    CPU runtimes compute fp16 graphs in); on CUDA each precision has its own."""
    if get_precision(precision).quantized_from:
        return device, "int8"
    if device == "cpu":
        return device, "bf16" if precision == "bf16" else "fp32"
    return device, precision


def measure_peak(key: tuple[str, str]) -> dict[str, Any]:
    """One measurement of the peak of `key` (peak_kind's (device, kind))."""
    device, kind = key
    if device == "cpu":
        return {"int8": cpu_int8_matmul_peak, "bf16": cpu_bf16_matmul_peak}.get(kind, cpu_matmul_peak)()
    return cuda_int8_matmul_peak() if kind == "int8" else cuda_matmul_peak(kind)


def peak_for(device: str, precision: str, cache: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any] | None:
    """The measured peak a row of (device, precision) is compared with, measured once per run (`cache`);
    None for fp64 (no peak here). An entry whose "gflops" is None says why no peak was measured."""
    if precision == "fp64":
        return None
    key = peak_kind(device, precision)
    if key not in cache:
        cache[key] = measure_peak(key)
    return cache[key]


def measure_again(cache: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Measure every peak of `cache` once more and keep the better entry: a peak is the best of the
    measurements of a run (a matmul timed while the machine was busy is slow, and would let backends timed in
    a quieter moment exceed it). "measurements" lists each measurement's GFLOP/s, in order."""
    for key, before in list(cache.items()):
        if before["gflops"] is None:
            continue  # no peak of this kind here: measuring again would say the same
        again = measure_peak(key)
        history = before.get("measurements", [before["gflops"]]) + ([again["gflops"]] if again["gflops"] else [])
        best = again if (again["gflops"] or 0) > before["gflops"] else before
        cache[key] = {**best, "measurements": history}


def annotate_work(row: Row, work: dict[str, Any], peaks: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Add achieved GFLOP/s and its share of the measured peak of the row's device and precision (None,
    with peak_note, where no peak of its kind was measured: int8 on CPU without ONNX Runtime, bf16 on a CPU
    without native bf16); above_peak: the share exceeds 1 (a figure to distrust, named by above_peak_warning)."""
    row["gflops"] = gflops(work.get("macs_per_sample"), row["batch"], row["median_ms"])
    peak = peak_for(row["device"], row["precision"], peaks) if row["gflops"] is not None else None
    row["peak_gflops"] = peak["gflops"] if peak else None
    row["peak_share"] = row["gflops"] / peak["gflops"] if peak and peak["gflops"] else None
    row["above_peak"] = row["peak_share"] is not None and row["peak_share"] > 1.0
    if peak and not peak["gflops"]:
        row["peak_note"] = peak["what"]


def above_peak_warning(rows: list[Row]) -> str | None:
    """The warning that names every row above its peak ("torch-cpu-bf16-folded batch 8 152.6%"), with why it
    can happen; None when no row is."""
    above = [r for r in rows if r.get("above_peak")]
    if not above:
        return None
    named = ", ".join(f"{r['name']} batch {r['batch']} {100 * r['peak_share']:.1f}%" for r in above)
    why = (
        "even the best matmul measured in this run was slower than these backends (a machine busy throughout, "
        "or a kernel family faster than the matmul measured): these shares compare with this run's matmul, not "
        "with the device's limit"
    )
    return f"achieved GFLOP/s above the measured peak ({named}): {why}"


__all__ = [
    "CPU_N",
    "above_peak_warning",
    "annotate_work",
    "matmul_peak",
    "cpu_bf16_matmul_peak",
    "measure_again",
    "measure_peak",
    "native_cpu_bf16",
    "CUDA_N",
    "best_cuda_seconds",
    "best_seconds",
    "cpu_int8_matmul_peak",
    "cpu_matmul_peak",
    "cuda_int8_matmul_peak",
    "cuda_matmul_peak",
    "no_peak",
    "ort_matmul",
    "peak_for",
    "peak_kind",
]
