"""Views of the load test's results: loadtest.json / loadtest.md / loadtest.png from a LoadTestResult,
batch_invariance.json / .md from a BatchInvarianceStudy, and the one-line progress lines the load test prints.
Nothing here measures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.render import markdown_table, pyplot, save_figure
from nfdeploy.serve.loadtest_result import (
    BATCH_INVARIANCE_JSON,
    LOADTEST_JSON,
    BatchInvarianceStudy,
    Correctness,
    FaultResults,
    LevelResult,
    LoadTestResult,
    OverloadResult,
    SpeedComparison,
    SpeedResults,
)

NAN = float("nan")


def bitwise(c: Correctness) -> float:
    return c.bitwise_share if c.bitwise_share is not None else NAN


def batch_counts(batch_stats: dict[int, int]) -> str:
    return " ".join(f"{b}×{c}" for b, c in batch_stats.items())


# ---------------------------------------------------------------------------------- one line
def level_line(row: LevelResult) -> str:
    return (
        f"concurrency {row.concurrency}: {row.throughput_ips:.1f} inf/s, p50 {row.p50_ms:.2f} ms, "
        f"p99 {row.p99_ms:.2f} ms, bitwise {bitwise(row.correctness):.1%}, errors {row.tally.error_count}, "
        f"batches {row.server.batch_stats}"
    )


def overload_line(o: OverloadResult) -> str:
    return (
        f"overload {o.clients} clients × {o.requests_each}: sent {o.tally.sent} = answered {o.answered} "
        f"+ refused {o.refused} + other {o.tally.error_count - o.refused}"
    )


def faults_summary(f: FaultResults) -> str:
    parts = []
    if f.nan_flood:
        g, nan = f.nan_flood.good, f.nan_flood.bad["non_finite"]
        parts.append(
            f"NaN flood: good {g.ok}/{g.sent} answered ({bitwise(f.nan_flood.good_correctness):.0%} bitwise), "
            f"NaN refused {nan.errors['rejected']}/{nan.sent}"
        )
    if f.bad_requests:
        g, bad = f.bad_requests.good, f.bad_requests.bad
        parts.append(
            f"bad kinds: good {g.ok}/{g.sent}; refused "
            + ", ".join(f"{k} {t.sent - t.ok}/{t.sent}" for k, t in bad.items())
        )
    if f.burst:
        b = f.burst
        parts.append(
            f"burst {b.clients} × {b.requests_each}: sent {b.tally.sent} = answered {b.answered} + refused "
            f"{b.refused} + other {b.tally.error_count - b.refused} in {b.wall_s:.2f} s "
            f"({bitwise(b.correctness):.0%} bitwise)"
        )
    if f.disconnect:
        parts.append(f"disconnect: ready after {f.disconnect.ready_after}, bitwise {f.disconnect.bitwise_after}")
    if f.restart:
        parts.append(f"restart: exit {f.restart.first_exit_code}, bitwise identical {f.restart.bitwise_identical}")
    return "; ".join(parts)


def speed_line(sp: SpeedResults) -> str:
    d = sp.c1.difference_ms
    busiest = (
        f"; concurrency {sp.busiest.concurrency} throughput ratio {sp.busiest.throughput_ratio:.3f}"
        if sp.busiest
        else ""
    )
    ci = f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"
    return f"speed: concurrency 1 served − in process {d['median']:.3f} ms {ci}{busiest}"


# ---------------------------------------------------------------------------------- Markdown
def levels_table(levels: list[LevelResult]) -> str:
    rows = []
    for r in levels:
        s, c = r.server, r.correctness
        rows.append(
            {
                "concurrency": r.concurrency,
                "inf/s": r.throughput_ips,
                **{f"p{q} ms": getattr(r, f"p{q}_ms") for q in (50, 90, 95, 99)},
                "queue µs": s.server_queue_us,
                "infer µs": s.server_compute_infer_us,
                "in+out µs": (s.server_compute_input_us or 0) + (s.server_compute_output_us or 0),
                "batches": batch_counts(s.batch_stats),
                "bitwise": f"{bitwise(c):.1%}",
                "max ULP": c.max_ulp,
                "top-1 vs fp64": c.top1_agreement_vs_fp64,
                "sent": r.tally.sent,
                "errors": r.tally.error_count,
                "client CPU": f"{r.client_cpu_share:.0%}",
                "stable": "yes" if r.stable else f"NO ({r.windows} windows)",
            }
        )
    return markdown_table(rows)


def speed_lines(sp: SpeedResults) -> list[str]:
    lines = ["## Speed (interleaved rounds, served vs the same backend in this process)", ""]
    for s in [sp.c1, *([sp.busiest] if sp.busiest else [])]:
        lines += speed_comparison_lines(s)
    return lines


def speed_comparison_lines(s: SpeedComparison) -> list[str]:
    d, split, ci = s.difference_ms, s.cost_split, s.throughput_ratio_ci95
    lines = [
        f"- concurrency {s.concurrency} vs in-process batch {s.inprocess_batch}: served "
        f"{s.served_ms_per_request:.3f} ms/request, in process {s.inprocess_ms_per_sample:.3f} ms/sample; "
        f"difference {d['median']:.3f} ms [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}], throughput ratio "
        f"{s.throughput_ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
        f"over {s.rounds} rounds{'' if s.settled else ' (not settled)'}"
    ]
    if split.server_success_us is not None:
        lines.append(
            f"  - per request (Triton's statistics): queue {split.server_queue_us:.0f} µs, compute input "
            f"{split.server_compute_input_us:.0f} µs, infer {split.server_compute_infer_us:.0f} µs, output "
            f"{split.server_compute_output_us:.0f} µs; client and transport "
            f"{split.client_and_transport_us:.0f} µs"
        )
    return lines


def overload_lines(o: OverloadResult) -> list[str]:
    lines = [
        "",
        f"## Overload: {o.clients} clients × {o.requests_each} requests at once",
        "",
        f"sent {o.tally.sent} = answered {o.answered} + refused {o.refused} + other errors "
        f"{o.tally.error_count - o.refused} ({'balanced' if o.tally.balanced() else 'NOT balanced'}); "
        f"answers bitwise {bitwise(o.correctness):.1%}; {o.wall_s:.2f} s; "
        f"server ready afterwards: {o.ready_after}",
    ]
    if o.tally.messages.get("refused"):
        lines.append(f"refusal: {o.tally.messages['refused']}")
    return lines


def verdict_lines(rep: LoadTestResult) -> list[str]:
    rows = [{"fault": k, "status": s.value, "expected": e} for k, s, e in rep.verdicts()]
    return ["", "## Verdicts", "", markdown_table(rows).rstrip("\n")] if rows else []


def loadtest_markdown(rep: LoadTestResult) -> str:
    s, pad = rep.served, rep.served.pad_to
    lines = [
        f"# Load test: {s.model} served by {rep.backend}",
        "",
        f"Triton {s.server_version}, max batch {s.max_batch}, queue delay {s.max_queue_delay_us} µs, queue "
        f"size {s.max_queue_size}, parity: {s.parameters.get('nfdeploy.check.parity')}, batch invariance: "
        f"{s.parameters.get('nfdeploy.batch_invariance')}; {rep.cpu_count} CPUs shared by client and server "
        "(client CPU = the load generator's share of all cores). Server times are per request, from Triton's "
        "statistics over the measured windows.",
        "",
        levels_table(rep.levels),
        "Bitwise = share of responses equal to the same sample run alone in this process "
        f"({f'padded to {pad} rows, as the server pads' if pad else 'at batch 1'}). "
        "Every request sent is an answer or a counted error.",
        "",
    ]
    by_batch = [
        {"concurrency": r.concurrency, "executed batch": bs, **c.to_dict()}
        for r in rep.levels
        for bs, c in r.correctness_by_batch.items()
    ]
    lines += ["## Correctness per executed batch size", "", markdown_table(by_batch)]
    if rep.speed:
        lines += speed_lines(rep.speed)
    if rep.overload:
        lines += overload_lines(rep.overload)
    if rep.faults.ran():
        lines += ["", "## Faults", "", faults_summary(rep.faults)]
    return "\n".join(lines + verdict_lines(rep)) + "\n"


def plot_loadtest(rep: LoadTestResult, path: Path) -> None:
    """Throughput against p99 latency, one point per concurrency level."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r.p99_ms for r in rep.levels], [r.throughput_ips for r in rep.levels], "o-")
    for r in rep.levels:
        ax.annotate(f"c={r.concurrency}", (r.p99_ms, r.throughput_ips), fontsize=8)
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title(f"{rep.served.model} · {rep.backend}", fontsize=9)
    save_figure(fig, path)


def write_loadtest_report(rep: LoadTestResult, out_dir: Path) -> None:
    """loadtest.json, loadtest.md and loadtest.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / LOADTEST_JSON, rep.to_dict())
    atomic_write_text(out_dir / "loadtest.md", loadtest_markdown(rep))
    plot_loadtest(rep, out_dir / "loadtest.png")


# --------------------------------------------------------------------- batch-invariant mode
def batch_invariance_markdown(rep: BatchInvarianceStudy) -> str:
    r, ms = rep.throughput.ratios["on/off"], rep.throughput.ms_per_request
    table: list[dict[str, Any]] = [
        {
            "mode": m,
            "padded to": v.pad_to or "-",
            "responses": v.responses,
            "errors": v.errors,
            "executed batches": batch_counts(v.executed_batches),
            "bitwise vs alone at batch 1": f"{v.bitwise_vs_batch1:.1%}",
            "bitwise vs alone as served": f"{v.bitwise_vs_alone_as_served:.1%}",
            "ms/request (interleaved)": f"{ms[m]:.3f}",
        }
        for m, v in rep.modes.items()
    ]
    lines = [
        f"# Batch-invariant serving: {rep.backend}, max batch {rep.max_batch}, concurrency {rep.concurrency}",
        "",
        markdown_table(table),
        f"Throughput cost of the mode (ms per request on ÷ off, interleaved rounds): {r['ratio']:.3f} "
        f'[{r["ci95"][0]:.3f}, {r["ci95"][1]:.3f}] over {r["rounds"]} rounds. "Alone as served" = the sample run alone '
        "in this process the way the server runs it (at batch 1 without the mode; padded to the max batch with it).",
        f"A sample alone at batch 1 equals the same sample padded to {rep.max_batch}: "
        f"{rep.modes['on'].batch1_equals_padded_alone:.0%} of samples.",
    ]
    return "\n".join(lines) + "\n"


def write_batch_invariance(rep: BatchInvarianceStudy, out_dir: Path) -> None:
    """batch_invariance.json and batch_invariance.md in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / BATCH_INVARIANCE_JSON, rep.to_dict())
    atomic_write_text(out_dir / "batch_invariance.md", batch_invariance_markdown(rep))


__all__ = [
    "batch_invariance_markdown",
    "faults_summary",
    "level_line",
    "levels_table",
    "loadtest_markdown",
    "overload_line",
    "plot_loadtest",
    "speed_line",
    "write_batch_invariance",
    "write_loadtest_report",
]
