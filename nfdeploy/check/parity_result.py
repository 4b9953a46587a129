"""A parity run as typed records: ParityRow (one backend), BackendPair (two backends against each other) and
ParityResult (the whole run), each with to_dict() / from_dict() that write and read parity.json's format.

parity.json's keys and words are the contract bench and serve read: a row's keys that ParityRow does not name
(the backend's own description: runtime, device, file, threads, providers, ...) stay in its `backend` dict, in
their order, so reading and writing a report gives back the same JSON. ok / failed / failure are not stored:
they follow from the rows' statuses (nfdeploy.status).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import read_json
from nfdeploy.check.backends import REFERENCE, default_report_dir
from nfdeploy.check.batch_matrix import BatchMatrix
from nfdeploy.errors import UserError
from nfdeploy.status import Status, failure_summary

# The report's files, in the report dir (default_report_dir beside the export): parity writes them, bench and
# serve read.
PARITY_JSON, PARITY_MD, PARITY_PNG = "parity.json", "parity.md", "parity.png"

# A judged row's numbers (nfdeploy.metrics.judge), in parity.json's order.
JUDGED = (
    "max_abs",
    "max_rel",
    "rel_l2",
    "sqnr_db",
    "cosine",
    "top1_agreement",
    "accuracy",
    "reference_accuracy",
    "accuracy_delta",
    "accuracy_drop",
    "note",
    "nonfinite",
    "tolerance",
)


@dataclass
class ParityRow:
    """One backend's parity row. `backend`: its description (nfdeploy.runtime Backend.describe() less the name:
    runtime, device, precision, math_mode, variant, mode and what its runtime adds). The numbers are those of
    metrics.judge against the float64 reference, present once the backend ran (sqnr_db None: identical output;
    accuracy_drop None with a `note`: the int8 rule without labels); `reason` says why it did not run, or why it
    failed."""

    name: str
    status: Status
    reason: str | None = None
    backend: dict[str, Any] = field(default_factory=dict)
    max_abs: float | None = None
    max_rel: float | None = None
    rel_l2: float | None = None
    sqnr_db: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_delta: float | None = None
    accuracy_drop: float | None = None
    note: str | None = None
    nonfinite: int | None = None
    tolerance: dict[str, Any] | None = None

    @classmethod
    def not_run(cls, description: dict[str, Any], status: Status, reason: str) -> ParityRow:
        """A backend that produced no output: skipped (cannot run here), broken or crashed."""
        return cls.from_dict({**description, "status": status, "reason": reason})

    @classmethod
    def judged(cls, description: dict[str, Any], judgement: dict[str, Any]) -> ParityRow:
        """A backend that ran: its description and metrics.judge's row (status, numbers, tolerance, reason)."""
        return cls.from_dict({**description, **judgement})

    @property
    def precision(self) -> str | None:
        return self.backend.get("precision")

    @property
    def ran(self) -> bool:
        """Judged against the reference (pass or FAIL)."""
        return self.status in (Status.PASS, Status.FAIL)

    def to_dict(self) -> dict[str, Any]:
        """parity.json's row: name, the description, the numbers, status, reason. sqnr_db is written whenever the
        row was judged (None: identical), accuracy_drop whenever its rule applies; other numbers when known."""
        judged = self.tolerance is not None
        row: dict[str, Any] = {"name": self.name, **self.backend}
        for k in JUDGED:
            v = getattr(self, k)
            if v is not None or (k == "sqnr_db" and judged) or (k == "accuracy_drop" and self.note is not None):
                row[k] = v
        row["status"] = self.status.value
        if self.reason is not None:
            row["reason"] = self.reason
        return row

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParityRow:
        """A row of parity.json (ValueError: no name, or no known status word)."""
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError("a backend row without a name")
        if "status" not in d:
            raise ValueError(f"the row of {d['name']} has no status")
        named = {f.name for f in dataclasses.fields(cls)} - {"backend"}
        return cls(
            **{k: v for k, v in d.items() if k in named and k != "status"},
            status=Status.parse(d["status"]),
            backend={k: v for k, v in d.items() if k not in named},
        )


@dataclass(frozen=True)
class BackendPair:
    """Two backends that ran, against each other (cross-runtime / cross-device): rel L2 and max |a - b| with `a`
    as the reference, and top-1 agreement."""

    a: str
    b: str
    rel_l2: float
    max_abs: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendPair:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class ParityResult:
    """A whole parity run: what was checked on which data (model, export_dir, data, accuracy: whether accuracy
    applies), the reference and the table's tolerances, every backend's row, the batch-invariance matrix, every
    pair of backends that ran, the reference framework's own error and top-1 agreement per dtype (which the
    judged tolerances scale with), the instruction set it ran under, where its files went, and the optional
    parts: saved outputs' file names, the per-block report (or why it failed). A report read from an older or
    hand-written file may lack every field but `backends`."""

    backends: list[ParityRow]
    model: str = ""
    export_dir: str = ""
    data: str = ""
    accuracy: str = ""
    reference: str = REFERENCE
    tolerances: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_matrix: BatchMatrix = field(default_factory=BatchMatrix)
    pairwise: list[BackendPair] = field(default_factory=list)
    framework_errors: dict[str, float | None] = field(default_factory=dict)
    framework_top1: dict[str, float] = field(default_factory=dict)
    isa: dict[str, Any] | None = None
    out_dir: str | None = None
    saved_outputs: list[str] | None = None
    per_block: dict[str, Any] | None = None
    per_block_error: str | None = None

    @property
    def failed(self) -> list[str]:
        """The backends whose status is a failure (FAIL, broken, crashed), in row order."""
        return [r.name for r in self.backends if r.status.is_failure]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failure(self) -> str | None:
        """'outside tolerance: a; failed to load: b', or None when nothing failed."""
        return failure_summary([(r.name, r.status) for r in self.backends]) or None

    def statuses(self) -> dict[str, Status]:
        """{backend name: its verdict} of every row."""
        return {r.name: r.status for r in self.backends}

    def row(self, name: str) -> ParityRow:
        """The row of the backend `name` (KeyError when the run has none)."""
        found = [r for r in self.backends if r.name == name]
        if not found:
            raise KeyError(f"no parity row of {name}")
        return found[0]

    def to_dict(self) -> dict[str, Any]:
        """parity.json: every key in its order; saved_outputs, per_block and per_block_error only when set."""
        d: dict[str, Any] = {
            "model": self.model,
            "export_dir": self.export_dir,
            "data": self.data,
            "accuracy": self.accuracy,
            "reference": self.reference,
            "tolerances": self.tolerances,
            "backends": [r.to_dict() for r in self.backends],
            "batch_matrix": self.batch_matrix.to_dict(),
            "pairwise": [p.to_dict() for p in self.pairwise],
            "ok": self.ok,
            "failed": self.failed,
            "failure": self.failure,
            "framework_errors": self.framework_errors,
            "framework_top1": self.framework_top1,
            "isa": self.isa,
            "out_dir": self.out_dir,
        }
        for k in ("saved_outputs", "per_block", "per_block_error"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParityResult:
        """A parity.json object (ValueError / TypeError / KeyError when it is not one)."""
        if not isinstance(d, dict) or not isinstance(d.get("backends"), list):
            raise ValueError("no list of backend rows")
        scalars = {f.name for f in dataclasses.fields(cls)} - {"backends", "batch_matrix", "pairwise"}
        return cls(
            backends=[ParityRow.from_dict(r) for r in d["backends"]],
            batch_matrix=BatchMatrix.from_dict(d.get("batch_matrix") or {}),
            pairwise=[BackendPair.from_dict(p) for p in d.get("pairwise") or []],
            **{k: d[k] for k in scalars if k in d},
        )


def read_parity_result(export_dir: str | Path) -> ParityResult | None:
    """The export's saved parity report (PARITY_JSON in its default report dir), or None when there is none.
    A report that exists but cannot be read raises UserError naming the file: a reader that needs a verdict
    (bench's fastest backend, serve's default) must not mistake it for "no report"."""
    path = default_report_dir(export_dir) / PARITY_JSON
    if not path.is_file():
        return None
    report = read_json(path, "parity report")
    try:
        return ParityResult.from_dict(report)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: not a parity report ({e})") from None


__all__ = [
    "JUDGED",
    "PARITY_JSON",
    "PARITY_MD",
    "PARITY_PNG",
    "BackendPair",
    "ParityResult",
    "ParityRow",
    "read_parity_result",
]
