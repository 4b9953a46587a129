"""A BenchResult from a sweep: the work per sample and each row's GFLOP/s and share of its peak, the verdict
beside the export's parity report (the fastest backend that passed), the warnings (a busy machine, figures
above their peak, noisy figures), and the settings and timing method the numbers were measured with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nfdeploy.check.backends import ExportSource, default_report_dir
from nfdeploy.check.parity import PARITY_JSON, read_parity_result
from nfdeploy.errors import one_line
from nfdeploy.machine import machine_info, machine_load
from nfdeploy.perf.flops import onnx_macs, torch_macs
from nfdeploy.perf.fold_groups import RATIO_LABEL
from nfdeploy.perf.options import BenchOptions
from nfdeploy.perf.peak import above_peak_warning, annotate_work
from nfdeploy.perf.result import BenchResult, Comparison, FastestPassing, Row
from nfdeploy.perf.rounds import (
    BOOTSTRAP_SAMPLES,
    CI_LEVEL,
    MIN_ROUNDS_BEFORE_CAP,
    STABILITY_BAND,
    WINDOW_ROUNDS,
    WINDOWS,
)
from nfdeploy.perf.sweep import Peaks, Sweep
from nfdeploy.perf.timing import DEVICE_TIMING, HOST_TIMING, MEMORY_KIND
from nfdeploy.status import Status

NO_PARITY_NOTE = "no parity report: fastest backend unchecked"
CI_TEXT = f"{int(CI_LEVEL * 100)}% percentile bootstrap over rounds ({BOOTSTRAP_SAMPLES} resamples)"

TIMING_METHOD: dict[str, Any] = {
    "host_ms": HOST_TIMING,
    "device_ms": DEVICE_TIMING,
    "primary": "device_ms on CUDA, host_ms on CPU; median_ms and throughput_ips use it",
    "median_ms": "median of the per-round medians; median_ci95_ms: bootstrap over rounds",
    "rounds": "sized and capped by wall time (what a round costs); the primary timing is reported",
    "throughput": "batch / median of the primary timing (images per second)",
    "memory": MEMORY_KIND,
    "one_measurement": "main-table rows of comparison members are the comparison's measurement "
    "(measured_in); nothing is timed twice",
}


def work_model(source: ExportSource) -> dict[str, Any]:
    """Multiply-accumulates per sample: from the export's fp32 ONNX graph (the folded model), or, for an
    export without a graph, from the folded torch model (flops.torch_macs)."""
    onnx = source.manifest.onnx
    entry = onnx.get("fp32") or next(iter(onnx.values()), None)
    try:
        if entry:
            return {
                "macs_per_sample": onnx_macs(source.export_dir / entry.file),
                "graph": entry.file,
                "what": "Conv/Gemm/MatMul multiply-accumulates of one sample, counted from the folded ONNX graph",
            }
        return {
            "macs_per_sample": torch_macs(source.folded(), source.input_shape),
            "graph": None,
            "what": "convolution and matmul multiply-accumulates of one sample of the folded torch model "
            "(torch.utils.flop_counter; the export has no ONNX graph)",
        }
    except Exception as e:  # noqa: BLE001 - GFLOP/s is extra information, its absence is reported
        return {"macs_per_sample": None, "reason": one_line(e)}


def read_parity_statuses(export_dir: Path) -> tuple[dict[str, Status] | None, str]:
    """({backend: parity status}, where) from the export's saved parity.json, or (None, why not)."""
    try:
        result = read_parity_result(export_dir)
        if result is None:
            return None, NO_PARITY_NOTE
        return result.statuses(), str(default_report_dir(export_dir) / PARITY_JSON)
    except Exception as e:  # noqa: BLE001 - any unreadable report: the verdict says so, the bench still stands
        return None, f"parity report unreadable ({one_line(e, 160)}): fastest backend unchecked"


def fastest_passing(results: Sequence[Row], statuses: dict[str, str] | None) -> list[Row]:
    """Per precision and batch size: the fastest backend (lowest median_ms) whose parity status is "pass"
    (None when none passed), beside the fastest of all and its parity status. With no parity report
    (statuses None) there is no verdict: an empty list."""
    if statuses is None:
        return []
    cells: dict[tuple[str, int], list[Row]] = {}
    for r in results:
        cells.setdefault((r["precision"], r["batch"]), []).append(r)
    verdicts = []
    for (prec, batch), rows in sorted(cells.items()):
        rows = sorted(rows, key=lambda r: r["median_ms"])
        passed = [r for r in rows if statuses.get(r["name"]) == Status.PASS]
        verdicts.append(
            {
                "precision": prec,
                "batch": batch,
                "fastest_passing": passed[0]["name"] if passed else None,
                "fastest_passing_ms": passed[0]["median_ms"] if passed else None,
                "fastest": rows[0]["name"],
                "fastest_ms": rows[0]["median_ms"],
                "fastest_parity": statuses.get(rows[0]["name"], "not in the parity report"),
            }
        )
    return verdicts


def load_warnings(load_before: dict[str, Any], load_after: dict[str, Any]) -> list[str]:
    """The machine-load warnings of a report: before and after the timing, where the machine was busy."""
    before, after = load_before.get("warning"), load_after.get("warning")
    return [w for w in (before and f"before: {before}", after and f"after: {after}") if w]


def findings(run: Sweep) -> list[str]:
    """The warnings about the figures themselves: rows above their peak, figures that did not settle."""
    warnings = []
    above = above_peak_warning(run.results + run.comp_results)
    if above:
        warnings.append(above)
    noisy = [f"{r['name']} batch {r['batch']}" for r in run.results if r["noisy"]]
    noisy += [
        f"{r['backend_type']} batch {r['batch']} {RATIO_LABEL[k]}"
        for r in run.ratio_rows
        for k in RATIO_LABEL
        if r.get(f"{k}_noisy")
    ]
    if noisy:
        warnings.append(
            f"{len(noisy)} figure(s) did not settle within ±{100 * STABILITY_BAND:.0f}% (noisy): {', '.join(noisy)}"
        )
    for w in warnings:
        run.log(f"  WARNING {w}")
    return warnings


def settings_of(run: Sweep, options: BenchOptions) -> dict[str, Any]:
    """The settings a bench ran with: the cell plan (after a budget shrank it) beside what was asked."""
    p = run.plan
    return {
        "warmup_s": p.warmup_s,
        "min_time_s": p.min_time_s,
        "min_iters": p.min_iters,
        "max_time_s": p.cap_s,
        "requested_warmup_s": options.warmup,
        "requested_min_time_s": options.min_time,
        "threads": options.threads,
        "budget_s": p.budget_s,
        "only": list(options.only) if options.only else None,
        "compile": options.compile,
        "input": "N(0,1) float32, seed 0",
        "stability": {
            "band": STABILITY_BAND,
            "window_rounds": WINDOW_ROUNDS,
            "windows": WINDOWS,
            "min_rounds_before_cap": MIN_ROUNDS_BEFORE_CAP,
        },
        "ci": CI_TEXT,
    }


def assemble_bench(
    source: ExportSource, out_dir: Path, run: Sweep, peaks: Peaks, load_before: dict[str, Any], options: BenchOptions
) -> BenchResult:
    """The BenchResult of a finished sweep (the machine's load is taken again now, after the timing)."""
    work = work_model(source)
    for row in run.results + run.comp_results:
        annotate_work(row, work, peaks)
    load_after = machine_load()
    if load_after["busy"]:
        run.log(f"  WARNING after the bench: {load_after['warning']}")
    statuses, parity_where = read_parity_statuses(source.export_dir)
    return BenchResult(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        export_dir=str(source.export_dir),
        out_dir=str(out_dir),
        model=source.manifest.model,
        norm=run.own,
        input_shape=list(source.input_shape),
        batches=options.batches_for("cuda"),
        cpu_batches=options.batches_for("cpu"),
        settings=settings_of(run, options),
        machine=machine_info(),
        machine_load={"before": load_before, "after": load_after},
        warnings=load_warnings(load_before, load_after) + findings(run),
        timing_method=TIMING_METHOD,
        work=work,
        peaks=[dict(v) for v in peaks.values()],
        results=run.results,
        fastest_passing=FastestPassing(
            parity_report=parity_where if statuses is not None else None,
            note=None if statuses is not None else parity_where,
            rows=fastest_passing(run.results, statuses),
        ),
        skipped=run.skipped,
        failed=run.failed,
        over_budget=run.over_budget,
        comparison=Comparison(rows=run.ratio_rows, results=run.comp_results, skipped=run.comp_skipped),
    )


__all__ = [
    "CI_TEXT",
    "NO_PARITY_NOTE",
    "TIMING_METHOD",
    "assemble_bench",
    "fastest_passing",
    "findings",
    "load_warnings",
    "read_parity_statuses",
    "settings_of",
    "work_model",
]
