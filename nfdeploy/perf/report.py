"""Latency of every backend that can run an export dir: batch sweep, percentiles, throughput,
achieved GFLOP/s against a measured peak, each backend's own memory, and side-by-side ratios.

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

One measurement per figure: the comparison groups (per backend type: unfolded model, folded model,
folded twin with the other norm) are timed in interleaved rounds, and their ratios (folded speedup,
NF/BN) are medians of per-round ratios with bootstrap intervals. A backend of the main table that is
a member of a comparison group (torch-cpu-fp32-unfolded, torch-cpu-fp32-folded, onnxruntime-cpu-fp32,
torch-cuda-fp32-folded-eager, onnxruntime-cuda-fp32) is not timed again: its main-table row *is* the
comparison's measurement (``measured_in`` says so). Every other backend is timed alone, one active at
a time.

Achieved GFLOP/s = 2 x multiply-accumulates (counted once from the export's fp32 ONNX graph, the folded
model) x batch / median latency; its share of a peak measured in the same run (peak.py: float32 matmul
on torch's threads on CPU, a matmul of the row's precision on CUDA). The machine's load (load average,
busiest other processes) is recorded before and after; a busy machine is warned about.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.backends import (
    ExportSource,
    default_report_dir,
    export_backends,
    load_export_source,
    select_backends,
)
from nfdeploy.check.parity import PARITY_JSON, read_parity_rows
from nfdeploy.errors import UserError, one_line
from nfdeploy.machine import machine_info, machine_load
from nfdeploy.perf.flops import gflops, onnx_macs, torch_macs
from nfdeploy.perf.fold_groups import comparison_backends, comparison_groups, group_ratios, main_name, source_norm
from nfdeploy.perf.peak import peak_for
from nfdeploy.perf.rounds import (
    BOOTSTRAP_SAMPLES,
    CI_LEVEL,
    MIN_ROUNDS_BEFORE_CAP,
    STABILITY_BAND,
    WINDOW_ROUNDS,
    WINDOWS,
    RoundPlan,
    describe_ratio,
)
from nfdeploy.perf.timing import (
    DEVICE_TIMING,
    HOST_TIMING,
    MEMORY_KIND,
    activate_measured,
    failure_row,
    time_backend,
    time_group,
)
from nfdeploy.render import markdown_table, pyplot, save_figure
from nfdeploy.runtime.base import Backend, name_matches

BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
NO_PARITY_NOTE = "no parity report: fastest backend unchecked"


class BenchError(UserError, ValueError):
    """Bad bench settings; one line."""


LATENCY_PNG, THROUGHPUT_PNG = "latency_vs_batch.png", "throughput_vs_batch.png"


def parse_batches(text: str | Sequence[int]) -> tuple[int, ...]:
    """ "1,8,32" (or a sequence) -> (1, 8, 32): positive integers, or a one-line BenchError."""
    items = [t for t in str(text).split(",") if t.strip()] if isinstance(text, str) else list(text)
    try:
        out = tuple(int(t) for t in items)
    except (TypeError, ValueError):
        raise BenchError(f"batch sizes must be a comma list of integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise BenchError(f"batch sizes must be positive integers, got {text!r}")
    return out


@dataclass
class CellPlan:
    """How long each (backend or group, batch) cell is timed: the requested settings, shrunk to fit a
    wall-time budget (`budget_end`, a perf_counter() time; None: no budget)."""

    warmup_s: float
    min_time_s: float
    min_iters: int
    cap_s: float | None  # per member of a cell
    budget_s: float | None = None
    budget_end: float | None = None

    @classmethod
    def fit(
        cls,
        warmup: float,
        min_time: float,
        min_iters: int,
        max_time: float | None,
        budget_s: float | None,
        t_start: float,
        n_cells: int,
        log: Callable[[str], None],
    ) -> CellPlan:
        if budget_s is None:
            return cls(warmup, min_time, min_iters, max_time)
        budget_end = t_start + budget_s - 5.0  # 5 s for the report itself
        per_cell = max(budget_end - time.perf_counter(), 0.0) / max(n_cells, 1)
        scale = min(1.0, 0.5 * per_cell / max(warmup + min_time, 1e-9))
        warm, least = warmup * scale, min_time * scale
        cap = max(2 * (warm + least), 0.5)
        log(f"  budget {budget_s:.0f} s, {n_cells} cells: warm-up {warm:.2f} s, min time {least:.2f} s per cell")
        return cls(warm, least, min_iters, cap if max_time is None else min(max_time, cap), budget_s, budget_end)

    def rounds(self, device: str, members: int) -> RoundPlan:
        return RoundPlan(
            warmup_s=self.warmup_s,
            min_time_s=self.min_time_s,
            min_iters=self.min_iters,
            max_time_s=None if self.cap_s is None else self.cap_s * members,
            min_warmup_calls=2 if device == "cuda" else 1,
        )


@dataclass
class BenchRun:
    """One bench_report's timing: what it found so far (rows, skipped, failed, over budget)."""

    input_shape: tuple[int, ...]
    plan: CellPlan
    own: str
    log: Callable[[str], None]
    results: list[dict[str, Any]] = field(default_factory=list)
    comp_results: list[dict[str, Any]] = field(default_factory=list)
    ratio_rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    comp_skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    over_budget: list[dict[str, Any]] = field(default_factory=list)
    covering: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # main name -> batch -> its row

    def over(self, name: str, n: int, section: str) -> bool:
        if self.plan.budget_end is not None and time.perf_counter() > self.plan.budget_end:
            self.over_budget.append(
                {
                    "name": name,
                    "batch": n,
                    "section": section,
                    "reason": f"time budget of {self.plan.budget_s:.0f} s exhausted",
                }
            )
            return True
        return False

    def failure(self, name: str, e: BaseException, *, stage: str, skipped: list[dict[str, Any]], **extra: Any) -> None:
        """Record an exception of `name`: skipped (unavailable here) or failed (failed to load, crashed)."""
        kind, row = failure_row(name, e, stage=stage, **extra)
        (skipped if kind == "skipped" else self.failed).append(row)
        self.log(
            f"  {'skipped' if kind == 'skipped' else 'FAILED'} {name}"
            + (f" batch {extra['batch']}" if "batch" in extra else "")
            + f": {row.get('stage', '')} {row['reason']}"
        )

    def time_groups(self, groups: dict[str, dict[str, Backend]], batches_for: Callable[[str], list[int]]) -> None:
        """Comparison groups: all members of a group active together, timed in interleaved rounds."""
        for group, members in groups.items():
            device = next(iter(members.values())).device
            act_mb: dict[str, float | None] = {}
            live: dict[str, Backend] = {}
            try:
                for variant, b in members.items():
                    try:
                        act_mb[variant] = activate_measured(b)
                        live[variant] = b
                    except Exception as e:  # noqa: BLE001 - a backend that cannot start is a finding, not a crash
                        self.failure(
                            b.name,
                            e,
                            stage="load",
                            skipped=self.comp_skipped,
                            key=f"{group}/{variant}",
                            section="comparison",
                        )
                if live:
                    for n in batches_for(device):
                        if not self.over(group, n, "comparison"):
                            self.time_group_cell(group, live, act_mb, n, device)
            finally:
                for b in members.values():
                    b.deactivate()

    def time_group_cell(
        self, group: str, live: dict[str, Backend], act_mb: dict[str, float | None], n: int, device: str
    ) -> None:
        try:
            rows, ratios, info = time_group(
                live,
                n,
                self.input_shape,
                self.plan.rounds(device, len(live)),
                ratios=group_ratios(self.own, list(live)),
                activation_memory_mb=act_mb,
                budget_end=self.plan.budget_end,
            )
        except Exception as e:  # noqa: BLE001 - one failing cell (OOM, profile range) must not sink the report
            self.failure(group, e, stage="run", skipped=self.comp_skipped, batch=n, section="comparison")
            return
        for variant, row in rows.items():
            row.update(
                group=group,
                variant=variant,
                backend=live[variant].describe(),
                measured_in=f"{group} group, interleaved with {', '.join(v for v in rows if v != variant)}",
            )
            self.comp_results.append(row)
            mn = main_name(group, variant, self.own)
            if mn:
                self.covering.setdefault(mn, {})[n] = row
            _log_row(self.log, f"{group}/{variant}", row)
        self.ratio_rows.append(_ratio_row(group, n, self.own, rows, ratios, info))
        for name, rr in ratios.items():
            self.log(f"  {group} batch {n}: {RATIO_LABEL[name]} {describe_ratio(rr)}")

    def time_alone(self, b: Backend, batches: list[int]) -> None:
        """Main table: one backend active at a time; rows the comparison measured are that measurement."""
        todo = []
        for n in batches:
            if n in self.covering.get(b.name, {}):
                row = {**self.covering[b.name][n], "name": b.name, "backend": b.describe()}
                for k in ("group", "variant"):
                    row.pop(k, None)
                self.results.append(row)
            else:
                todo.append(n)
        if not todo:
            return
        try:
            act = activate_measured(b)
        except Exception as e:  # noqa: BLE001 - unavailable: skipped; anything else: failed to load
            self.failure(b.name, e, stage="load", skipped=self.skipped, section="main")
            return
        try:
            for n in todo:
                if self.over(b.name, n, "main"):
                    continue
                p = self.plan.rounds(b.device, 1)
                try:
                    row = time_backend(
                        b,
                        n,
                        self.input_shape,
                        warmup_s=p.warmup_s,
                        min_time_s=p.min_time_s,
                        min_iters=p.min_iters,
                        max_time_s=p.max_time_s,
                        activation_memory_mb=act,
                        budget_end=self.plan.budget_end,
                    )
                except Exception as e:  # noqa: BLE001 - one failing cell (OOM, profile range) must not sink the report
                    self.failure(b.name, e, stage="run", skipped=self.skipped, batch=n, section="main")
                    if b.device == "cuda":
                        torch.cuda.empty_cache()
                    continue
                row["backend"] = b.describe()
                row["measured_in"] = "alone"
                self.results.append(row)
                _log_row(self.log, b.name, row)
        finally:
            b.deactivate()


def _check_settings(
    batches: Sequence[int],
    cpu_batches: Sequence[int] | None,
    min_time: float,
    warmup: float,
    max_time: float | None,
    threads: int | None,
) -> tuple[list[int], list[int]]:
    batches = sorted({int(b) for b in batches})
    cpu = sorted({int(b) for b in cpu_batches}) if cpu_batches else batches
    if not batches or min(batches + cpu) < 1:
        raise BenchError(f"batch sizes must be >= 1, got {batches}")
    if min_time < 0 or warmup < 0 or (max_time is not None and max_time <= 0):
        raise BenchError("min_time and warmup must be >= 0, max_time > 0")
    if threads is not None and threads < 1:
        raise BenchError(f"threads must be >= 1, got {threads}")
    return batches, cpu


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `n` for the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _split_available(
    backends: Sequence[Backend], log: Callable[[str], None]
) -> tuple[list[Backend], list[dict[str, Any]]]:
    runnable, skipped = [], []
    for b in backends:
        reason = b.unavailable_reason()
        if reason:
            skipped.append({"name": b.name, "reason": reason})
            log(f"  skipped {b.name}: {reason}")
        else:
            runnable.append(b)
    return runnable, skipped


def _comparison(
    source: ExportSource, only: Sequence[str] | None, tmp_dir: str, log: Callable[[str], None]
) -> tuple[dict[str, Backend], list[dict[str, Any]]]:
    t0 = time.perf_counter()
    comp: dict[str, Backend] = {}
    dead: list[dict[str, Any]] = []
    for dev in ("cpu", "cuda"):
        live, skipped = comparison_backends(source, dev, tmp_dir=tmp_dir, only=only)
        comp.update(live)
        dead += skipped
    log(f"  comparison backends built in {time.perf_counter() - t0:.1f} s")
    for s_ in dead:
        log(f"  comparison skipped {s_['name']}: {s_['reason']}")
    return comp, dead


def bench_report(
    export_dir: str | Path | ExportSource,
    out_dir: str | Path | None = None,
    batches: Sequence[int] = (1, 8, 32),
    only: Sequence[str] | None = None,
    min_time: float = 2.0,
    warmup: float = 1.0,
    log: Callable[[str], None] = print,
    *,
    cpu_batches: Sequence[int] | None = None,
    min_iters: int = 10,
    compile: bool = True,
    tensorrt: bool = True,
    compare: bool = True,
    budget_s: float | None = None,
    backends: Sequence[Backend] | None = None,
    max_time: float | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time every backend of the export (skipped ones listed with their reason) at each batch size,
    plus the unfolded/folded/twin comparison in interleaved rounds; write bench.json, bench.md and
    two PNGs to `out_dir`.

    `export_dir` may also be an already loaded ExportSource. `only`: backend-name patterns
    (runtime.base.name_matches: whole name parts or a glob; the float64 reference is timed only when one selects
    it); it also selects comparison groups ("torch-cpu-fp32", "onnxruntime-cpu-fp32", "torch-cuda-fp32",
    "onnxruntime-cuda-fp32").
    `cpu_batches`: batch sizes for CPU backends (default: `batches`). `min_time`: timed seconds per
    backend and batch at least; `max_time`: the cap per cell (group) after which an unsettled row is
    reported as noisy (default 5 x min_time per member). `budget_s`: a wall-time budget for the whole
    call: warm-up, min_time and the cap shrink to fit, and cells that would start after it are listed
    as over budget. `threads`: CPU threads of torch (for the call) and of ONNX Runtime sessions (None: as set)."""
    t_start = time.perf_counter()
    batches, cpu_batches = _check_settings(batches, cpu_batches, min_time, warmup, max_time, threads)
    source = export_dir if isinstance(export_dir, ExportSource) else load_export_source(export_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(source.export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(
        f"bench {source.manifest.model} ({source.export_dir}), input {list(source.input_shape)}, "
        f"batches {batches}" + (f" (CPU backends: {cpu_batches})" if cpu_batches != batches else "")
    )
    with torch_threads(threads):  # torch CPU threads (process-wide) and ONNX Runtime CPU threads
        load_before = machine_load()
        peaks: dict[tuple[str, str], dict[str, Any]] = {}
        peak_for("cpu", "fp32", peaks)  # the CPU peak before timing, under the load the timing starts with
        if load_before["busy"]:
            log(f"  WARNING {load_before['warning']}: latencies will be slower and noisier than on a quiet machine")

        every = (
            backends
            if backends is not None
            else export_backends(source, compile=compile, tensorrt=tensorrt, threads=threads)
        )
        main = [b for b in every if any(name_matches(b.name, o) for o in only)] if only else list(every)
        runnable, skipped = _split_available(main, log)
        with tempfile.TemporaryDirectory(prefix=".bench-tmp-", dir=out_dir) as tmp:
            comp, comp_skipped = _comparison(source, only, tmp, log) if compare else ({}, [])
            if only and not main and not comp and not comp_skipped:
                select_backends(every, only)  # raises: --only matched nothing at all

            def batches_for(device: str) -> list[int]:
                return cpu_batches if device == "cpu" else batches

            own = source_norm(source)
            groups = comparison_groups(comp)
            covered = {main_name(k.split("/")[0], k.split("/")[1], own) for k in comp} - {None}
            n_cells = sum(len(batches_for(b.device)) for b in runnable if b.name not in covered) + sum(
                len(m) * len(batches_for(next(iter(m.values())).device)) for m in groups.values()
            )
            plan = CellPlan.fit(warmup, min_time, min_iters, max_time, budget_s, t_start, n_cells, log)
            run = BenchRun(source.input_shape, plan, own, log, skipped=skipped, comp_skipped=comp_skipped)
            run.time_groups(groups, batches_for)
            for b in runnable:
                run.time_alone(b, batches_for(b.device))
        order = {b.name: i for i, b in enumerate(runnable)}
        run.results.sort(key=lambda r: (order.get(r["name"], 1e9), r["batch"]))
        report = _assemble(
            source,
            out_dir,
            run,
            peaks,
            load_before,
            batches=batches,
            cpu_batches=cpu_batches,
            requested={"warmup_s": warmup, "min_time_s": min_time, "threads": threads},
            only=only,
            compile=compile,
        )
        report["wall_seconds"] = time.perf_counter() - t_start
        _write(report, out_dir, log)
        return report


def _findings(run: BenchRun, load_before: dict[str, Any], load_after: dict[str, Any]) -> list[str]:
    """The report's warnings: a busy machine, figures above their peak, noisy figures."""
    warnings = [
        w
        for w in (
            load_before.get("warning") and f"before: {load_before['warning']}",
            load_after.get("warning") and f"after: {load_after['warning']}",
        )
        if w
    ]
    above = sorted({r["name"] for r in run.results + run.comp_results if (r.get("peak_share") or 0) > 1.0})
    if above:
        cpu_only = all(r["device"] == "cpu" for r in run.results + run.comp_results if r["name"] in above)
        why = (
            "the float32 matmul peak of this run was measured low (a busy machine slows a threaded matmul more "
            "than these backends); shares of peak are meaningful on a quiet machine only"
            if cpu_only
            else "the backend beat the matmul measured as the peak (another kernel family or math mode): the share "
            "compares with this run's measured matmul, not with the device's limit"
        )
        warnings.append(f"achieved GFLOP/s above the measured peak ({', '.join(above)}): {why}")
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
    for w in warnings[len([x for x in (load_before.get("warning"), load_after.get("warning")) if x]) :]:
        run.log(f"  WARNING {w}")
    return warnings


def read_parity_statuses(export_dir: Path) -> tuple[dict[str, str] | None, str]:
    """({backend: parity status}, where) from the export's saved parity.json, or (None, why not)."""
    try:
        rows = read_parity_rows(export_dir)
        if rows is None:
            return None, NO_PARITY_NOTE
        return {n: r["status"] for n, r in rows.items() if "status" in r}, str(
            default_report_dir(export_dir) / PARITY_JSON
        )
    except Exception as e:  # noqa: BLE001 - any unreadable report: the verdict says so, the bench still stands
        return None, f"parity report unreadable ({one_line(e, 160)}): fastest backend unchecked"


def fastest_passing(results: Sequence[dict[str, Any]], statuses: dict[str, str] | None) -> list[dict[str, Any]]:
    """Per precision and batch size: the fastest backend (lowest median_ms) whose parity status is "pass"
    (None when none passed), beside the fastest of all and its parity status. With no parity report
    (statuses None) there is no verdict: an empty list."""
    if statuses is None:
        return []
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["precision"], r["batch"]), []).append(r)
    verdicts = []
    for (prec, batch), rows in sorted(cells.items()):
        rows = sorted(rows, key=lambda r: r["median_ms"])
        passed = [r for r in rows if statuses.get(r["name"]) == "pass"]
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


def _assemble(
    source: ExportSource,
    out_dir: Path,
    run: BenchRun,
    peaks: dict[tuple[str, str], dict[str, Any]],
    load_before: dict[str, Any],
    *,
    batches: list[int],
    cpu_batches: list[int],
    requested: dict[str, float],
    only: Sequence[str] | None,
    compile: bool,
) -> dict[str, Any]:
    work = work_model(source)
    for row in run.results + run.comp_results:
        annotate_work(row, work, peaks)
    load_after = machine_load()
    if load_after["busy"]:
        run.log(f"  WARNING after the bench: {load_after['warning']}")
    p = run.plan
    statuses, parity_where = read_parity_statuses(source.export_dir)
    return {
        "format": "nfdeploy-bench-v2",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "export_dir": str(source.export_dir),
        "out_dir": str(out_dir),
        "model": source.manifest.model,
        "norm": run.own,
        "input_shape": list(source.input_shape),
        "batches": batches,
        "cpu_batches": cpu_batches,
        "settings": {
            "warmup_s": p.warmup_s,
            "min_time_s": p.min_time_s,
            "min_iters": p.min_iters,
            "max_time_s": p.cap_s,
            "requested_warmup_s": requested["warmup_s"],
            "requested_min_time_s": requested["min_time_s"],
            "threads": requested["threads"],
            "budget_s": p.budget_s,
            "only": list(only) if only else None,
            "compile": compile,
            "input": "N(0,1) float32, seed 0",
            "stability": {
                "band": STABILITY_BAND,
                "window_rounds": WINDOW_ROUNDS,
                "windows": WINDOWS,
                "min_rounds_before_cap": MIN_ROUNDS_BEFORE_CAP,
            },
            "ci": f"{int(CI_LEVEL * 100)}% percentile bootstrap over rounds ({BOOTSTRAP_SAMPLES} resamples)",
        },
        "machine": machine_info(),
        "machine_load": {"before": load_before, "after": load_after},
        "warnings": _findings(run, load_before, load_after),
        "timing_method": {
            "host_ms": HOST_TIMING,
            "device_ms": DEVICE_TIMING,
            "primary": "device_ms on CUDA, host_ms on CPU; median_ms and throughput_ips use it",
            "median_ms": "median of the per-round medians; median_ci95_ms: bootstrap over rounds",
            "rounds": "sized and capped by wall time (what a round costs); the primary timing is reported",
            "throughput": "batch / median of the primary timing (images per second)",
            "memory": MEMORY_KIND,
            "one_measurement": "main-table rows of comparison members are the comparison's measurement "
            "(measured_in); nothing is timed twice",
        },
        "work": work,
        "peaks": [dict(v) for v in peaks.values()],
        "results": run.results,
        "fastest_passing": {
            "parity_report": parity_where if statuses is not None else None,
            "note": None if statuses is not None else parity_where,
            "rule": "per precision and batch, the lowest median ms among backends whose parity "
            'status is "pass"; a backend absent from the parity report is not a candidate',
            "rows": fastest_passing(run.results, statuses),
        },
        "skipped": run.skipped,
        "failed": run.failed,
        "over_budget": run.over_budget,
        "comparison": {
            "metric": "median of per-round ratios of the primary timing (device_ms on CUDA, host_ms on CPU), "
            "members timed in interleaved rounds",
            "ratios": {
                "speedup_folded_vs_unfolded": "unfolded / folded, per round (> 1: folding is faster)",
                "ratio_nf_folded_to_bn_folded": "NF folded / BN twin folded, per round (< 1: NF is faster)",
            },
            "twin": "same topology and widths with the other norm, random constants, folded the same way",
            "rows": run.ratio_rows,
            "results": run.comp_results,
            "skipped": run.comp_skipped,
        },
    }


def _write(report: dict[str, Any], out_dir: Path, log: Callable[[str], None]) -> None:
    atomic_write_json(out_dir / BENCH_JSON, report)
    atomic_write_text(out_dir / BENCH_MD, render_markdown(report))
    _plots(report, out_dir)
    log(f"  wrote {out_dir / BENCH_JSON}, {BENCH_MD}, {LATENCY_PNG}, {THROUGHPUT_PNG} ({report['wall_seconds']:.1f} s)")


RATIO_LABEL = {"speedup_folded_vs_unfolded": "folded speedup", "ratio_nf_folded_to_bn_folded": "NF/BN folded"}


def _log_row(log: Callable[[str], None], label: str, row: dict[str, Any]) -> None:
    lo, hi = row["median_ci95_ms"]
    log(
        f"  {label:<40} batch {row['batch']:>4}: median {row['median_ms']:9.3f} ms [{lo:.3f}, {hi:.3f}] "
        f"({row['scope']}), {row['throughput_ips']:10.1f} img/s, {row['rounds']}x{row['round_iters']} it"
        + (f" NOISY (cv {100 * (row['cv'] or 0):.1f}%, {row['stopped_by']})" if row["noisy"] else "")
    )


def _ratio_row(
    group: str, batch: int, own: str, rows: dict[str, dict[str, Any]], ratios: dict[str, Any], info: dict[str, Any]
) -> dict[str, Any]:
    med = {v: r["median_ms"] for v, r in rows.items()}
    out: dict[str, Any] = {
        "backend_type": group,
        "batch": batch,
        "model": own,
        "unfolded_ms": med.get(f"{own}-unfolded"),
        "nf_folded_ms": med.get("nf-folded"),
        "bn_folded_ms": med.get("bn-folded"),
        "rounds": info["rounds"],
        "stopped_by": info["stopped_by"],
    }
    for key in RATIO_LABEL:
        r = ratios.get(key)
        out[key] = r["ratio"] if r else None
        out[f"{key}_ci95"] = r["ci95"] if r else None
        out[f"{key}_cv"] = r["cv"] if r else None
        out[f"{key}_noisy"] = r["noisy"] if r else None
    return out


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


def annotate_work(row: dict[str, Any], work: dict[str, Any], peaks: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Add achieved GFLOP/s and its share of the measured peak of the row's device and precision (None,
    with peak_note, where no peak was measured: int8 on CPU without ONNX Runtime)."""
    row["gflops"] = gflops(work.get("macs_per_sample"), row["batch"], row["median_ms"])
    peak = peak_for(row["device"], row["precision"], peaks) if row["gflops"] is not None else None
    row["peak_gflops"] = peak["gflops"] if peak else None
    row["peak_share"] = row["gflops"] / peak["gflops"] if peak and peak["gflops"] else None
    if peak and not peak["gflops"]:
        row["peak_note"] = peak["what"]


def _fmt_ms(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _ci(v: Sequence[float] | None, fmt: str = "{:.4g}") -> str:
    return "" if not v else f"[{fmt.format(v[0])}, {fmt.format(v[1])}]"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def informative_table(rows: Sequence[dict[str, Any]], keep: Sequence[str] = ()) -> list[str]:
    """A Markdown table without the columns that are empty on every row, and, when there are at least
    two rows, without those with the same value on every row (listed once under the table instead).
    Columns in `keep` always stay."""
    if not rows:
        return ["(no rows)", ""]
    cols = list(rows[0].keys())
    values = {c: [str(r.get(c, "") if r.get(c) is not None else "") for r in rows] for c in cols}
    shown = [c for c in cols if c in keep or (any(values[c]) and (len(rows) < 2 or len(set(values[c])) > 1))]
    same = [f"{c} = {values[c][0]}" for c in cols if c not in shown and any(values[c])]
    out = [markdown_table(rows, shown)]
    if same:
        out += ["Same on every row: " + "; ".join(same) + ".", ""]
    return out


def render_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Latency: {r['model']}",
        "",
        f"Export `{r['export_dir']}`, input {r['input_shape']} (N(0,1) float32), created {r['created']}. "
        f"Wall time of the report: {r['wall_seconds']:.1f} s.",
        "",
    ]
    if r["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in r["warnings"]] + [""]
    lines += _machine_md(r) + _method_md(r) + _verdict_md(r) + _results_md(r) + _comparison_md(r)
    lines += ["## Plots", "", f"![latency]({LATENCY_PNG})", "", f"![throughput]({THROUGHPUT_PNG})", ""]
    return "\n".join(lines)


def _machine_md(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    cpu, gpu, ver = m["cpu"], m["gpu"], m["versions"]
    lines: list[str] = []
    lines += ["## Machine", ""]
    mrows = [
        {
            "item": "CPU",
            "value": f"{cpu['model']} ({cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical "
            f"CPUs; {cpu['mhz_as_found']} MHz as found)",
        },
        {"item": "torch threads", "value": f"{m['torch_threads']} intra-op, {m['torch_interop_threads']} inter-op"},
        {
            "item": "GPU",
            "value": "none"
            if not gpu
            else f"{gpu['name']} (CC {gpu['compute_capability']}, {gpu['memory_gib']:.0f} GiB, "
            f"CUDA {gpu['cuda_runtime']}, "
            f"cuDNN {gpu['cudnn']})"
            + (f"; nvidia-smi as found: {gpu['nvidia_smi_as_found']}" if gpu.get("nvidia_smi_as_found") else ""),
        },
        {
            "item": "versions",
            "value": ", ".join(
                f"{k} {v}" for k, v in ver.items() if k not in ("onnxruntime_providers", "onnxruntime_module")
            ),
        },
        {"item": "ONNX Runtime providers", "value": ", ".join(ver.get("onnxruntime_providers") or []) or "n/a"},
        {"item": "platform", "value": m["platform"]},
    ]
    for when, ld in r["machine_load"].items():
        busiest = ", ".join(f"{p['name']} ({p['pid']}) {p['cpu_share']:.2f}" for p in ld["busiest_other_processes"][:3])
        mrows.append(
            {
                "item": f"load {when}",
                "value": f"load average {ld['loadavg_1_5_15']}; other processes "
                f"{ld['other_processes_cores']:.2f} cores (busiest: {busiest or 'none'})"
                + (" — BUSY" if ld["busy"] else ""),
            }
        )
    for p in r["peaks"]:
        mrows.append(
            {
                "item": f"measured peak {p['device']} {p['precision']}",
                "value": p["what"] if p["gflops"] is None else f"{p['gflops']:.1f} GFLOP/s ({p['what']})",
            }
        )
    w = r["work"]
    mrows.append(
        {
            "item": "work per image",
            "value": f"{w['macs_per_sample'] / 1e9:.4g} GMAC ({w['what']})"
            if w.get("macs_per_sample")
            else f"unknown ({w.get('reason')})",
        }
    )
    return lines + [markdown_table(mrows)]


def _method_md(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    st = s["stability"]
    lines = ["## Timing method", ""]
    lines += [
        f"- **host_ms**, CPU backends: {HOST_TIMING['cpu']}.",
        f"- **host_ms**, torch CUDA: {HOST_TIMING['cuda-torch']}.",
        f"- **host_ms**, ONNX Runtime / TensorRT CUDA: {HOST_TIMING['cuda-run']}.",
        f"- **device_ms**, torch CUDA: {DEVICE_TIMING['cuda-torch']}.",
        f"- **device_ms**, ONNX Runtime / TensorRT CUDA: {DEVICE_TIMING['cuda-run']}.",
        f"- Warm-up {s['warmup_s']:.2g} s per backend, then rounds of a fixed number of iterations (*rounds×it*) "
        f"for at least {s['min_time_s']:.2g} s and {s['min_iters']} iterations, until the medians of the last "
        f"{st['windows']} windows of {st['window_rounds']} rounds agree within ±{100 * st['band']:.0f}% "
        f"(then *settled*), or the cap ({_fmt_ms(s['max_time_s']) or '5 × min time'} s per member) passes "
        "(then **noisy**, with the coefficient of variation of the round medians, *CV*).",
        f"- *median ms* = median of the per-round medians of the primary timing (device_ms on CUDA, host_ms on "
        f"CPU), *95% CI* = {s['ci']}; *img/s* = batch / median.",
        "- *GFLOP/s* = 2 × MACs per image × batch / median; *% peak* = share of the peak measured in this run "
        "(Machine table; CPU float rows of every precision against the float32 matmul peak; int8 rows against an "
        "int8 matmul where one was measured, else empty).",
        f"- *memory MiB*: CPU {MEMORY_KIND['cpu']}; CUDA torch {MEMORY_KIND['cuda']}; "
        "ONNX Runtime and TensorRT on CUDA: "
        f"{MEMORY_KIND['cuda-outside-torch']} (empty).",
        "- *measured in*: rows of comparison members are the comparison group's measurement (interleaved), "
        "not a second one.",
        "- Idle threads: ONNX Runtime sessions run with intra-op spinning off (`session.intra_op.allow_spinning` "
        "0), so a session's threads do not spin-wait on the cores the next member of a round needs; torch's "
        f"OpenMP wait policy in this process: {r['machine'].get('omp_wait_policy') or 'libgomp default (spins)'}.",
        "",
    ]
    return lines


def _verdict_md(r: dict[str, Any]) -> list[str]:
    v = r.get("fastest_passing")
    if not v:
        return []
    lines = ["## Fastest backend that passed parity", ""]
    if v["parity_report"] is None:
        return lines + [f"**{v['note']}**", ""]
    lines.append(f"From `{v['parity_report']}`: {v['rule']}.")
    lines.append("")
    rows = [
        {
            "precision": x["precision"],
            "batch": x["batch"],
            "fastest passing": x["fastest_passing"] or "none passed parity",
            "its median ms": _fmt_ms(x["fastest_passing_ms"]),
            "fastest of all": x["fastest"],
            "its parity": x["fastest_parity"],
        }
        for x in v["rows"]
    ]
    return lines + ([markdown_table(rows)] if rows else ["(no backend timed)", ""])


def _results_md(r: dict[str, Any]) -> list[str]:
    lines = ["## Backends × batch", ""]
    rows = []
    for x in r["results"]:
        p = x[x["primary"]] or x["host_ms"]
        rows.append(
            {
                "backend": x["name"],
                "batch": x["batch"],
                "precision": x["precision"],
                "math mode": x["math_mode"],
                "scope": x["scope"],
                "median ms": _fmt_ms(x["median_ms"]),
                "95% CI": _ci(x["median_ci95_ms"]),
                "p90": _fmt_ms(p["p90"]),
                "p99": _fmt_ms(p["p99"]),
                "host median ms": _fmt_ms(x["host_ms"]["median"]) if x["device_ms"] else "",
                "img/s": f"{x['throughput_ips']:.1f}",
                "GFLOP/s": "" if x.get("gflops") is None else f"{x['gflops']:.1f}",
                "% peak": _pct(x.get("peak_share")),
                "rounds×it": f"{x['rounds']}×{x['round_iters']}",
                "CV": _pct(x["cv"]),
                "noisy": "NOISY" if x["noisy"] else "",
                "threads": x["threads"],
                "memory MiB": "" if x.get("memory_mb") is None else f"{x['memory_mb']:.0f}",
                "compiled": {True: "yes", False: "NO (eager fallback)"}.get(x.get("ran_compiled"), ""),
                "measured in": x.get("measured_in", ""),
            }
        )
    lines += informative_table(rows, keep=("backend", "batch", "median ms", "noisy"))
    if r["skipped"]:
        lines += [
            "### Skipped",
            "",
            markdown_table([{"backend": s["name"], "reason": s["reason"]} for s in r["skipped"]]),
        ]
    if r["failed"]:
        lines += [
            "### Failed",
            "",
            markdown_table(
                [
                    {
                        "backend": s["name"],
                        "batch": s.get("batch", ""),
                        "what": s.get("stage", ""),
                        "reason": s["reason"],
                    }
                    for s in r["failed"]
                ]
            ),
        ]
    if r["over_budget"]:
        lines += [
            "### Not run (time budget)",
            "",
            markdown_table(
                [{"backend": s["name"], "batch": s["batch"], "section": s["section"]} for s in r["over_budget"]]
            ),
        ]
    return lines


def _comparison_md(r: dict[str, Any]) -> list[str]:
    c = r["comparison"]
    lines = [
        "## Unfolded vs folded vs BN twin",
        "",
        f"Same backend type, interleaved rounds; {c['metric']}. "
        f"Folded speedup = {c['ratios']['speedup_folded_vs_unfolded']}; "
        f"NF/BN = {c['ratios']['ratio_nf_folded_to_bn_folded']}. Twin: {c['twin']}. "
        "Intervals: 95% bootstrap over rounds.",
        "",
    ]
    crows = []
    for x in sorted(c["rows"], key=lambda x: (x["backend_type"], x["batch"])):
        row = {
            "backend type": x["backend_type"],
            "batch": x["batch"],
            "unfolded ms": _fmt_ms(x["unfolded_ms"]),
            "NF folded ms": _fmt_ms(x["nf_folded_ms"]),
            "BN folded ms": _fmt_ms(x["bn_folded_ms"]),
        }
        for key, label in RATIO_LABEL.items():
            v = x[key]
            row[label] = "" if v is None else f"{v:.3f}" + (" NOISY" if x[f"{key}_noisy"] else "")
            row[f"{label} 95% CI"] = _ci(x[f"{key}_ci95"], "{:.3f}")
        row["rounds"] = x["rounds"]
        crows.append(row)
    lines += informative_table(crows, keep=("backend type", "batch", "folded speedup", "NF/BN folded"))
    if c["skipped"]:
        lines += [
            "Comparison entries skipped:",
            "",
            markdown_table([{"entry": s["name"], "reason": s["reason"]} for s in c["skipped"]]),
        ]
    return lines


def _plots(r: dict[str, Any], out_dir: Path) -> None:
    plt = pyplot()
    from matplotlib import ticker

    panels = [
        ("backends", r["results"], lambda x: x["name"]),
        ("unfolded / folded / twin", r["comparison"]["results"], lambda x: f"{x['group']}/{x['variant']}"),
    ]
    for fname, key, ylabel in (
        (LATENCY_PNG, "median_ms", "median latency (ms)"),
        (THROUGHPUT_PNG, "throughput_ips", "throughput (images/s)"),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(14, 5))
        for ax, (title, rows, label) in zip(axes, panels):
            series: dict[str, list[tuple[int, float]]] = {}
            for x in rows:
                series.setdefault(label(x), []).append((x["batch"], x[key]))
            for name, pts in series.items():
                pts.sort()
                style = "--" if ("unfolded" in name or "bn-folded" in name) else "-"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            bs = sorted({x["batch"] for x in rows}) or r["batches"]
            ax.set_xticks(bs)
            ax.set_xticklabels([str(b) for b in bs])
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{r['model']}: {title}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            if series:
                ax.legend(fontsize=7, loc="best")
        save_figure(fig, out_dir / fname)


__all__ = [
    "BENCH_JSON",
    "BENCH_MD",
    "LATENCY_PNG",
    "NO_PARITY_NOTE",
    "THROUGHPUT_PNG",
    "RATIO_LABEL",
    "BenchError",
    "BenchRun",
    "CellPlan",
    "annotate_work",
    "bench_report",
    "fastest_passing",
    "informative_table",
    "parse_batches",
    "read_parity_statuses",
    "render_markdown",
    "torch_threads",
    "work_model",
]
