"""Markdown views of bench results: render_markdown (a BenchResult: bench.md) and render_against (an
AgainstResult: against.md). They read the result objects and compute nothing that is not in them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nfdeploy.perf.fold_groups import RATIO_LABEL
from nfdeploy.perf.plots import LATENCY_PNG, THROUGHPUT_PNG
from nfdeploy.perf.result import AgainstResult, BenchResult, NotTimed, Row
from nfdeploy.perf.timing import DEVICE_TIMING, HOST_TIMING, MEMORY_KIND
from nfdeploy.render import markdown_table


def _fmt_ms(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _ci(v: Sequence[float] | None, fmt: str = "{:.4g}") -> str:
    return "" if not v else f"[{fmt.format(v[0])}, {fmt.format(v[1])}]"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def peak_share_cell(row: Row) -> str:
    """A row's share of its peak; one above 100% says so, never a bare figure."""
    return _pct(row.get("peak_share")) + (" ABOVE PEAK" if row.get("above_peak") else "")


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


def render_markdown(r: BenchResult) -> str:
    """bench.md of a bench result."""
    lines = [
        f"# Latency: {r.model}",
        "",
        f"Export `{r.export_dir}`, input {r.input_shape} (N(0,1) float32), created {r.created}. "
        f"Wall time of the report: {r.wall_seconds:.1f} s.",
        "",
    ]
    lines += _warnings_md(r.warnings)
    lines += _machine_md(r) + _method_md(r) + _verdict_md(r) + _results_md(r) + _comparison_md(r)
    lines += ["## Plots", "", f"![latency]({LATENCY_PNG})", "", f"![throughput]({THROUGHPUT_PNG})", ""]
    return "\n".join(lines)


def _warnings_md(warnings: list[str]) -> list[str]:
    return ["## Warnings", ""] + [f"- **{w}**" for w in warnings] + [""] if warnings else []


def _machine_md(r: BenchResult) -> list[str]:
    m = r.machine
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
    for when, ld in r.machine_load.items():
        busiest = ", ".join(f"{p['name']} ({p['pid']}) {p['cpu_share']:.2f}" for p in ld["busiest_other_processes"][:3])
        mrows.append(
            {
                "item": f"load {when}",
                "value": f"load average {ld['loadavg_1_5_15']}; other processes "
                f"{ld['other_processes_cores']:.2f} cores (busiest: {busiest or 'none'})"
                + (" — BUSY" if ld["busy"] else ""),
            }
        )
    mrows += [{"item": f"measured peak {p['device']} {p['precision']}", "value": _peak_md(p)} for p in r.peaks]
    w = r.work
    mrows.append(
        {
            "item": "work per image",
            "value": f"{w['macs_per_sample'] / 1e9:.4g} GMAC ({w['what']})"
            if w.get("macs_per_sample")
            else f"unknown ({w.get('reason')})",
        }
    )
    return lines + [markdown_table(mrows)]


def _peak_md(p: dict[str, Any]) -> str:
    if p["gflops"] is None:
        return p["what"]
    runs = p.get("measurements") or []
    best_of = f"; the best of {len(runs)} measurements: {', '.join(f'{g:.1f}' for g in runs)}" if len(runs) > 1 else ""
    return f"{p['gflops']:.1f} GFLOP/s ({p['what']}{best_of})"


def _method_md(r: BenchResult) -> list[str]:
    s = r.settings
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
        "- *GFLOP/s* = 2 × MACs per image × batch / median; *% peak* = share of the best peak of the row's kind "
        "measured in this run, before and after the timing (Machine table): CPU fp32 and fp16 rows against the "
        "float32 matmul, bf16 rows against a bf16 matmul where the CPU has native bf16 (else empty), int8 rows "
        "against an int8 matmul where one was measured (else empty), CUDA rows against a matmul of their "
        "precision. A share above 100% is marked ABOVE PEAK and named under Warnings.",
        f"- *memory MiB*: CPU {MEMORY_KIND['cpu']}; CUDA torch {MEMORY_KIND['cuda']}; "
        "ONNX Runtime and TensorRT on CUDA: "
        f"{MEMORY_KIND['cuda-outside-torch']} (empty).",
        "- *measured in*: rows of comparison members are the comparison group's measurement (interleaved), "
        "not a second one.",
        "- Idle threads: ONNX Runtime sessions run with intra-op spinning off (`session.intra_op.allow_spinning` "
        "0), so a session's threads do not spin-wait on the cores the next member of a round needs; torch's "
        f"OpenMP wait policy in this process: {r.machine.get('omp_wait_policy') or 'libgomp default (spins)'}.",
        "",
    ]
    return lines


def _verdict_md(r: BenchResult) -> list[str]:
    v = r.fastest_passing
    lines = ["## Fastest backend that passed parity", ""]
    if v.parity_report is None:
        return lines + [f"**{v.note}**", ""]
    lines.append(f"From `{v.parity_report}`: {v.rule}.")
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
        for x in v.rows
    ]
    return lines + ([markdown_table(rows)] if rows else ["(no backend timed)", ""])


def _results_md(r: BenchResult) -> list[str]:
    lines = ["## Backends × batch", ""]
    rows = []
    for x in r.results:
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
                "% peak": peak_share_cell(x),
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
    lines += _not_timed_md(r.skipped, r.failed, r.over_budget)
    return lines


def _not_timed_md(skipped: list[NotTimed], failed: list[NotTimed], over_budget: list[NotTimed]) -> list[str]:
    lines: list[str] = []
    if skipped:
        lines += ["### Skipped", "", markdown_table([{"backend": s.name, "reason": s.reason} for s in skipped])]
    if failed:
        rows = [
            {"backend": s.name, "batch": "" if s.batch is None else s.batch, "what": s.stage or "", "reason": s.reason}
            for s in failed
        ]
        lines += ["### Failed", "", markdown_table(rows)]
    if over_budget:
        rows = [{"backend": s.name, "batch": s.batch, "section": s.section} for s in over_budget]
        lines += ["### Not run (time budget)", "", markdown_table(rows)]
    return lines


def _comparison_md(r: BenchResult) -> list[str]:
    c = r.comparison
    lines = [
        "## Unfolded vs folded vs BN twin",
        "",
        f"Same backend type, interleaved rounds; {c.metric}. "
        f"Folded speedup = {c.ratios['speedup_folded_vs_unfolded']}; "
        f"NF/BN = {c.ratios['ratio_nf_folded_to_bn_folded']}. Twin: {c.twin}. "
        "Intervals: 95% bootstrap over rounds.",
        "",
    ]
    crows = []
    for x in sorted(c.rows, key=lambda x: (x["backend_type"], x["batch"])):
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
    if c.skipped:
        lines += [
            "Comparison entries skipped:",
            "",
            markdown_table([{"entry": s.name, "reason": s.reason} for s in c.skipped]),
        ]
    return lines


def render_against(r: AgainstResult) -> str:
    """against.md of an against result."""
    lines = [
        f"# {r.a['export_dir']} (A) against {r.b['export_dir']} (B)",
        "",
        f"Input {r.input_shape}, created {r.created}, wall time {r.wall_seconds:.1f} s. {r.ratio}; "
        f"95% interval: {r.settings['ci']}. Identical ONNX files: {r.identical_onnx}.",
        "",
    ]
    lines += _warnings_md(r.warnings)
    for when, ld in r.machine_load.items():
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
            "CV": _pct(x["cv"]),
            "noisy": "NOISY" if x["noisy"] else "",
            "rounds": x["rounds"],
            "A GFLOP/s": "" if x["a"].get("gflops") is None else f"{x['a']['gflops']:.1f}",
            "A % peak": peak_share_cell(x["a"]),
        }
        for x in r.rows
    ]
    lines += informative_table(rows, keep=("backend", "batch", "A/B", "95% CI", "noisy"))
    if r.skipped:
        lines += ["## Skipped", "", markdown_table([{"name": s.name, "reason": s.reason} for s in r.skipped])]
    if r.failed:
        failed = [
            {"backend": f.name, "batch": "" if f.batch is None else f.batch, "what": f.stage, "reason": f.reason}
            for f in r.failed
        ]
        lines += ["## Failed", "", markdown_table(failed)]
    return "\n".join(lines)


__all__ = ["informative_table", "peak_share_cell", "render_against", "render_markdown"]
