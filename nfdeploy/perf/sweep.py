"""A bench's timing, before anything is judged or written: which backends run (the rest skipped with their
reason), the comparison groups (unfolded, folded, twin on one backend type) timed in interleaved rounds, then
every other (backend, batch) cell timed alone, one backend active at a time, inside a wall-time budget.

One measurement per figure: a backend of the main table that is a member of a comparison group is not timed
again; its main-table row *is* the comparison's measurement (``measured_in`` says so)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nfdeploy.check.backends import ExportSource, select_backends
from nfdeploy.perf.fold_groups import (
    RATIO_LABEL,
    comparison_backends,
    comparison_groups,
    group_ratios,
    main_name,
    source_norm,
)
from nfdeploy.perf.options import BenchOptions
from nfdeploy.perf.peak import peak_for
from nfdeploy.perf.result import NotTimed, Row
from nfdeploy.perf.rounds import RoundPlan, describe_ratio
from nfdeploy.perf.timing import activate_measured, not_timed, time_backend, time_group
from nfdeploy.runtime.base import Backend, name_matches
from nfdeploy.status import Status

Log = Callable[[str], None]
Peaks = dict[tuple[str, str], dict[str, Any]]


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
    def fit(cls, options: BenchOptions, started: float, n_cells: int, log: Log) -> CellPlan:
        """The options' settings, or, with a budget, warm-up and min time scaled so that `n_cells` cells fit in
        half of what is left of it (5 s kept for the report itself)."""
        o = options
        if o.budget_s is None:
            return cls(o.warmup, o.min_time, o.min_iters, o.max_time)
        budget_end = started + o.budget_s - 5.0
        per_cell = max(budget_end - time.perf_counter(), 0.0) / max(n_cells, 1)
        scale = min(1.0, 0.5 * per_cell / max(o.warmup + o.min_time, 1e-9))
        warm, least = o.warmup * scale, o.min_time * scale
        cap = max(2 * (warm + least), 0.5)
        log(f"  budget {o.budget_s:.0f} s, {n_cells} cells: warm-up {warm:.2f} s, min time {least:.2f} s per cell")
        return cls(
            warm, least, o.min_iters, cap if o.max_time is None else min(o.max_time, cap), o.budget_s, budget_end
        )

    def time_comparison(
        self, live: dict[str, Backend], batch: int, input_shape: Sequence[int], own: str, act_mb: dict[str, Any]
    ) -> tuple[dict[str, Row], dict[str, Any], dict[str, Any]]:
        """One comparison cell: the group's active members (unfolded, folded, twin) in interleaved rounds at
        `batch`, with the fold ratios (fold_groups.group_ratios) from the same rounds."""
        device = next(iter(live.values())).device
        return time_group(
            live,
            batch,
            input_shape,
            self.rounds(device, len(live)),
            ratios=group_ratios(own, list(live)),
            activation_memory_mb=act_mb,
            budget_end=self.budget_end,
        )

    def rounds(self, device: str, members: int) -> RoundPlan:
        return RoundPlan(
            warmup_s=self.warmup_s,
            min_time_s=self.min_time_s,
            min_iters=self.min_iters,
            max_time_s=None if self.cap_s is None else self.cap_s * members,
            min_warmup_calls=2 if device == "cuda" else 1,
        )


@dataclass
class Sweep:
    """What a bench's timing found so far: rows, ratio rows, skipped, failed, over budget."""

    input_shape: tuple[int, ...]
    plan: CellPlan
    own: str  # the export's norm, "nf" or "bn"
    log: Log
    results: list[Row] = field(default_factory=list)
    comp_results: list[Row] = field(default_factory=list)
    ratio_rows: list[Row] = field(default_factory=list)
    skipped: list[NotTimed] = field(default_factory=list)
    comp_skipped: list[NotTimed] = field(default_factory=list)
    failed: list[NotTimed] = field(default_factory=list)
    over_budget: list[NotTimed] = field(default_factory=list)
    covering: dict[str, dict[int, Row]] = field(default_factory=dict)  # main name -> batch -> its row

    def over(self, name: str, n: int, section: str) -> bool:
        if self.plan.budget_end is not None and time.perf_counter() > self.plan.budget_end:
            reason = f"time budget of {self.plan.budget_s:.0f} s exhausted"
            self.over_budget.append(NotTimed(name, Status.SKIPPED, reason, batch=n, section=section))
            return True
        return False

    def failure(self, name: str, e: BaseException, *, stage: str, skipped: list[NotTimed], **extra: Any) -> None:
        """Record an exception of `name`: skipped (unavailable here), broken (failed to load) or crashed."""
        row = not_timed(name, e, stage=stage, **extra)
        (skipped if row.status is Status.SKIPPED else self.failed).append(row)
        self.log(
            f"  {'skipped' if row.status is Status.SKIPPED else 'FAILED'} {name}"
            + (f" batch {row.batch}" if row.batch is not None else "")
            + f": {row.stage or ''} {row.reason}"
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
            rows, ratios, info = self.plan.time_comparison(live, n, self.input_shape, self.own, act_mb)
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
            log_row(self.log, f"{group}/{variant}", row)
        self.ratio_rows.append(ratio_row(group, n, self.own, rows, ratios, info))
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
                if not self.over(b.name, n, "main"):
                    self.time_alone_cell(b, n, act)
        finally:
            b.deactivate()

    def time_alone_cell(self, b: Backend, n: int, act: float | None) -> None:
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
            return
        row["backend"] = b.describe()
        row["measured_in"] = "alone"
        self.results.append(row)
        log_row(self.log, b.name, row)


def split_available(backends: Sequence[Backend], log: Log) -> tuple[list[Backend], list[NotTimed]]:
    """(the backends that can run here, the others skipped with their reasons)."""
    runnable, skipped = [], []
    for b in backends:
        reason = b.unavailable_reason()
        if reason:
            skipped.append(NotTimed(b.name, Status.SKIPPED, reason))
            log(f"  skipped {b.name}: {reason}")
        else:
            runnable.append(b)
    return runnable, skipped


def comparison_members(
    source: ExportSource, only: Sequence[str] | None, tmp_dir: str, log: Log
) -> tuple[dict[str, Backend], list[NotTimed]]:
    """The comparison groups' members on CPU and CUDA ({"GROUP/VARIANT": backend}) and those skipped."""
    t0 = time.perf_counter()
    comp: dict[str, Backend] = {}
    dead: list[NotTimed] = []
    for dev in ("cpu", "cuda"):
        live, skipped = comparison_backends(source, dev, tmp_dir=tmp_dir, only=only)
        comp.update(live)
        dead += skipped
    log(f"  comparison backends built in {time.perf_counter() - t0:.1f} s")
    for s in dead:
        log(f"  comparison skipped {s.name}: {s.reason}")
    return comp, dead


def sweep(
    source: ExportSource,
    every: Sequence[Backend],
    options: BenchOptions,
    peaks: Peaks,
    *,
    work_dir: Path,
    started: float,
    log: Log,
) -> Sweep:
    """Time the backends of `every` that `options.only` selects (all without it) and the comparison groups
    (options.compare); measure into `peaks` the peak of every timed kind before the timing starts. Graphs the
    comparison exports live in a temporary dir under `work_dir` for the sweep's duration."""
    only = options.only
    main = [b for b in every if any(name_matches(b.name, o) for o in only)] if only else list(every)
    runnable, skipped = split_available(main, log)
    with tempfile.TemporaryDirectory(prefix=".bench-tmp-", dir=work_dir) as tmp:
        comp, comp_skipped = comparison_members(source, only, tmp, log) if options.compare else ({}, [])
        if only and not main and not comp and not comp_skipped:
            select_backends(every, only)  # raises: --only matched nothing at all
        for b in runnable + list(comp.values()):  # each peak before the timing, again after it (measure_again)
            peak_for(b.device, b.precision, peaks)
        own = source_norm(source)
        groups = comparison_groups(comp)
        covered = {main_name(*k.split("/"), own) for k in comp} - {None}
        n_cells = sum(len(options.batches_for(b.device)) for b in runnable if b.name not in covered) + sum(
            len(m) * len(options.batches_for(next(iter(m.values())).device)) for m in groups.values()
        )
        plan = CellPlan.fit(options, started, n_cells, log)
        run = Sweep(source.input_shape, plan, own, log, skipped=skipped, comp_skipped=comp_skipped)
        run.time_groups(groups, options.batches_for)
        for b in runnable:
            run.time_alone(b, options.batches_for(b.device))
    order = {b.name: i for i, b in enumerate(runnable)}
    run.results.sort(key=lambda r: (order.get(r["name"], 1e9), r["batch"]))
    return run


def log_row(log: Log, label: str, row: Row) -> None:
    lo, hi = row["median_ci95_ms"]
    log(
        f"  {label:<40} batch {row['batch']:>4}: median {row['median_ms']:9.3f} ms [{lo:.3f}, {hi:.3f}] "
        f"({row['scope']}), {row['throughput_ips']:10.1f} img/s, {row['rounds']}x{row['round_iters']} it"
        + (f" NOISY (cv {100 * (row['cv'] or 0):.1f}%, {row['stopped_by']})" if row["noisy"] else "")
    )


def ratio_row(
    group: str, batch: int, own: str, rows: dict[str, Row], ratios: dict[str, Any], info: dict[str, Any]
) -> Row:
    """The comparison table's row of one group at one batch: its members' medians and its ratios."""
    med = {v: r["median_ms"] for v, r in rows.items()}
    out: Row = {
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


__all__ = ["CellPlan", "Sweep", "comparison_members", "log_row", "ratio_row", "split_available", "sweep"]
