"""The most int8 can gain over float32 on this CPU with ONNX Runtime: its float GEMM (MatMul, MLAS sgemm) and its
u8 x s8 -> int32 integer GEMM (MatMulInteger) on the same n³ product and threads, timed in interleaved rounds.
A network that were all GEMM could run no more than fp32 time / int8 time faster in int8."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nfdeploy.perf.peak import CPU_N, ort_matmul
from nfdeploy.perf.rounds import RoundPlan, Timer, interleaved_rounds


def _timer(call: Callable[[], Any]) -> Timer:
    def run() -> tuple[float, None]:
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1e3, None

    return run


def int8_gemm_ceiling(threads: int, plan: RoundPlan, n: int = CPU_N) -> dict[str, Any]:
    """{"n", "threads", "median_ms" and "giga_ops_per_s" per kind ("fp32", "int8"; 2 n³ operations a call),
    "fp32 / int8": the ratio of the two times (median of per-round ratios, 95% bootstrap interval), "rounds",
    "stopped_by"}."""
    calls = {k: ort_matmul(k, n, threads) for k in ("fp32", "int8")}
    res = interleaved_rounds({k: _timer(c) for k, c in calls.items()}, plan, ratios=[("fp32", "int8")])
    return {
        "n": n,
        "threads": threads,
        "median_ms": {k: m["median_ms"] for k, m in res["members"].items()},
        "giga_ops_per_s": {k: 2.0 * n**3 / (m["median_ms"] * 1e6) for k, m in res["members"].items()},
        "fp32 / int8": res["ratios"]["fp32/int8"],
        "rounds": res["rounds"],
        "stopped_by": res["stopped_by"],
    }


__all__ = ["int8_gemm_ceiling"]
