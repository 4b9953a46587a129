"""Latency of every backend that can run an export dir: interleaved rounds with stability windows and
bootstrap intervals (rounds.py), timing one call and a backend's own memory (timing.py), the machine and
its load (machine.py), multiply-accumulates (flops.py) and a measured peak (peak.py), unfolded vs folded
vs twin side by side (fold_groups.py), the report (report.py) and two exports side by side (against.py)."""

from nfdeploy.machine import machine_info, machine_load
from nfdeploy.perf.against import AGAINST_JSON, AGAINST_MD, bench_against
from nfdeploy.perf.flops import onnx_macs
from nfdeploy.perf.fold_groups import comparison_backends
from nfdeploy.perf.peak import cpu_matmul_peak, cuda_matmul_peak
from nfdeploy.perf.report import (
    BENCH_JSON,
    BENCH_MD,
    LATENCY_PNG,
    THROUGHPUT_PNG,
    BenchError,
    bench_report,
    parse_batches,
    render_markdown,
)
from nfdeploy.perf.rounds import RoundPlan, bootstrap_ci, interleaved_rounds, is_settled, ratio_summary
from nfdeploy.perf.timing import time_backend, time_group

__all__ = [
    "AGAINST_JSON",
    "AGAINST_MD",
    "BENCH_JSON",
    "BENCH_MD",
    "LATENCY_PNG",
    "THROUGHPUT_PNG",
    "BenchError",
    "RoundPlan",
    "bench_against",
    "bench_report",
    "bootstrap_ci",
    "comparison_backends",
    "cpu_matmul_peak",
    "cuda_matmul_peak",
    "interleaved_rounds",
    "is_settled",
    "machine_info",
    "machine_load",
    "onnx_macs",
    "parse_batches",
    "ratio_summary",
    "render_markdown",
    "time_backend",
    "time_group",
]
