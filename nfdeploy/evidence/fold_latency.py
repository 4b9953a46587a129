"""The fold's speed on torch, side by side (FOLD_LATENCY_METHOD says how it is measured).

What it costs: a cell (group x batch) runs its three members in each round, at least
WINDOW_ROUNDS x WINDOWS = 12 rounds (5 when the cap stops it first) and min_time per member, shrunk to fit the
budget exactly as bench's cells are (perf.sweep.CellPlan) and capped at 3 x the per-member cap: timing the three
members alone one after another would take the same 3 x 12 rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.backends import ExportSource, torch_backend
from nfdeploy.machine import machine_info
from nfdeploy.perf.fold_groups import source_norm
from nfdeploy.perf.options import BenchOptions
from nfdeploy.perf.result import NotTimed
from nfdeploy.perf.rounds import STABILITY_BAND, WINDOW_ROUNDS, WINDOWS
from nfdeploy.perf.sweep import CellPlan
from nfdeploy.perf.timing import activate_measured, not_timed
from nfdeploy.precision import PRECISIONS
from nfdeploy.render import markdown_table
from nfdeploy.runtime.base import Backend, BackendSpec
from nfdeploy.status import Status

FOLD_LATENCY_JSON, FOLD_LATENCY_MD = "fold_latency.json", "fold_latency.md"
FOLD_LATENCY_FORMAT = "nfdeploy-fold-latency-v1"
MIN_ITERS = 10
FOLD_LATENCY_METHOD = (
    "Per backend type (device, precision, execution mode) the unfolded model, the folded model and the folded "
    "twin with the other norm form one group, timed together in interleaved rounds (nfdeploy.perf.time_group, "
    "the rounds every ratio of the project comes from). Each member's latency and the group's ratios (folded "
    "speedup = unfolded / folded, NF/BN = NF folded / BN folded, medians of per-round ratios with 95% bootstrap "
    "intervals) come from the same rounds: nothing is timed twice, and no ratio divides medians measured one "
    "after another."
)


def fold_groups(
    source: ExportSource, precisions: Sequence[str], modes: Sequence[str], device: str, twins: Sequence[Backend]
) -> dict[str, dict[str, Backend]]:
    """{group: {variant: backend}}: per precision and mode, the export's unfolded and folded model on torch and
    the folded twin from `twins` (workloads.twin_backends of the same precisions and modes). A group is named
    like a backend without its variant (torch-cuda-fp32-tf32-cudagraph); variants are "nf-unfolded",
    "nf-folded" and "bn-folded" (perf.fold_groups.group_ratios reads them)."""
    own = source_norm(source)
    twin_of = {(b.precision, b.spec.mode): b for b in twins}
    groups: dict[str, dict[str, Backend]] = {}
    for prec in precisions:
        for mode in modes:
            mode = mode if device == "cuda" else ""
            group = "-".join(p for p in ("torch", device, PRECISIONS[prec].tag, mode) if p)
            twin = twin_of[(prec, mode)]
            groups[group] = {
                f"{own}-unfolded": torch_backend(source, BackendSpec("torch", device, prec, "unfolded", mode)),
                f"{own}-folded": torch_backend(source, BackendSpec("torch", device, prec, "folded", mode)),
                twin.spec.variant: twin,
            }
    return groups


class FoldTiming:
    """One fold_latency run: the cells' plan and what it found so far."""

    def __init__(self, input_shape: Sequence[int], own: str, plan: CellPlan, log: Callable[[str], None]):
        self.input_shape, self.own, self.plan, self.log = tuple(input_shape), own, plan, log
        self.results: list[dict[str, Any]] = []
        self.ratios: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.over_budget: list[dict[str, Any]] = []

    def record_failure(self, row: NotTimed) -> None:
        """A member or cell without a number (perf.timing.not_timed: skipped, broken or crashed)."""
        (self.skipped if row.status is Status.SKIPPED else self.failed).append(row.to_dict())
        self.log(f"  {row.status.value} {row.name}" + (f" batch {row.batch}" if row.batch else "") + f": {row.reason}")

    def run_group(self, group: str, members: dict[str, Backend], batches: Sequence[int]) -> None:
        """All members of `group` active together, each batch one interleaved cell."""
        live: dict[str, Backend] = {}
        act_mb: dict[str, float | None] = {}
        try:
            for variant, b in members.items():
                try:
                    act_mb[variant] = activate_measured(b)
                    live[variant] = b
                except Exception as e:  # noqa: BLE001 - a member that cannot start is a finding, not a crash
                    self.record_failure(not_timed(b.name, e, stage="load", key=f"{group}/{variant}"))
            for n in batches if live else ():
                if self.plan.budget_end is not None and time.perf_counter() > self.plan.budget_end:
                    reason = f"time budget of {self.plan.budget_s:.0f} s exhausted"
                    self.over_budget.append({"name": group, "batch": n, "reason": reason})
                    continue
                self.time_cell(group, live, act_mb, n)
        finally:
            for b in members.values():
                b.deactivate()

    def time_cell(self, group: str, live: dict[str, Backend], act_mb: dict[str, float | None], n: int) -> None:
        device = next(iter(live.values())).device
        try:
            rows, ratios, info = self.plan.time_comparison(live, n, self.input_shape, self.own, act_mb)
        except Exception as e:  # noqa: BLE001 - one failing cell (OOM, a missing kernel) must not sink the rest
            self.record_failure(not_timed(group, e, stage="run", batch=n))
            if device == "cuda":
                torch.cuda.empty_cache()
            return
        for variant, row in rows.items():
            others = ", ".join(v for v in rows if v != variant)
            row.update(group=group, variant=variant, backend=live[variant].describe(), measured_in=f"{group}: {others}")
            self.results.append(row)
        self.ratios.append(_ratio_row(group, live, n, self.own, rows, ratios, info))
        r = self.ratios[-1]
        self.log(
            f"  {group:<36} batch {n:>4}: folded speedup {_fmt(r['folded_speedup'])}, NF/BN {_fmt(r['nf_over_bn'])} "
            f"({info['rounds']} rounds, {info['stopped_by']})"
        )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ratio_row(
    group: str,
    live: dict[str, Backend],
    batch: int,
    own: str,
    rows: dict[str, dict[str, Any]],
    ratios: dict[str, dict[str, Any]],
    info: dict[str, Any],
) -> dict[str, Any]:
    """One cell's medians and its two ratios (None where a member is missing), each with its interval."""
    first = next(iter(live.values()))
    med = {v: r["median_ms"] for v, r in rows.items()}
    speedup, nf_bn = ratios.get("speedup_folded_vs_unfolded"), ratios.get("ratio_nf_folded_to_bn_folded")
    return {
        "group": group,
        "precision": first.precision,
        "mode": first.spec.mode,
        "batch": batch,
        "unfolded_ms": med.get(f"{own}-unfolded"),
        "nf_folded_ms": med.get("nf-folded"),
        "bn_folded_ms": med.get("bn-folded"),
        "folded_speedup": speedup["ratio"] if speedup else None,
        "folded_speedup_ci95": speedup["ci95"] if speedup else None,
        "nf_over_bn": nf_bn["ratio"] if nf_bn else None,
        "nf_over_bn_ci95": nf_bn["ci95"] if nf_bn else None,
        "rounds": info["rounds"],
        "stopped_by": info["stopped_by"],
        "noisy": any(r["noisy"] for r in (speedup, nf_bn) if r),
    }


def fold_latency(
    source: ExportSource,
    groups: dict[str, dict[str, Backend]],
    out_dir: Path,
    batches: Sequence[int],
    *,
    min_time: float,
    warmup: float,
    budget_s: float | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time every group at every batch (interleaved rounds) inside `budget_s`; write fold_latency.json/.md
    to `out_dir` and return the report."""
    t_start = time.perf_counter()
    n_cells = sum(len(m) for m in groups.values()) * len(batches)
    settings = BenchOptions(
        batches=tuple(batches), min_time=min_time, warmup=warmup, min_iters=MIN_ITERS, budget_s=budget_s
    )
    plan = CellPlan.fit(settings, t_start, n_cells, log)
    timing = FoldTiming(source.input_shape, source_norm(source), plan, log)
    log(f"fold latency {source.manifest.model}: {len(groups)} groups x batches {list(batches)}")
    for group, members in groups.items():
        timing.run_group(group, members, batches)
    report = {
        "format": FOLD_LATENCY_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "export_dir": str(source.export_dir),
        "model": source.manifest.model,
        "norm": timing.own,
        "input_shape": list(source.input_shape),
        "batches": list(batches),
        "settings": {
            "warmup_s": plan.warmup_s,
            "min_time_s": plan.min_time_s,
            "min_iters": plan.min_iters,
            "max_time_s": plan.cap_s,
            "requested_warmup_s": warmup,
            "requested_min_time_s": min_time,
            "budget_s": budget_s,
            "stability": {"band": STABILITY_BAND, "window_rounds": WINDOW_ROUNDS, "windows": WINDOWS},
            "method": FOLD_LATENCY_METHOD,
        },
        "machine": machine_info(),
        "results": timing.results,
        "ratios": timing.ratios,
        "skipped": timing.skipped,
        "failed": timing.failed,
        "over_budget": timing.over_budget,
        "wall_seconds": time.perf_counter() - t_start,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / FOLD_LATENCY_JSON, report)
    atomic_write_text(out_dir / FOLD_LATENCY_MD, fold_latency_markdown(report))
    return report


def fold_latency_markdown(report: dict[str, Any]) -> str:
    """fold_latency.md: the method, each member's latency, and each cell's ratios with their intervals."""
    rows = [
        {
            "backend": r["name"],
            "batch": r["batch"],
            "median ms": r["median_ms"],
            "95% interval": "[{:.4g}, {:.4g}]".format(*r["median_ci95_ms"]),
            "scope": r["scope"],
            "img/s": r["throughput_ips"],
            "rounds": r["rounds"],
            "noisy": "NOISY" if r["noisy"] else "",
        }
        for r in report["results"]
    ]
    lines = [f"# Fold latency: {report['model']} ({report['created']})", "", report["settings"]["method"], ""]
    lines += ["## Latency (each member of its group)", "", markdown_table(rows)]
    lines += ["## Unfolded vs folded vs twin (same rounds)", "", _ratio_markdown(report["ratios"])]
    for key in ("skipped", "failed", "over_budget"):
        if report[key]:
            lines += [f"## {key.replace('_', ' ')}", "", markdown_table(report[key])]
    return "\n".join(lines) + "\n"


def _ratio_markdown(ratios: Sequence[dict[str, Any]]) -> str:
    def ci(v: Sequence[float] | None) -> str:
        return "" if not v else f"[{v[0]:.3f}, {v[1]:.3f}]"

    rows = [
        {
            "backend type": r["group"],
            "batch": r["batch"],
            "unfolded ms": r["unfolded_ms"],
            "NF folded ms": r["nf_folded_ms"],
            "BN folded ms": r["bn_folded_ms"],
            "folded speedup": r["folded_speedup"],
            "95% interval": ci(r["folded_speedup_ci95"]),
            "NF/BN": r["nf_over_bn"],
            "NF/BN 95% interval": ci(r["nf_over_bn_ci95"]),
            "rounds": r["rounds"],
            "noisy": "NOISY" if r["noisy"] else "",
        }
        for r in ratios
    ]
    return markdown_table(rows, floatfmt="{:.4g}")


def latency_digest(report: dict[str, Any], ratios_note: str = "") -> dict[str, Any]:
    """What a phase's summary keeps of a latency report (fold_latency's or bench's): one row per member and cell,
    the ratios, what did not run, and a Markdown table (+ `ratios_note` and the ratio table when there are ratios)."""
    rows = [
        {
            "backend": r["name"],
            "precision": r["precision"],
            "batch": r["batch"],
            "metric": r["primary"],
            "scope": r["scope"],
            "median_ms": r["median_ms"],
            "p90_ms": r[r["primary"]]["p90"],
            "throughput_ips": r["throughput_ips"],
            "iterations": r["iterations"],
            "truncated": r["truncated"],
        }
        for r in report["results"]
    ]
    markdown = markdown_table(rows, floatfmt="{:.4g}")
    if report.get("ratios"):
        markdown += f"\n\n{ratios_note}\n\n" + _ratio_markdown(report["ratios"])
    keep = ("skipped", "failed", "over_budget", "settings", "wall_seconds")
    return {"results": rows, "ratios": report.get("ratios") or [], **{k: report[k] for k in keep}, "markdown": markdown}


def fold_latency_digest(report: dict[str, Any]) -> dict[str, Any]:
    return latency_digest(
        report,
        "Unfolded vs folded vs BN twin (each cell's members timed in interleaved rounds; ratios are medians of "
        "per-round ratios):",
    )


__all__ = [
    "FOLD_LATENCY_FORMAT",
    "FOLD_LATENCY_METHOD",
    "FOLD_LATENCY_JSON",
    "FOLD_LATENCY_MD",
    "FoldTiming",
    "fold_groups",
    "fold_latency",
    "fold_latency_digest",
    "fold_latency_markdown",
    "latency_digest",
]
