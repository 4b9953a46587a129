"""The results of a bench, as typed records with their JSON: BenchResult (bench.json) and AgainstResult
(against.json), and NotTimed, a backend or cell that has no timing row and why (its Status).

A timing row (`Row`, timing.member_row: one backend at one batch size) stays the JSON object it is written
as; the records around the rows are typed. Each record's `to_dict()` is the file's JSON and `from_dict()` reads
it back, the format before this one included: bench v2 and against v1 had no status word on a backend that
was not timed (their "failed" rows read as broken when they failed to load, else crashed)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import read_json
from nfdeploy.perf.options import BenchError
from nfdeploy.status import Status

BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
AGAINST_JSON, AGAINST_MD = "against.json", "against.md"
BENCH_FORMAT = "nfdeploy-bench-v3"
AGAINST_FORMAT = "nfdeploy-bench-against-v2"
# The formats from_dict reads: the current one and the one before it (no status word on not-timed rows).
BENCH_FORMATS = ("nfdeploy-bench-v2", BENCH_FORMAT)
AGAINST_FORMATS = ("nfdeploy-bench-against-v1", AGAINST_FORMAT)

Row = dict[str, Any]  # one timing row (timing.member_row), or a ratio row built from them: its keys are the JSON's

LOAD_FAILED, CRASHED_TIMING = "failed to load", "crashed while timing"  # the "stage" of a failed row


@dataclass
class NotTimed:
    """A backend, comparison member or cell without a timing row: SKIPPED (cannot run here, or over the time
    budget), BROKEN (its artifact does not load) or CRASHED (failed while timed), with the reason."""

    name: str
    status: Status
    reason: str
    stage: str | None = None  # failures: LOAD_FAILED or CRASHED_TIMING
    batch: int | None = None
    section: str | None = None  # "main" or "comparison"
    key: str | None = None  # a comparison member's GROUP/VARIANT

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        out.update({k: getattr(self, k) for k in ("key", "batch", "section", "stage") if getattr(self, k) is not None})
        return {**out, "reason": self.reason, "status": self.status.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any], failed: bool = False) -> NotTimed:
        """A row of a "skipped"/"over_budget" list, or of "failed" (`failed`); a row without a status word
        (bench v2, against v1) takes the one its list and stage mean."""
        if "status" in d:
            status = Status.parse(d["status"])
        elif failed:
            status = Status.BROKEN if d.get("stage") == LOAD_FAILED else Status.CRASHED
        else:
            status = Status.SKIPPED
        names = {f.name for f in dataclasses.fields(cls)} - {"status"}
        return cls(status=status, **{k: v for k, v in d.items() if k in names})


def _rows(items: list[NotTimed]) -> list[dict[str, Any]]:
    return [x.to_dict() for x in items]


def _read_rows(d: dict[str, Any], key: str, failed: bool = False) -> list[NotTimed]:
    return [NotTimed.from_dict(x, failed) for x in d.get(key) or []]


def _check_format(d: dict[str, Any], readable: tuple[str, ...], where: str) -> None:
    if not isinstance(d, dict) or d.get("format") not in readable:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise BenchError(f"{where}: format {got!r}, this nfdeploy reads {', '.join(readable)}")


FASTEST_RULE = (
    "per precision and batch, the lowest median ms among backends whose parity "
    'status is "pass"; a backend absent from the parity report is not a candidate'
)


@dataclass
class FastestPassing:
    """The verdict beside the timings: per precision and batch, the fastest backend that passed parity."""

    parity_report: str | None  # the parity.json it read (None: none, or unreadable: `note` says which)
    note: str | None
    rows: list[Row]
    rule: str = FASTEST_RULE

    def to_dict(self) -> dict[str, Any]:
        return {"parity_report": self.parity_report, "note": self.note, "rule": self.rule, "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FastestPassing:
        return cls(d.get("parity_report"), d.get("note"), d.get("rows", []), d.get("rule", FASTEST_RULE))


COMPARISON_METRIC = (
    "median of per-round ratios of the primary timing (device_ms on CUDA, host_ms on CPU), "
    "members timed in interleaved rounds"
)
RATIO_MEANING = {
    "speedup_folded_vs_unfolded": "unfolded / folded, per round (> 1: folding is faster)",
    "ratio_nf_folded_to_bn_folded": "NF folded / BN twin folded, per round (< 1: NF is faster)",
}
TWIN = "same topology and widths with the other norm, random constants, folded the same way"


@dataclass
class Comparison:
    """Unfolded vs folded vs the folded twin on each backend type: ratio rows (`rows`), the members' own
    timing rows (`results`) and the members that did not run (`skipped`)."""

    rows: list[Row]
    results: list[Row]
    skipped: list[NotTimed]
    metric: str = COMPARISON_METRIC
    ratios: dict[str, str] = field(default_factory=lambda: dict(RATIO_MEANING))
    twin: str = TWIN

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "ratios": self.ratios,
            "twin": self.twin,
            "rows": self.rows,
            "results": self.results,
            "skipped": _rows(self.skipped),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        return cls(
            d.get("rows", []),
            d.get("results", []),
            _read_rows(d, "skipped"),
            d.get("metric", COMPARISON_METRIC),
            d.get("ratios", dict(RATIO_MEANING)),
            d.get("twin", TWIN),
        )


@dataclass
class BenchResult:
    """One bench of an export dir: every backend x batch row, what was not timed and why, the comparison
    groups, the verdict beside parity, and how (settings, timing method, machine and its load, peaks)."""

    created: str
    export_dir: str
    out_dir: str
    model: str
    norm: str
    input_shape: list[int]
    batches: list[int]
    cpu_batches: list[int]
    settings: dict[str, Any]
    machine: dict[str, Any]
    machine_load: dict[str, Any]  # {"before": machine.machine_load(), "after": ...}
    warnings: list[str]
    timing_method: dict[str, Any]
    work: dict[str, Any]  # assemble.work_model: multiply-accumulates per sample, or why unknown
    peaks: list[dict[str, Any]]  # peak.py entries
    results: list[Row]
    fastest_passing: FastestPassing
    skipped: list[NotTimed]
    failed: list[NotTimed]
    over_budget: list[NotTimed]
    comparison: Comparison
    wall_seconds: float = 0.0
    format: str = BENCH_FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "format"}
        out.update(
            fastest_passing=self.fastest_passing.to_dict(),
            skipped=_rows(self.skipped),
            failed=_rows(self.failed),
            over_budget=_rows(self.over_budget),
            comparison=self.comparison.to_dict(),
        )
        return {"format": self.format, **out}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = BENCH_JSON) -> BenchResult:
        _check_format(d, BENCH_FORMATS, where)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(
            fastest_passing=FastestPassing.from_dict(d["fastest_passing"]),
            skipped=_read_rows(d, "skipped"),
            failed=_read_rows(d, "failed", failed=True),
            over_budget=_read_rows(d, "over_budget"),
            comparison=Comparison.from_dict(d["comparison"]),
        )
        return cls(**kw)

    @classmethod
    def read(cls, path: str | Path) -> BenchResult:
        """A saved bench.json (a dir: its bench.json)."""
        path = Path(path)
        path = path / BENCH_JSON if path.is_dir() else path
        return cls.from_dict(read_json(path, "bench report"), str(path))


AGAINST_RATIO = "A / B: median of per-round ratios of the primary timing, A and B active together, interleaved rounds"


@dataclass
class AgainstResult:
    """Two exports side by side (`bench --against`): per backend both can run and batch size, the ratio A / B
    of interleaved rounds with its interval (`rows`, each with both members' timing rows under "a" and "b")."""

    created: str
    a: dict[str, Any]  # {"export_dir", "model", "onnx_sha256": {precision: sha256}}
    b: dict[str, Any]
    identical_onnx: dict[str, bool]
    input_shape: list[int]
    batches: list[int]
    out_dir: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    machine_load: dict[str, Any]
    warnings: list[str]
    work: dict[str, Any]
    peaks: list[dict[str, Any]]
    rows: list[Row]
    skipped: list[NotTimed]
    failed: list[NotTimed]
    ratio: str = AGAINST_RATIO
    wall_seconds: float = 0.0
    format: str = AGAINST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "format"}
        out.update(skipped=_rows(self.skipped), failed=_rows(self.failed))
        return {"format": self.format, **out}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = AGAINST_JSON) -> AgainstResult:
        _check_format(d, AGAINST_FORMATS, where)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(skipped=_read_rows(d, "skipped"), failed=_read_rows(d, "failed", failed=True))
        return cls(**kw)

    @classmethod
    def read(cls, path: str | Path) -> AgainstResult:
        """A saved against.json (a dir: its against.json)."""
        path = Path(path)
        path = path / AGAINST_JSON if path.is_dir() else path
        return cls.from_dict(read_json(path, "against report"), str(path))


__all__ = [
    "AGAINST_FORMAT",
    "AGAINST_FORMATS",
    "AGAINST_JSON",
    "AGAINST_MD",
    "BENCH_FORMAT",
    "BENCH_FORMATS",
    "BENCH_JSON",
    "BENCH_MD",
    "CRASHED_TIMING",
    "LOAD_FAILED",
    "AgainstResult",
    "BenchResult",
    "Comparison",
    "FastestPassing",
    "NotTimed",
    "Row",
]
