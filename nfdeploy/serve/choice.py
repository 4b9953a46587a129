"""What `serve` and `package` serve when not told: the fastest backend that passed parity, from the export's
saved parity and bench reports, on CPU as on GPU; and whether a backend needs padding to answer the same
whatever its batch-mates (from parity's batch-invariance measurement)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import read_json
from nfdeploy.check.backends import REFERENCE, default_report_dir
from nfdeploy.check.parity import PARITY_JSON, read_parity_rows
from nfdeploy.errors import UserError
from nfdeploy.perf.report import BENCH_JSON
from nfdeploy.runtime.base import Backend
from nfdeploy.status import Status

FALLBACK_BACKEND = "onnxruntime-cpu-fp32"


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str  # one line: why this one


def row_status(rows: dict[str, dict[str, Any]] | None, backend_name: str) -> Status:
    """The status of the backend's parity row; UNCHECKED without a report, or when the backend has no row."""
    word = (rows or {}).get(backend_name, {}).get("status", Status.UNCHECKED)
    try:
        return Status.parse(word)
    except ValueError as e:
        raise UserError(f"parity report, row {backend_name}: {e}") from None


def parity_verdict(export_dir: str | Path, backend_name: str) -> Status:
    """The backend's parity verdict (PASS, FAIL, BROKEN, ...), or UNCHECKED when the saved report has none."""
    return row_status(read_parity_rows(export_dir), backend_name)


def choose_backend(export_dir: str | Path, backends: Sequence[Backend], max_batch: int) -> BackendChoice:
    """Among the backends that run here and passed parity, the one with the lowest bench median per sample
    at the largest benched batch size not above `max_batch` (the batches a busy server forms); ONNX Runtime
    CPU fp32 with the reason when the reports do not decide."""
    rows = read_parity_rows(export_dir)
    if rows is None:
        return BackendChoice(
            FALLBACK_BACKEND, f"no parity report beside the export (run `nfdeploy parity {export_dir}`)"
        )
    here = {b.name for b in backends if b.name != REFERENCE and b.unavailable_reason() is None}
    passed = {n for n in here if row_status(rows, n) is Status.PASS}
    if not passed:
        return BackendChoice(FALLBACK_BACKEND, "no backend that runs here passed parity")
    bench_path = default_report_dir(export_dir) / BENCH_JSON
    if not bench_path.is_file():
        return BackendChoice(FALLBACK_BACKEND, f"no bench report beside the export (run `nfdeploy bench {export_dir}`)")
    results = [
        r
        for r in read_json(bench_path, "bench report").get("results", [])
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
    path = default_report_dir(export_dir) / PARITY_JSON
    if not path.is_file():
        return None
    cells = (read_json(path, "parity report").get("batch_matrix") or {}).get("backends", {}).get(backend_name)
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
    "row_status",
]
