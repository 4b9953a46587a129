"""The latency report of an export dir: `bench_report` = measure_bench (a BenchResult) + write_bench (its
JSON, Markdown and PNGs). Batch sweep, percentiles, throughput, achieved GFLOP/s against a measured peak,
each backend's own memory, and side-by-side ratios.

What a number is, is part of the number:

- ``host_ms``: host wall time (``time.perf_counter``) of one call, synchronisation included.
  CPU backends: ``backend.run(numpy batch) -> numpy logits``. CUDA torch backends: ``run_tensor`` on a
  pre-allocated device input, then a wait for the device (no host<->device copies). ONNX Runtime and
  TensorRT CUDA backends: the synchronous ``backend.run(numpy batch)``, which *includes* the
  host->device copy of the input and the device->host copy of the logits.
- ``device_ms`` (CUDA only): elapsed time between two CUDA events recorded around the same call.

How it is measured (rounds.py): warm-up by time, then rounds of a fixed number of iterations until
the medians of the last windows of rounds agree within +-3% or a time cap passes (then the row is
flagged noisy, with its coefficient of variation). A latency is the median of the per-round medians,
with a 95% bootstrap interval over rounds.

One measurement per figure (sweep.py): the comparison groups (per backend type: unfolded model, folded model,
folded twin with the other norm) are timed in interleaved rounds, and their ratios (folded speedup,
NF/BN) are medians of per-round ratios with bootstrap intervals. A backend of the main table that is
a member of a comparison group (torch-cpu-fp32-unfolded, torch-cpu-fp32-folded, onnxruntime-cpu-fp32,
torch-cuda-fp32-folded-eager, onnxruntime-cuda-fp32) is not timed again: its main-table row *is* the
comparison's measurement (``measured_in`` says so). Every other backend is timed alone, one active at
a time.

Achieved GFLOP/s = 2 x multiply-accumulates (counted once from the export's fp32 ONNX graph, the folded
model) x batch / median latency; its share of the best peak of its kind measured in the same run, before and
after the timing (peak.py). The machine's load (load average, busiest other processes) is recorded before
and after; a busy machine is warned about.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.backends import ExportSource, default_report_dir, export_backends, load_export_source
from nfdeploy.machine import machine_load
from nfdeploy.perf.assemble import NO_PARITY_NOTE, assemble_bench, fastest_passing, read_parity_statuses
from nfdeploy.perf.markdown import render_markdown
from nfdeploy.perf.options import BenchError, BenchOptions, parse_batches, torch_threads
from nfdeploy.perf.peak import measure_again, peak_for
from nfdeploy.perf.plots import LATENCY_PNG, THROUGHPUT_PNG, write_plots
from nfdeploy.perf.result import BENCH_JSON, BENCH_MD, BenchResult
from nfdeploy.perf.sweep import Log, Peaks, sweep
from nfdeploy.runtime.base import Backend


def bench_report(
    export_dir: str | Path | ExportSource,
    out_dir: str | Path | None = None,
    options: BenchOptions | None = None,
    *,
    backends: Sequence[Backend] | None = None,
    log: Log = print,
) -> BenchResult:
    """Time every backend of the export (skipped ones listed with their reason) at each batch size, plus the
    unfolded/folded/twin comparison in interleaved rounds (BenchOptions says which and how long); write
    bench.json, bench.md and two PNGs to `out_dir` (default: the export's report dir) and return the result.

    `export_dir` may also be an already loaded ExportSource; `backends` replaces the export's own backends."""
    started = time.perf_counter()
    options = options or BenchOptions()
    source = export_dir if isinstance(export_dir, ExportSource) else load_export_source(export_dir)
    out = Path(out_dir) if out_dir is not None else default_report_dir(source.export_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = measure_bench(source, out, options, backends=backends, started=started, log=log)
    write_bench(result, out, log)
    return result


def measure_bench(
    source: ExportSource,
    out_dir: Path,
    options: BenchOptions,
    *,
    backends: Sequence[Backend] | None = None,
    started: float | None = None,
    log: Log = print,
) -> BenchResult:
    """The bench of `source` as a BenchResult, nothing written (`out_dir` holds the comparison's temporary
    graphs while it runs). `started`: the perf_counter() time a budget counts from (default: now)."""
    started = time.perf_counter() if started is None else started
    log(
        f"bench {source.manifest.model} ({source.export_dir}), input {list(source.input_shape)}, "
        f"batches {list(options.batches)}"
        + (f" (CPU backends: {cpu})" if (cpu := options.batches_for("cpu")) != list(options.batches) else "")
    )
    with torch_threads(options.threads):  # torch CPU threads (process-wide) and ONNX Runtime CPU threads
        load_before = machine_load()
        peaks: Peaks = {}
        peak_for("cpu", "fp32", peaks)  # the CPU peak before timing, under the load the timing starts with
        if load_before["busy"]:
            log(f"  WARNING {load_before['warning']}: latencies will be slower and noisier than on a quiet machine")
        if backends is None:
            backends = export_backends(
                source, compile=options.compile, tensorrt=options.tensorrt, threads=options.threads
            )
        run = sweep(source, backends, options, peaks, work_dir=out_dir, started=started, log=log)
        measure_again(peaks)  # each peak is the best of its measurements before and after the timing
        result = assemble_bench(source, out_dir, run, peaks, load_before, options)
    result.wall_seconds = time.perf_counter() - started
    return result


def write_bench(result: BenchResult, out_dir: str | Path, log: Log = print) -> None:
    """bench.json, bench.md and the two PNGs of `result` in `out_dir`."""
    out = Path(out_dir)
    atomic_write_json(out / BENCH_JSON, result.to_dict())
    atomic_write_text(out / BENCH_MD, render_markdown(result))
    write_plots(result, out)
    log(f"  wrote {out / BENCH_JSON}, {BENCH_MD}, {LATENCY_PNG}, {THROUGHPUT_PNG} ({result.wall_seconds:.1f} s)")


__all__ = [
    "BENCH_JSON",
    "BENCH_MD",
    "LATENCY_PNG",
    "NO_PARITY_NOTE",
    "THROUGHPUT_PNG",
    "BenchError",
    "BenchOptions",
    "BenchResult",
    "bench_report",
    "fastest_passing",
    "measure_bench",
    "parse_batches",
    "read_parity_statuses",
    "write_bench",
]
