"""Two exports side by side: `nfdeploy bench EXPORT --against OTHER`.

Every backend both exports can run (same backend name: same runtime, device, precision, variant)
is timed with the two exports' backends active together, in interleaved rounds (rounds.py), at
each batch size; the figure is the ratio EXPORT / OTHER (median of per-round ratios, 95% bootstrap
interval over rounds). It serves comparing two export choices (opset, precision, a plain export vs
nfdeploy's fold) and checks the method itself: an export against a copy of itself must give 1.00
with an interval that contains 1.00.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import Manifest, atomic_write_json, atomic_write_text
from nfdeploy.check.backends import REFERENCE, default_report_dir, export_backends, load_export_source
from nfdeploy.machine import machine_info, machine_load
from nfdeploy.perf.peak import peak_for
from nfdeploy.perf.report import BenchError, annotate_work, informative_table, torch_threads, work_model
from nfdeploy.perf.rounds import (
    BOOTSTRAP_SAMPLES,
    CI_LEVEL,
    STABILITY_BAND,
    WINDOW_ROUNDS,
    WINDOWS,
    RoundPlan,
    describe_ratio,
)
from nfdeploy.perf.timing import activate_measured, failure_row, time_group
from nfdeploy.render import markdown_table
from nfdeploy.runtime.base import name_matches

AGAINST_JSON, AGAINST_MD = "against.json", "against.md"


def _onnx_shas(manifest: Manifest) -> dict[str, str | None]:
    return {prec: e.sha256 for prec, e in manifest.onnx.items()}


def _common_backends(
    a: Any, b: Any, only: Sequence[str] | None, compile: bool, tensorrt: bool, threads: int | None
) -> tuple[dict[str, Any], dict[str, Any], list[str], list[dict[str, Any]]]:
    """The backends of A and B by name, the names both can run here, and the skipped ones with reasons."""

    def pick(src: Any) -> dict[str, Any]:
        bs = export_backends(src, compile=compile, tensorrt=tensorrt, threads=threads)
        return {x.name: x for x in bs if (any(name_matches(x.name, o) for o in only) if only else x.name != REFERENCE)}

    ba, bb = pick(a), pick(b)
    skipped: list[dict[str, Any]] = []
    pairs = []
    for name in ba:
        if name not in bb:
            skipped.append({"name": name, "reason": "only the first export has it"})
            continue
        reason = ba[name].unavailable_reason() or bb[name].unavailable_reason()
        if reason:
            skipped.append({"name": name, "reason": reason})
        else:
            pairs.append(name)
    skipped += [{"name": n, "reason": "only the second export has it"} for n in bb if n not in ba]
    if not pairs:
        raise BenchError(
            "the two exports have no backend in common that can run here"
            + (f" (--only {' '.join(only)})" if only else "")
        )
    return ba, bb, pairs, skipped


def _time_pair(
    name: str,
    members: dict[str, Any],
    batches: Sequence[int],
    plan: RoundPlan,
    input_shape: Any,
    work: dict[str, Any],
    peaks: dict[tuple[str, str], dict[str, Any]],
    log: Callable[[str], None],
    rows: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    failed: list[dict[str, Any]],
) -> None:
    """A and B of one backend name, active together, at each batch size: one row per batch, or a failure."""
    try:
        try:
            act = {k: activate_measured(x) for k, x in members.items()}
        except Exception as e:  # noqa: BLE001 - unavailable: skipped; anything else: failed to load
            kind, row = failure_row(name, e, stage="load")
            (skipped if kind == "skipped" else failed).append(row)
            log(f"  {'skipped' if kind == 'skipped' else 'FAILED'} {name}: {row.get('stage', '')} {row['reason']}")
            return
        p = RoundPlan(**{**plan.__dict__, "min_warmup_calls": 2 if members["A"].device == "cuda" else 1})
        for n in batches:
            try:
                res, ratios, info = time_group(
                    members, n, input_shape, p, ratios={"A/B": ("A", "B")}, activation_memory_mb=act
                )
            except Exception as e:  # noqa: BLE001 - a crash while timing is a failure with its message
                failed.append(failure_row(name, e, stage="run", batch=n)[1])
                log(f"  FAILED {name} batch {n}: {failed[-1]['reason']}")
                continue
            for r in res.values():
                annotate_work(r, work, peaks)
            rr = ratios["A/B"]
            rows.append(
                {
                    "backend": name,
                    "batch": n,
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
            )
            log(
                f"  {name:<32} batch {n:>3}: A {res['A']['median_ms']:.3f} ms, B {res['B']['median_ms']:.3f} ms, "
                f"A/B {describe_ratio(rr)}"
            )
    finally:
        for x in members.values():
            x.deactivate()


def bench_against(
    export_a: str | Path,
    export_b: str | Path,
    out_dir: str | Path | None = None,
    batches: Sequence[int] = (1, 8),
    only: Sequence[str] | None = None,
    min_time: float = 2.0,
    warmup: float = 1.0,
    log: Callable[[str], None] = print,
    *,
    min_iters: int = 10,
    max_time: float | None = None,
    compile: bool = False,
    tensorrt: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time export A against export B on every backend both can run; write against.json/.md to
    `out_dir` (default: A's report dir) and return the report. `only`: backend-name patterns (name_matches)
    (the float64 reference only when named). `max_time`: cap per (backend, batch) cell and member,
    after which an unsettled ratio is reported as noisy (default 5 x min_time). `threads`: CPU threads of
    torch (for the call) and of ONNX Runtime sessions."""
    with torch_threads(threads):
        return _bench_against(
            export_a,
            export_b,
            out_dir,
            batches,
            only,
            min_time,
            warmup,
            log,
            min_iters=min_iters,
            max_time=max_time,
            compile=compile,
            tensorrt=tensorrt,
            threads=threads,
        )


def _bench_against(
    export_a: str | Path,
    export_b: str | Path,
    out_dir: str | Path | None,
    batches: Sequence[int],
    only: Sequence[str] | None,
    min_time: float,
    warmup: float,
    log: Callable[[str], None],
    *,
    min_iters: int,
    max_time: float | None,
    compile: bool,
    tensorrt: bool,
    threads: int | None,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    batches = sorted({int(b) for b in batches})
    if not batches or min(batches) < 1:
        raise BenchError(f"batch sizes must be >= 1, got {batches}")
    a, b = load_export_source(export_a), load_export_source(export_b)
    if a.input_shape != b.input_shape:
        raise BenchError(f"the exports take different inputs: {list(a.input_shape)} vs {list(b.input_shape)}")
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(a.export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"bench {a.export_dir} against {b.export_dir}, input {list(a.input_shape)}, batches {batches}")
    load_before = machine_load()
    if load_before["busy"]:
        log(f"  WARNING {load_before['warning']}")
    peaks: dict[tuple[str, str], dict[str, Any]] = {}
    peak_for("cpu", "fp32", peaks)
    ba, bb, pairs, skipped = _common_backends(a, b, only, compile, tensorrt, threads)
    plan = RoundPlan(
        warmup_s=warmup, min_time_s=min_time, min_iters=min_iters, max_time_s=None if max_time is None else 2 * max_time
    )
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    work = work_model(a)
    for name in pairs:
        _time_pair(
            name, {"A": ba[name], "B": bb[name]}, batches, plan, a.input_shape, work, peaks, log, rows, skipped, failed
        )
    report = _against_report(a, b, out_dir, batches, only, plan, load_before, rows, skipped, failed, work, peaks, log)
    report["wall_seconds"] = time.perf_counter() - t_start
    atomic_write_json(out_dir / AGAINST_JSON, report)
    atomic_write_text(out_dir / AGAINST_MD, render_against(report))
    log(f"  wrote {out_dir / AGAINST_JSON}, {AGAINST_MD} ({report['wall_seconds']:.1f} s)")
    return report


def _against_report(
    a: Any,
    b: Any,
    out_dir: Path,
    batches: list[int],
    only: Sequence[str] | None,
    plan: RoundPlan,
    load_before: dict[str, Any],
    rows: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    work: dict[str, Any],
    peaks: dict[tuple[str, str], dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    load_after = machine_load()
    warnings = [
        w
        for w in (
            load_before.get("warning") and f"before: {load_before['warning']}",
            load_after.get("warning") and f"after: {load_after['warning']}",
        )
        if w
    ]
    noisy = [f"{r['backend']} batch {r['batch']}" for r in rows if r["noisy"]]
    if noisy:
        warnings.append(
            f"{len(noisy)} ratio(s) did not settle within ±{100 * STABILITY_BAND:.0f}% (noisy): " + ", ".join(noisy)
        )
    for w in warnings[1 if load_before["busy"] else 0 :]:
        log(f"  WARNING {w}")
    sha_a, sha_b = _onnx_shas(a.manifest), _onnx_shas(b.manifest)
    return {
        "format": "nfdeploy-bench-against-v1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "a": {"export_dir": str(a.export_dir), "model": a.manifest.model, "onnx_sha256": sha_a},
        "b": {"export_dir": str(b.export_dir), "model": b.manifest.model, "onnx_sha256": sha_b},
        "identical_onnx": {p: sha_a[p] == sha_b.get(p) for p in sha_a if p in sha_b},
        "input_shape": list(a.input_shape),
        "batches": batches,
        "out_dir": str(out_dir),
        "settings": {
            "warmup_s": plan.warmup_s,
            "min_time_s": plan.min_time_s,
            "min_iters": plan.min_iters,
            "max_time_s": plan.max_time_s,
            "only": list(only) if only else None,
            "stability": {"band": STABILITY_BAND, "window_rounds": WINDOW_ROUNDS, "windows": WINDOWS},
            "ci": f"{int(CI_LEVEL * 100)}% percentile bootstrap over rounds ({BOOTSTRAP_SAMPLES} resamples)",
        },
        "ratio": "A / B: median of per-round ratios of the primary timing, A and B active together, interleaved rounds",
        "machine": machine_info(),
        "machine_load": {"before": load_before, "after": load_after},
        "warnings": warnings,
        "work": work,
        "peaks": list(peaks.values()),
        "rows": rows,
        "skipped": skipped,
        "failed": failed,
    }


def render_against(r: dict[str, Any]) -> str:
    lines = [
        f"# {r['a']['export_dir']} (A) against {r['b']['export_dir']} (B)",
        "",
        f"Input {r['input_shape']}, created {r['created']}, wall time {r['wall_seconds']:.1f} s. {r['ratio']}; "
        f"95% interval: {r['settings']['ci']}. Identical ONNX files: {r['identical_onnx']}.",
        "",
    ]
    if r["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in r["warnings"]] + [""]
    for when, ld in r["machine_load"].items():
        lines.append(
            f"- load {when}: load average {ld['loadavg_1_5_15']}, other processes "
            f"{ld['other_processes_cores']:.2f} cores" + (" (BUSY)" if ld["busy"] else "")
        )
    lines += ["", "## A / B", ""]
    rows = [
        {
            "backend": x["backend"],
            "batch": x["batch"],
            "A ms": f"{x['a']['median_ms']:.4g}",
            "B ms": f"{x['b']['median_ms']:.4g}",
            "A/B": f"{x['ratio']:.3f}",
            "95% CI": f"[{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]",
            "contains 1": "yes" if x["contains_1"] else "no",
            "CV": "" if x["cv"] is None else f"{100 * x['cv']:.1f}%",
            "noisy": "NOISY" if x["noisy"] else "",
            "rounds": x["rounds"],
            "A GFLOP/s": "" if x["a"].get("gflops") is None else f"{x['a']['gflops']:.1f}",
            "A % peak": "" if x["a"].get("peak_share") is None else f"{100 * x['a']['peak_share']:.1f}%",
        }
        for x in r["rows"]
    ]
    lines += informative_table(rows, keep=("backend", "batch", "A/B", "95% CI", "noisy"))
    if r["skipped"]:
        lines += ["## Skipped", "", markdown_table(r["skipped"])]
    if r["failed"]:
        lines += [
            "## Failed",
            "",
            markdown_table(
                [
                    {"backend": f["name"], "batch": f.get("batch", ""), "what": f["stage"], "reason": f["reason"]}
                    for f in r["failed"]
                ]
            ),
        ]
    return "\n".join(lines)


__all__ = ["AGAINST_JSON", "AGAINST_MD", "bench_against", "render_against"]
