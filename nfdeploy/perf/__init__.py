"""Latency of every backend that can run an export dir, measured → result → rendered:

- options.py     BenchOptions (what to time and how long), parse_batches, BenchError
- rounds.py      interleaved rounds with stability windows and bootstrap intervals
- timing.py      timing one call, one backend alone or a group side by side, a backend's own memory
- peak.py        a matmul peak of each kind measured in the run (the best of its measurements), shares of it
- flops.py       multiply-accumulates per sample
- fold_groups.py unfolded vs folded vs twin as groups timed side by side
- sweep.py       a bench's timing: which backends run, the comparison groups, every cell inside a budget
- assemble.py    a BenchResult from a sweep: GFLOP/s and peak shares, the verdict beside parity, warnings
- result.py      BenchResult, AgainstResult, NotTimed: the typed results and their JSON
- markdown.py    bench.md and against.md from a result; plots.py its PNGs
- report.py      bench_report = measure_bench + write_bench; against.py: bench_against, two exports side by side
"""

from nfdeploy.machine import machine_info, machine_load
from nfdeploy.perf.against import AGAINST_JSON, AGAINST_MD, bench_against, measure_against, write_against
from nfdeploy.perf.assemble import NO_PARITY_NOTE, fastest_passing, read_parity_statuses
from nfdeploy.perf.flops import onnx_macs
from nfdeploy.perf.fold_groups import comparison_backends
from nfdeploy.perf.markdown import render_against, render_markdown
from nfdeploy.perf.options import AGAINST_OPTIONS, BenchError, BenchOptions, parse_batches
from nfdeploy.perf.peak import cpu_int8_matmul_peak, cpu_matmul_peak, cuda_matmul_peak
from nfdeploy.perf.plots import LATENCY_PNG, THROUGHPUT_PNG
from nfdeploy.perf.report import bench_report, measure_bench, write_bench
from nfdeploy.perf.result import BENCH_JSON, BENCH_MD, AgainstResult, BenchResult, NotTimed
from nfdeploy.perf.rounds import (
    RoundPlan,
    bootstrap_ci,
    describe_ratio,
    interleaved_rounds,
    is_settled,
    ratio_summary,
    ratio_table_rows,
)
from nfdeploy.perf.timing import Stopwatch, time_backend, time_group

__all__ = [
    "Stopwatch",
    "AGAINST_JSON",
    "AGAINST_MD",
    "AGAINST_OPTIONS",
    "BENCH_JSON",
    "BENCH_MD",
    "LATENCY_PNG",
    "NO_PARITY_NOTE",
    "THROUGHPUT_PNG",
    "AgainstResult",
    "BenchError",
    "BenchOptions",
    "BenchResult",
    "NotTimed",
    "RoundPlan",
    "bench_against",
    "bench_report",
    "bootstrap_ci",
    "comparison_backends",
    "cpu_int8_matmul_peak",
    "cpu_matmul_peak",
    "cuda_matmul_peak",
    "describe_ratio",
    "fastest_passing",
    "interleaved_rounds",
    "is_settled",
    "machine_info",
    "machine_load",
    "measure_against",
    "measure_bench",
    "onnx_macs",
    "parse_batches",
    "ratio_summary",
    "ratio_table_rows",
    "read_parity_statuses",
    "render_against",
    "render_markdown",
    "time_backend",
    "time_group",
    "write_against",
    "write_bench",
]
