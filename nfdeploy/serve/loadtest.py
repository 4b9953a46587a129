"""`nfdeploy loadtest`: a load generator on tritonclient (gRPC) reporting what perf_analyzer reports,
plus what it does not: whether every response equals the same sample computed alone.

Each concurrency level runs `c` client threads, each sending one request at a time (closed loop),
and is measured in windows until the last three agree within 10% on throughput and p50 latency, or
a cap on windows passes (perf_analyzer's stability rule). Every request carries one of a fixed set
of seeded samples whose output alone (batch 1, or padded to the served model's fixed batch size when it
pads) the same backend produced in this process; every response is compared with it (bitwise, ULPs) and
with the float64 unfolded model (rel L2, top-1). Nothing is lost: requests sent = answered + errors by
kind. Then the faults: a NaN flood beside good clients (each good request must still get its own
answer), bad requests of every kind, a burst of many clients, an overload beyond the queue (refused at
once: sent = answered + refused), a disconnect and a restart. Speed comes from interleaved rounds
(served vs the same backend in this process), never from two numbers taken at different times.
Loopback only: the load test never leaves the machine.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.check.backends import load_export_source
from nfdeploy.serve.client import Target, infer_counted, model_facts, server_stats, stats_delta, threads_of
from nfdeploy.serve.expectation import Expectation, answers_correctness, expectation
from nfdeploy.serve.faults import burst, run_faults
from nfdeploy.serve.loadtest_report import (
    faults_summary,
    level_line,
    overload_line,
    speed_line,
    write_loadtest_report,
)
from nfdeploy.serve.loadtest_result import (
    BatchInvarianceStudy,
    FaultResults,
    InvarianceMode,
    LevelResult,
    LoadOptions,
    LoadTestError,
    LoadTestResult,
    ModelFacts,
    OverloadResult,
    Tally,
)
from nfdeploy.serve.repository import model_name_of
from nfdeploy.serve.server import ServeProcess
from nfdeploy.serve.speed import compare_served_throughput, run_speed
from nfdeploy.serve.tritonserver import LOOPBACK, ready_status


# ------------------------------------------------------------------------- one concurrency level
@dataclass
class Record:
    t_done: float
    latency_s: float
    sample: int
    out: np.ndarray
    executed_batch: int


@dataclass
class Window:
    t0: float
    t1: float
    throughput: float
    p50_ms: float


class ClosedLoop:
    """`concurrency` client threads, each sending one request at a time until stopped or until the level's
    request budget is spent; every answer recorded, every request counted."""

    def __init__(self, target: Target, exp: Expectation, concurrency: int, opts: LoadOptions):
        self.target, self.exp, self.concurrency, self.opts = target, exp, concurrency, opts
        self.stopping, self.lock = threading.Event(), threading.Lock()
        self.records: list[Record] = []
        self.tally = Tally()
        self.budget = opts.max_requests
        self.threads = threads_of(self.worker, concurrency)

    def take(self) -> bool:
        """One request of the budget, or False when it is spent."""
        with self.lock:
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True

    def worker(self, k: int) -> None:
        client, i = self.target.client(), k
        try:
            while not self.stopping.is_set() and self.take():
                s = i % len(self.exp.x)
                i += self.concurrency
                t0 = time.perf_counter()
                got = infer_counted(client, self.tally, self.lock, self.exp.x[s : s + 1], self.opts.timeout_s)
                if got is not None:
                    with self.lock:
                        self.records.append(Record(got.t_done, got.t_done - t0, s, got.out[0], got.executed_batch))
        finally:
            client.close()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(self.opts.timeout_s + 5)

    def latencies_s(self, t0: float, t1: float) -> list[float]:
        with self.lock:
            return [r.latency_s for r in self.records if t0 <= r.t_done < t1]


def is_stable(windows: list[Window], opts: LoadOptions) -> bool:
    """The last `stable_windows` windows each within ±stability of their mean, on throughput and on p50."""
    last = windows[-opts.stable_windows :]
    if len(last) != opts.stable_windows or not all(np.isfinite(w.p50_ms) for w in last):
        return False
    means = {m: np.mean([getattr(w, m) for w in last]) for m in ("throughput", "p50_ms")}
    return all(abs(getattr(w, m) - mean) <= opts.stability * mean for w in last for m, mean in means.items())


def measure_windows(
    loop: ClosedLoop, stats_conn: Any, model: str, opts: LoadOptions
) -> tuple[list[Window], list[dict[str, Any]], bool]:
    """Windows of the running loop until stable, the window cap or the request budget; Triton's statistics at
    the start and at each window's end; whether it settled."""
    windows: list[Window] = []
    snaps = [server_stats(stats_conn, model)]
    while len(windows) < opts.max_windows:
        w0 = time.perf_counter()
        time.sleep(opts.window_s)
        w1 = time.perf_counter()
        snaps.append(server_stats(stats_conn, model))
        lat = loop.latencies_s(w0, w1)
        windows.append(Window(w0, w1, len(lat) / (w1 - w0), float(np.median(lat) * 1e3) if lat else float("nan")))
        if is_stable(windows, opts):
            return windows, snaps, True
        if loop.budget <= 0:
            break
    return windows, snaps, False


def level_result(
    loop: ClosedLoop, windows: list[Window], snaps: list[dict[str, Any]], settled: bool, cpu_cores: float
) -> LevelResult:
    """The level over its last `stable_windows` windows; correctness over every answer, and per executed batch."""
    records, exp = loop.records, loop.exp
    last = windows[-loop.opts.stable_windows :]
    m0, m1 = last[0].t0, last[-1].t1
    measured = [r for r in records if m0 <= r.t_done < m1]
    lat_ms = np.array([r.latency_s for r in measured]) * 1e3
    by_batch = {
        bs: answers_correctness(exp, [(r.sample, r.out) for r in records if r.executed_batch == bs])
        for bs in sorted({r.executed_batch for r in records})
    }
    return LevelResult(
        concurrency=loop.concurrency,
        windows=len(windows),
        stable=settled,
        throughput_ips=len(measured) / (m1 - m0) if measured else 0.0,
        **{f"p{q}_ms": float(np.percentile(lat_ms, q)) if len(lat_ms) else None for q in (50, 90, 95, 99)},
        server=stats_delta(snaps[-len(last) - 1], snaps[-1]),
        client_cpu_cores=cpu_cores,
        client_cpu_share=cpu_cores / (os.cpu_count() or 1),
        tally=loop.tally,
        correctness=answers_correctness(exp, [(r.sample, r.out) for r in records]),
        correctness_by_batch=by_batch,
    )


def run_level(target: Target, exp: Expectation, concurrency: int, opts: LoadOptions) -> LevelResult:
    """One concurrency level, closed loop, measured in windows until stable or capped."""
    stats_conn = target.client()
    loop = ClosedLoop(target, exp, concurrency, opts)
    cpu0, t0 = time.process_time(), time.perf_counter()
    loop.start()
    try:
        windows, snaps, settled = measure_windows(loop, stats_conn.conn, target.model, opts)
    finally:
        loop.stop()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats_conn.close()
    return level_result(loop, windows, snaps, settled, cpu / wall)


# ------------------------------------------------------------------------------------ the test
def served_facts(url: str, export_dir: str | Path, opts: LoadOptions) -> tuple[ModelFacts, str]:
    """The served model's facts and the backend whose outputs alone are the expectation; it must be the model
    of `export_dir`."""
    facts = model_facts(url)
    backend = opts.backend or facts.parameters.get("nfdeploy.backend")
    if not backend:
        raise LoadTestError(f"the model at {url} does not say which nfdeploy backend it serves: pass --backend")
    if model_name_of(load_export_source(export_dir).manifest) != facts.model:
        raise LoadTestError(f"the server at {url} serves {facts.model}, not the model of {export_dir}")
    return facts, backend


def run_overload(target: Target, exp: Expectation, opts: LoadOptions, proc: ServeProcess | None) -> OverloadResult:
    """A burst of opts.overload clients beyond the queue, then the server's readiness (when started here)."""
    b = burst(target, exp, clients=opts.overload, requests_each=opts.overload_requests, timeout_s=opts.timeout_s)
    ready = ready_status(proc.ready_url) == 200 if proc else None
    return OverloadResult(b.clients, b.requests_each, b.tally, b.wall_s, b.correctness, ready_after=ready)


def measure_loadtest(
    export_dir: str | Path,
    opts: LoadOptions,
    *,
    url: str | None = None,
    serve_args: Sequence[str] = (),
    server_log: Path | None = None,
    log: Callable[[str], None] = print,
) -> LoadTestResult:
    """The load test's measurements (see the module docstring), against `url` or a server started here."""
    t_start, proc = time.perf_counter(), None
    if url is None:
        proc = ServeProcess(export_dir, serve_args, log_file=server_log)
        log(f"starting nfdeploy serve {export_dir} {' '.join(serve_args)} (log {proc.log_file})")
        url = proc.start().url
    elif url.split(":")[0] not in (LOOPBACK, "localhost"):
        raise LoadTestError(f"--url {url}: the load test runs on loopback only (127.0.0.1 or localhost)")
    overload, faults, speed = None, FaultResults(), None
    try:
        facts, backend = served_facts(url, export_dir, opts)
        pad = f", padded to {facts.pad_to} rows as served" if facts.pad_to else ""
        log(f"outputs alone of {backend} in this process ({opts.samples} samples{pad}) and the float64 reference")
        exp = expectation(export_dir, backend, opts.samples, opts.seed, facts.pad_to, facts.threads)
        target = Target.of(url, facts)
        levels = []
        for c in opts.concurrency:
            levels.append(run_level(target, exp, int(c), opts))
            log(level_line(levels[-1]))
        if opts.overload:
            overload = run_overload(target, exp, opts, proc)
            log(overload_line(overload))
        if opts.faults:
            faults = run_faults(target, exp, facts, opts, proc)
            log(f"faults: {faults_summary(faults)}")
        if proc is not None:  # a restart moved the server to new ports
            url = proc.url
            target = Target.of(url, facts)
        if opts.speed:
            speed = run_speed(target, exp, export_dir, backend, levels, opts, facts.threads)
            log(speed_line(speed))
    finally:
        exit_code = proc.stop() if proc is not None else None
    result = LoadTestResult(
        export_dir=str(export_dir),
        url=url,
        served=facts,
        backend=backend,
        options=opts,
        levels=levels,
        overload=overload,
        faults=faults,
        speed=speed,
        server_exit_code=exit_code,
        cpu_count=os.cpu_count(),
        wall_seconds=time.perf_counter() - t_start,
    )
    if result.verdicts():
        log("verdicts: " + ", ".join(f"{k} {s.value}" for k, s, _ in result.verdicts()))
    return result


def loadtest(
    export_dir: str | Path,
    out_dir: str | Path,
    opts: LoadOptions | None = None,
    *,
    url: str | None = None,
    serve_args: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> LoadTestResult:
    """Load-test a served export: `url` (a running server, loopback) or, without it, `nfdeploy serve EXPORT
    SERVE_ARGS` started here (its log beside `out_dir`; restarted once for the restart check); then write
    loadtest.json/.md/.png to `out_dir`."""
    out_dir, server_log = Path(out_dir), None
    if url is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        server_log = out_dir.parent / f"{out_dir.name}-server.log"
    result = measure_loadtest(
        export_dir, opts or LoadOptions(), url=url, serve_args=serve_args, server_log=server_log, log=log
    )
    write_loadtest_report(result, out_dir)
    return result


# -------------------------------------------------------------------------- batch-invariant mode
def invariance_mode(
    export_dir: str | Path, backend: str, url: str, opts: LoadOptions, max_batch: int, threads: int | None
) -> tuple[InvarianceMode, Target, Expectation]:
    """The served model at `url` under a load at the study's concurrency, against the sample alone as served
    (and at batch 1); whether a sample alone at batch 1 equals it padded to the max batch."""
    facts, samples = model_facts(url), opts.samples
    exp = expectation(export_dir, backend, samples, 0, facts.pad_to, threads)
    target = Target.of(url, facts)
    level = run_level(target, exp, int(opts.concurrency[0]), opts)
    padded = exp if facts.pad_to else expectation(export_dir, backend, samples, 0, max_batch, threads)
    idx = np.array([i % samples for i in range(samples)])
    same = (exp.batch1[idx].view(np.uint32) == padded.alone[idx].view(np.uint32)).all(axis=1)
    mode = InvarianceMode(
        pad_to=facts.pad_to,
        batch_invariance=facts.parameters.get("nfdeploy.batch_invariance"),
        responses=level.tally.ok,
        errors=level.tally.error_count,
        executed_batches=level.server.batch_stats,
        throughput_ips_alone=level.throughput_ips,
        bitwise_vs_batch1=level.correctness.bitwise_share_vs_batch1,
        bitwise_vs_alone_as_served=level.correctness.bitwise_share,
        max_ulp_vs_alone_as_served=level.correctness.max_ulp,
        batch1_equals_padded_alone=float(same.mean()),
        correctness_by_batch=level.correctness_by_batch,
    )
    return mode, target, exp


def batch_invariance_study(
    export_dir: str | Path,
    backend: str,
    *,
    max_batch: int = 8,
    concurrency: int = 8,
    samples: int = 32,
    threads: int | None = None,
    window_s: float = 1.0,
    time_s: float = 10.0,
    log: Callable[[str], None] = print,
) -> BatchInvarianceStudy:
    """`backend` served twice, without and with --batch-invariant, both up at once: the responses of a load at
    `concurrency` against the sample alone (at batch 1, and padded to max_batch as the mode runs it), then the
    mode's throughput cost in interleaved rounds. Write it with loadtest_report.write_batch_invariance."""
    common = ["--backend", backend, "--max-batch", str(max_batch), *(["--threads", str(threads)] if threads else [])]
    procs = {
        "off": ServeProcess(export_dir, [*common, "--no-batch-invariant"]),
        "on": ServeProcess(export_dir, [*common, "--batch-invariant"]),
    }
    opts = LoadOptions(concurrency=(concurrency,), window_s=window_s, max_windows=6, samples=samples)
    modes, targets = {}, {}
    try:
        for name, proc in procs.items():
            modes[name], targets[name], exp = invariance_mode(
                export_dir, backend, proc.start().url, opts, max_batch, threads
            )
            m = modes[name]
            log(
                f"{backend} batch-invariant {name}: bitwise vs alone as served {m.bitwise_vs_alone_as_served:.1%}, "
                f"vs batch 1 {m.bitwise_vs_batch1:.1%}, batches {m.executed_batches}"
            )
        cost = compare_served_throughput(
            {"on": targets["on"], "off": targets["off"]}, exp.x, concurrency=concurrency, time_s=time_s
        )
    finally:
        for proc in procs.values():
            proc.stop()
    r = cost.ratios["on/off"]
    log(f"throughput cost: on/off ms per request {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    return BatchInvarianceStudy(backend, max_batch, concurrency, samples, modes, cost)


__all__ = [
    "ClosedLoop",
    "LoadOptions",
    "LoadTestError",
    "Record",
    "Window",
    "batch_invariance_study",
    "invariance_mode",
    "is_stable",
    "level_result",
    "loadtest",
    "measure_loadtest",
    "measure_windows",
    "run_level",
    "run_overload",
    "served_facts",
]
