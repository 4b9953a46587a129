"""Latency of every backend that can run an export dir: timing (timing.py), the machine it ran on
(machine.py), unfolded vs folded vs twin side by side (compare.py), and the report (report.py)."""

from nfdeploy.bench.compare import comparison_backends
from nfdeploy.bench.machine import machine_info
from nfdeploy.bench.report import (BENCH_JSON, BENCH_MD, LATENCY_PNG, THROUGHPUT_PNG, BenchError, bench_report,
                                   parse_batches, render_markdown)
from nfdeploy.bench.timing import time_backend

__all__ = ["BENCH_JSON", "BENCH_MD", "LATENCY_PNG", "THROUGHPUT_PNG", "BenchError", "bench_report", "parse_batches", "comparison_backends",
           "machine_info", "render_markdown", "time_backend"]
