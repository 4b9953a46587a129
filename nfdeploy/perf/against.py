"""Two exports side by side: `nfdeploy bench EXPORT --against OTHER`; `bench_against` = measure_against (an
AgainstResult) + write_against (against.json, against.md).

Every backend both exports can run (same backend name: same runtime, device, precision, variant)
is timed with the two exports' backends active together, in interleaved rounds (rounds.py), at
each batch size; the figure is the ratio EXPORT / OTHER (median of per-round ratios, 95% bootstrap
interval over rounds). It serves comparing two export choices (opset, precision, a plain export vs
nfdeploy's fold) and checks the method itself: an export against a copy of itself must give 1.00
with an interval that contains 1.00.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import Manifest, atomic_write_json, atomic_write_text
from nfdeploy.check.backends import REFERENCE, ExportSource, default_report_dir, export_backends, load_export_source
from nfdeploy.machine import machine_info, machine_load
from nfdeploy.perf.assemble import CI_TEXT, load_warnings, work_model
from nfdeploy.perf.markdown import render_against
from nfdeploy.perf.options import AGAINST_OPTIONS, BenchError, BenchOptions, torch_threads
from nfdeploy.perf.peak import above_peak_warning, annotate_work, measure_again, peak_for
from nfdeploy.perf.result import AGAINST_JSON, AGAINST_MD, AgainstResult, NotTimed, Row
from nfdeploy.perf.rounds import STABILITY_BAND, WINDOW_ROUNDS, WINDOWS, RoundPlan, describe_ratio
from nfdeploy.perf.sweep import Log, Peaks
from nfdeploy.perf.timing import activate_measured, not_timed, time_group
from nfdeploy.runtime.base import Backend, name_matches
from nfdeploy.status import Status


def _onnx_shas(manifest: Manifest) -> dict[str, str | None]:
    return {prec: e.sha256 for prec, e in manifest.onnx.items()}


def common_backends(
    a: ExportSource, b: ExportSource, options: BenchOptions
) -> tuple[dict[str, Backend], dict[str, Backend], list[str], list[NotTimed]]:
    """The backends of A and B by name, the names both can run here, and the skipped ones with reasons."""
    only = options.only

    def pick(src: ExportSource) -> dict[str, Backend]:
        bs = export_backends(src, compile=options.compile, tensorrt=options.tensorrt, threads=options.threads)
        return {x.name: x for x in bs if (any(name_matches(x.name, o) for o in only) if only else x.name != REFERENCE)}

    ba, bb = pick(a), pick(b)
    skipped: list[NotTimed] = []
    pairs = []
    for name in ba:
        if name not in bb:
            skipped.append(NotTimed(name, Status.SKIPPED, "only the first export has it"))
            continue
        reason = ba[name].unavailable_reason() or bb[name].unavailable_reason()
        if reason:
            skipped.append(NotTimed(name, Status.SKIPPED, reason))
        else:
            pairs.append(name)
    skipped += [NotTimed(n, Status.SKIPPED, "only the second export has it") for n in bb if n not in ba]
    if not pairs:
        raise BenchError(
            "the two exports have no backend in common that can run here"
            + (f" (--only {' '.join(only)})" if only else "")
        )
    return ba, bb, pairs, skipped


@dataclass
class PairTiming:
    """What timing A against B found so far: one ratio row per (backend, batch), and what did not run."""

    input_shape: tuple[int, ...]
    plan: RoundPlan
    log: Log
    rows: list[Row] = field(default_factory=list)
    skipped: list[NotTimed] = field(default_factory=list)
    failed: list[NotTimed] = field(default_factory=list)

    def time_pair(self, name: str, members: dict[str, Backend], batches: Sequence[int]) -> None:
        """A and B of one backend name, active together, at each batch size: one row per batch, or a failure."""
        try:
            try:
                act = {k: activate_measured(x) for k, x in members.items()}
            except Exception as e:  # noqa: BLE001 - unavailable: skipped; anything else: failed to load
                row = not_timed(name, e, stage="load")
                (self.skipped if row.status is Status.SKIPPED else self.failed).append(row)
                skipped = row.status is Status.SKIPPED
                self.log(f"  {'skipped' if skipped else 'FAILED'} {name}: {row.stage or ''} {row.reason}")
                return
            p = RoundPlan(**{**self.plan.__dict__, "min_warmup_calls": 2 if members["A"].device == "cuda" else 1})
            for n in batches:
                try:
                    res, ratios, info = time_group(
                        members, n, self.input_shape, p, ratios={"A/B": ("A", "B")}, activation_memory_mb=act
                    )
                except Exception as e:  # noqa: BLE001 - a crash while timing is a failure with its message
                    self.failed.append(not_timed(name, e, stage="run", batch=n))
                    self.log(f"  FAILED {name} batch {n}: {self.failed[-1].reason}")
                    continue
                self.rows.append(pair_row(name, n, res, ratios["A/B"], info))
                self.log(
                    f"  {name:<32} batch {n:>3}: A {res['A']['median_ms']:.3f} ms, B {res['B']['median_ms']:.3f} ms, "
                    f"A/B {describe_ratio(ratios['A/B'])}"
                )
        finally:
            for x in members.values():
                x.deactivate()


def pair_row(name: str, batch: int, res: dict[str, Row], rr: dict[str, Any], info: dict[str, Any]) -> Row:
    """The row of one backend at one batch: the ratio A/B with its interval, and both members' timing rows."""
    return {
        "backend": name,
        "batch": batch,
        "ratio": rr["ratio"],
        "ci95": rr["ci95"],
        "cv": rr["cv"],
        "settled": rr["settled"],
        "noisy": rr["noisy"],
        "rounds": info["rounds"],
        "stopped_by": info["stopped_by"],
        "contains_1": rr["ci95"][0] <= 1.0 <= rr["ci95"][1],
        "a": res["A"],
        "b": res["B"],
    }


def bench_against(
    export_a: str | Path,
    export_b: str | Path,
    out_dir: str | Path | None = None,
    options: BenchOptions | None = None,
    *,
    log: Log = print,
) -> AgainstResult:
    """Time export A against export B on every backend both can run; write against.json/.md to `out_dir`
    (default: A's report dir) and return the result. `options` (default AGAINST_OPTIONS): `only` selects
    backends (the float64 reference only when named); `max_time` caps each (backend, batch) cell per member;
    `threads` sets the CPU threads of torch (for the call) and of ONNX Runtime sessions. cpu_batches and
    budget_s do not apply here, and compare has nothing to compare."""
    started = time.perf_counter()
    options = options or AGAINST_OPTIONS
    if options.cpu_batches or options.budget_s is not None:
        raise BenchError("bench --against takes no cpu_batches and no budget_s: every backend runs every batch")
    a, b = load_export_source(export_a), load_export_source(export_b)
    if a.input_shape != b.input_shape:
        raise BenchError(f"the exports take different inputs: {list(a.input_shape)} vs {list(b.input_shape)}")
    out = Path(out_dir) if out_dir is not None else default_report_dir(a.export_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(options.threads):
        result = measure_against(a, b, out, options, log=log)
    result.wall_seconds = time.perf_counter() - started
    write_against(result, out, log)
    return result


def measure_against(
    a: ExportSource, b: ExportSource, out_dir: Path, options: BenchOptions, *, log: Log = print
) -> AgainstResult:
    """A against B as an AgainstResult, nothing written (`out_dir` is recorded in it)."""
    batches = list(options.batches)
    log(f"bench {a.export_dir} against {b.export_dir}, input {list(a.input_shape)}, batches {batches}")
    load_before = machine_load()
    if load_before["busy"]:
        log(f"  WARNING {load_before['warning']}")
    peaks: Peaks = {}
    peak_for("cpu", "fp32", peaks)
    ba, bb, pairs, skipped = common_backends(a, b, options)
    for name in pairs:
        peak_for(ba[name].device, ba[name].precision, peaks)
    max_time = None if options.max_time is None else 2 * options.max_time  # two members per cell
    plan = RoundPlan(
        warmup_s=options.warmup, min_time_s=options.min_time, min_iters=options.min_iters, max_time_s=max_time
    )
    timing = PairTiming(a.input_shape, plan, log, skipped=skipped)
    for name in pairs:
        timing.time_pair(name, {"A": ba[name], "B": bb[name]}, batches)
    measure_again(peaks)
    work = work_model(a)
    for r in timing.rows:
        for member in (r["a"], r["b"]):
            annotate_work(member, work, peaks)
    return assemble_against(a, b, out_dir, options, plan, load_before, timing, work, peaks)


def assemble_against(
    a: ExportSource,
    b: ExportSource,
    out_dir: Path,
    options: BenchOptions,
    plan: RoundPlan,
    load_before: dict[str, Any],
    timing: PairTiming,
    work: dict[str, Any],
    peaks: Peaks,
) -> AgainstResult:
    """The AgainstResult of a finished timing (the machine's load is taken again now)."""
    load_after = machine_load()
    warnings = load_warnings(load_before, load_after)
    members = [{**r[k], "name": f"{r['backend']} ({k.upper()})"} for r in timing.rows for k in ("a", "b")]
    above = above_peak_warning(members)
    noisy = [f"{r['backend']} batch {r['batch']}" for r in timing.rows if r["noisy"]]
    if above:
        warnings.append(above)
    if noisy:
        warnings.append(
            f"{len(noisy)} ratio(s) did not settle within ±{100 * STABILITY_BAND:.0f}% (noisy): " + ", ".join(noisy)
        )
    for w in warnings[1 if load_before["busy"] else 0 :]:
        timing.log(f"  WARNING {w}")
    sha_a, sha_b = _onnx_shas(a.manifest), _onnx_shas(b.manifest)
    return AgainstResult(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        a={"export_dir": str(a.export_dir), "model": a.manifest.model, "onnx_sha256": sha_a},
        b={"export_dir": str(b.export_dir), "model": b.manifest.model, "onnx_sha256": sha_b},
        identical_onnx={p: sha_a[p] == sha_b.get(p) for p in sha_a if p in sha_b},
        input_shape=list(a.input_shape),
        batches=list(options.batches),
        out_dir=str(out_dir),
        settings={
            "warmup_s": plan.warmup_s,
            "min_time_s": plan.min_time_s,
            "min_iters": plan.min_iters,
            "max_time_s": plan.max_time_s,
            "only": list(options.only) if options.only else None,
            "stability": {"band": STABILITY_BAND, "window_rounds": WINDOW_ROUNDS, "windows": WINDOWS},
            "ci": CI_TEXT,
        },
        machine=machine_info(),
        machine_load={"before": load_before, "after": load_after},
        warnings=warnings,
        work=work,
        peaks=list(peaks.values()),
        rows=timing.rows,
        skipped=timing.skipped,
        failed=timing.failed,
    )


def write_against(result: AgainstResult, out_dir: str | Path, log: Log = print) -> None:
    """against.json and against.md of `result` in `out_dir`."""
    out = Path(out_dir)
    atomic_write_json(out / AGAINST_JSON, result.to_dict())
    atomic_write_text(out / AGAINST_MD, render_against(result))
    log(f"  wrote {out / AGAINST_JSON}, {AGAINST_MD} ({result.wall_seconds:.1f} s)")


__all__ = [
    "AGAINST_JSON",
    "AGAINST_MD",
    "AgainstResult",
    "PairTiming",
    "assemble_against",
    "bench_against",
    "common_backends",
    "measure_against",
    "pair_row",
    "render_against",
    "write_against",
]
