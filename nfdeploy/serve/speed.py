"""The served model's speed, always against something in the same interleaved rounds (nfdeploy.perf.rounds):
against the same backend in this process, or against another served model. Never two numbers taken at
different times."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nfdeploy.check.backends import export_backend
from nfdeploy.errors import one_line
from nfdeploy.perf.rounds import RoundPlan, interleaved_rounds, summarize
from nfdeploy.serve.client import Client, Target, server_stats, stats_delta
from nfdeploy.serve.expectation import Expectation
from nfdeploy.serve.loadtest_result import (
    CostSplit,
    LevelResult,
    LoadOptions,
    LoadTestError,
    ServedThroughput,
    ServerTimes,
    SpeedComparison,
    SpeedResults,
)


class ServedTimer:
    """A Timer (nfdeploy.perf.rounds) for a served model under a closed loop of `concurrency` long-lived
    clients: one call lets them run until `per_call` more requests are answered and returns the wall ms per
    answered request (host time); between calls the clients wait (their last requests drain first), so the
    other members of an interleaved round run alone."""

    def __init__(
        self, target: Target, x: np.ndarray, concurrency: int = 1, per_call: int | None = None, timeout_s: float = 60.0
    ):
        self.x, self.concurrency, self.timeout_s = x, concurrency, timeout_s
        self.per_call = per_call or max(1, 4 * concurrency)
        self.clients = [target.client() for _ in range(concurrency)]
        self.go, self.closed = threading.Event(), False
        self.cond = threading.Condition()
        self.done = self.in_flight = 0
        self.errors: list[str] = []
        self.latencies_ms: list[float] = []  # every timed request's own latency
        self.sent = 0
        # One client is timed in the caller's thread: a hand-off to a worker would add its own latency.
        self.threads = (
            [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in range(concurrency)]
            if concurrency > 1
            else []
        )
        for t in self.threads:
            t.start()

    def _timed_infer(self, client: Client, s: int) -> None:
        t = time.perf_counter()
        client.infer(self.x[s : s + 1], self.timeout_s)
        self.latencies_ms.append((time.perf_counter() - t) * 1e3)

    def _loop(self, k: int) -> None:
        i = k
        while True:
            self.go.wait()
            if self.closed:
                return
            with self.cond:
                if not self.go.is_set():
                    continue
                self.in_flight += 1
            try:
                self._timed_infer(self.clients[k], i % len(self.x))
            except Exception as e:  # noqa: BLE001 - a failed request makes the timing meaningless: raised by the call
                self.errors.append(one_line(e, 300))
            i += self.concurrency
            with self.cond:
                self.in_flight -= 1
                self.done += 1
                self.cond.notify_all()

    def _call_in_caller(self) -> float:
        t = time.perf_counter()
        for _ in range(self.per_call):
            s = self.sent % len(self.x)
            self.sent += 1
            self._timed_infer(self.clients[0], s)
        return (time.perf_counter() - t) * 1e3 / self.per_call

    def _call_threads(self) -> float:
        with self.cond:
            start = self.done
        t = time.perf_counter()
        self.go.set()
        with self.cond:
            self.cond.wait_for(
                lambda: self.done - start >= self.per_call or self.errors, self.timeout_s * self.per_call
            )
            ms = (time.perf_counter() - t) * 1e3 / max(self.done - start, 1)
            self.go.clear()
            self.cond.wait_for(lambda: self.in_flight == 0, self.timeout_s + 5)
        if self.errors:
            raise LoadTestError(f"a request failed while timing: {self.errors[0]}")
        return ms

    def __call__(self) -> tuple[float, None]:
        return (self._call_threads() if self.threads else self._call_in_caller()), None

    def close(self) -> None:
        self.closed = True
        self.go.set()
        for t in self.threads:
            t.join(self.timeout_s + 5)
        for c in self.clients:
            c.close()


def inprocess_timer(backend: Any, x: np.ndarray, batch: int) -> Callable[[], tuple[float, None]]:
    """A Timer of backend.run on `batch` rows in this process: wall ms per sample."""
    xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))

    def call() -> tuple[float, None]:
        t = time.perf_counter()
        backend.run(xb)
        return (time.perf_counter() - t) * 1e3 / batch, None

    return call


def formed_batch(served: ServedTimer, stats_conn: Client, model: str) -> int:
    """The mean batch Triton's batcher forms under the timer's load, from a first look."""
    s0 = server_stats(stats_conn.conn, model)
    for _ in range(max(3, 40 // served.concurrency)):
        served()
    return max(1, int(round(stats_delta(s0, server_stats(stats_conn.conn, model)).mean_executed_batch or 1)))


def speed_comparison(
    concurrency: int, batch: int, timed: dict[str, Any], split: ServerTimes, latencies_ms: list[float]
) -> SpeedComparison:
    """The comparison from the interleaved rounds of "served" and "in_process"."""
    sv, ip = timed["members"]["served"], timed["members"]["in_process"]
    diffs = [a - b for a, b in zip(sv["round_medians_ms"], ip["round_medians_ms"])]
    # A request's own mean latency (warm-up included: Triton's statistics count those requests too) less the
    # server's time for it: what the client library, gRPC and loopback cost.
    latency_us = float(np.mean(latencies_ms)) * 1e3 if latencies_ms else None
    transport = latency_us - split.server_success_us if latency_us is not None and split.server_success_us else None
    ratio = timed["ratios"]["served/in_process"]
    return SpeedComparison(
        concurrency=concurrency,
        inprocess_batch=batch,
        served_ms_per_request=sv["median_ms"],
        served_ci95=sv["median_ci95_ms"],
        inprocess_ms_per_sample=ip["median_ms"],
        inprocess_ci95=ip["median_ci95_ms"],
        difference_ms=summarize(diffs),
        served_over_inprocess=ratio,
        throughput_ratio=1 / ratio["ratio"],
        throughput_ratio_ci95=[1 / ratio["ci95"][1], 1 / ratio["ci95"][0]],
        rounds=timed["rounds"],
        settled=timed["settled"],
        stopped_by=timed["stopped_by"],
        cost_split=CostSplit(**vars(split), client_mean_latency_us=latency_us, client_and_transport_us=transport),
    )


def speed_side_by_side(
    target: Target,
    exp: Expectation,
    export_dir: str | Path,
    backend_name: str,
    *,
    concurrency: int = 1,
    batch: int | None = None,
    time_s: float = 10.0,
    threads: int | None = None,
) -> SpeedComparison:
    """Served (at `concurrency`) against the same backend in this process (at `batch`, default: the mean batch
    the batcher formed in a first look at that concurrency), in interleaved rounds: the per-request times,
    their difference and ratio per round with 95% intervals, and the server's per-request cost split."""
    stats_conn = target.client()
    served = ServedTimer(target, exp.x, concurrency, per_call=1 if concurrency == 1 else None)
    try:
        batch = batch if batch is not None else formed_batch(served, stats_conn, target.model)
        backend = export_backend(export_dir, backend_name, threads=threads)
        with backend:
            plan = RoundPlan(warmup_s=1.0, min_time_s=time_s, min_iters=10, max_time_s=3 * time_s * 2)
            s0 = server_stats(stats_conn.conn, target.model)
            served.latencies_ms.clear()
            timed = interleaved_rounds(
                {"served": served, "in_process": inprocess_timer(backend, exp.x, batch)},
                plan,
                ratios=[("served", "in_process")],
            )
            split = stats_delta(s0, server_stats(stats_conn.conn, target.model))
    finally:
        served.close()
        stats_conn.close()
    return speed_comparison(concurrency, batch, timed, split, served.latencies_ms)


def compare_served_throughput(
    targets: dict[str, Target], x: np.ndarray, *, concurrency: int, time_s: float = 10.0
) -> ServedThroughput:
    """Two or more served models at one concurrency, in interleaved rounds: ms per request each, and the ratio of
    the first to each other one with its interval."""
    timers = {k: ServedTimer(t, x, concurrency) for k, t in targets.items()}
    try:
        names = list(timers)
        timed = interleaved_rounds(
            timers,
            RoundPlan(warmup_s=1.0, min_time_s=time_s, max_time_s=3 * time_s * len(names)),
            ratios=[(names[0], n) for n in names[1:]],
        )
    finally:
        for t in timers.values():
            t.close()
    return ServedThroughput(
        concurrency=concurrency,
        ms_per_request={k: m["median_ms"] for k, m in timed["members"].items()},
        ratios=timed["ratios"],
        rounds=timed["rounds"],
        settled=timed["settled"],
    )


def run_speed(
    target: Target,
    exp: Expectation,
    export_dir: str | Path,
    backend: str,
    levels: list[LevelResult],
    opts: LoadOptions,
    threads: int | None,
) -> SpeedResults:
    """Concurrency 1 and the busiest level of the sweep, each served vs in process, interleaved."""
    side_by_side = dict(time_s=opts.speed_time_s, threads=threads)
    result = SpeedResults(speed_side_by_side(target, exp, export_dir, backend, concurrency=1, batch=1, **side_by_side))
    busiest = max(levels, key=lambda r: r.throughput_ips) if levels else None
    if busiest and busiest.concurrency > 1:
        formed = max(1, int(round(busiest.server.mean_executed_batch or 1)))
        result.busiest = speed_side_by_side(
            target, exp, export_dir, backend, concurrency=busiest.concurrency, batch=formed, **side_by_side
        )
    return result


__all__ = [
    "ServedTimer",
    "compare_served_throughput",
    "speed_comparison",
    "formed_batch",
    "inprocess_timer",
    "run_speed",
    "speed_side_by_side",
]
