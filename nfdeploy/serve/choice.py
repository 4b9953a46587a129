"""What `serve` and `package` serve when not told: the fastest backend that passed parity, from the export's
saved parity and bench reports, on CPU as on GPU; and whether a backend needs padding to answer the same
whatever its batch-mates (from parity's batch-invariance measurement)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfdeploy.check.backends import REFERENCE, default_report_dir
from nfdeploy.check.parity import read_parity_result
from nfdeploy.perf.result import BENCH_JSON, BenchResult
from nfdeploy.runtime.base import Backend
from nfdeploy.status import Status

FALLBACK_BACKEND = "onnxruntime-cpu-fp32"


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str  # one line: why this one


def saved_verdicts(export_dir: str | Path) -> dict[str, Status] | None:
    """{backend name: parity verdict} of the export's saved parity report, or None when it has none (a report
    that cannot be read raises UserError: nothing may mistake it for "unchecked")."""
    result = read_parity_result(export_dir)
    return None if result is None else result.statuses()


def parity_verdict(export_dir: str | Path, backend_name: str) -> Status:
    """The backend's parity verdict (PASS, FAIL, BROKEN, ...), or UNCHECKED when the saved report has none."""
    return (saved_verdicts(export_dir) or {}).get(backend_name, Status.UNCHECKED)


def choose_backend(export_dir: str | Path, backends: Sequence[Backend], max_batch: int) -> BackendChoice:
    """Among the backends that run here and passed parity, the one with the lowest bench median per sample
    at the largest benched batch size not above `max_batch` (the batches a busy server forms); ONNX Runtime
    CPU fp32 with the reason when the reports do not decide."""
    verdicts = saved_verdicts(export_dir)
    if verdicts is None:
        return BackendChoice(
            FALLBACK_BACKEND, f"no parity report beside the export (run `nfdeploy parity {export_dir}`)"
        )
    here = {b.name for b in backends if b.name != REFERENCE and b.unavailable_reason() is None}
    passed = {n for n in here if verdicts.get(n) is Status.PASS}
    if not passed:
        return BackendChoice(FALLBACK_BACKEND, "no backend that runs here passed parity")
    bench_path = default_report_dir(export_dir) / BENCH_JSON
    if not bench_path.is_file():
        return BackendChoice(FALLBACK_BACKEND, f"no bench report beside the export (run `nfdeploy bench {export_dir}`)")
    results = [
        r
        for r in BenchResult.read(bench_path).results
        if r.get("name") in passed and r.get("median_ms") and r.get("measured_in", "alone") == "alone"
    ]
    batches = sorted({int(r["batch"]) for r in results})
    if not batches:
        return BackendChoice(FALLBACK_BACKEND, "the bench report times no backend that passed parity")
    at = max([b for b in batches if b <= max_batch] or [min(batches)])
    ranked = sorted((r for r in results if int(r["batch"]) == at), key=lambda r: r["median_ms"] / at)
    best = ranked[0]
    per = lambda r: f"{r['median_ms'] / at * 1e3:.0f} µs/sample"  # noqa: E731
    runner_up = f"; next {ranked[1]['name']} {per(ranked[1])}" if len(ranked) > 1 else ""
    return BackendChoice(
        best["name"],
        f"passed parity and is the fastest of {len(ranked)} that did at batch {at} "
        f"in {bench_path.name} ({per(best)}{runner_up})",
    )


def measured_batch_invariance(export_dir: str | Path, backend_name: str) -> dict[str, Any] | None:
    """Parity's batch-invariance measurement of the backend ({"batches": [...], "bitwise": bool}), or None
    when the report has none for it."""
    result = read_parity_result(export_dir)
    cells = result.batch_matrix.backends.get(backend_name) if result is not None else None
    if not cells:
        return None
    return {
        "batches": sorted(int(b) for b in cells),
        "bitwise": all(c.get("bitwise_share") == 1.0 for c in cells.values()),
    }


__all__ = [
    "FALLBACK_BACKEND",
    "BackendChoice",
    "choose_backend",
    "measured_batch_invariance",
    "parity_verdict",
    "saved_verdicts",
]
