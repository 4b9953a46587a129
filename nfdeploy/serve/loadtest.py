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

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.check.backends import export_backend, load_export_source
from nfdeploy.errors import UserError, one_line, require
from nfdeploy.metrics import ulp_error
from nfdeploy.perf.rounds import RoundPlan, interleaved_rounds, summarize
from nfdeploy.render import markdown_table, pyplot, save_figure
from nfdeploy.serve.python_model import BATCH_OUTPUT
from nfdeploy.serve.repository import MODEL_VERSION, model_name_of
from nfdeploy.serve.tritonserver import LOOPBACK, ServeError, free_port, ready_status, terminate_with_parent

ERROR_KINDS = ("timeout", "rejected", "refused", "connection", "other")
NON_FINITE = "non-finite"


class LoadTestError(UserError, RuntimeError):
    """A load test that cannot run as asked; one line."""


@dataclass
class LoadOptions:
    concurrency: Sequence[int] = (1, 2, 4, 8, 16)
    window_s: float = 1.0
    stable_windows: int = 3
    stability: float = 0.10  # the last `stable_windows` windows within ±10% of their mean
    max_windows: int = 10  # per level: the cap when the windows never settle
    max_requests: int = 200_000  # per level, whatever the windows say
    timeout_s: float = 10.0  # client timeout per request
    samples: int = 32  # distinct seeded inputs, each with its output alone
    seed: int = 0
    overload: int = 0  # clients of an overload burst beyond the server's queue (0: none)
    overload_requests: int = 8  # requests each overload client sends
    faults: bool = True  # NaN flood, bad requests, a burst, a disconnect (and a restart with a server started here)
    burst_clients: int = 64  # the burst fault: this many clients at once (0: none) ...
    burst_requests: int = 16  # ... each sending this many requests back to back
    speed: bool = True  # interleaved served vs in-process speed at concurrency 1 and at the busiest level
    speed_time_s: float = 10.0  # per member of each interleaved speed comparison
    backend: str | None = None  # the backend whose outputs alone are the expectation (default: the served one)


@dataclass
class Tally:
    """What one level (or fault phase) sent and got back; sent = ok + sum(errors)."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ERROR_KINDS})
    messages: dict[str, str] = field(default_factory=dict)  # one example message per kind

    def add_error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        self.messages.setdefault(kind, one_line(message, 4000, with_type=False))

    def balanced(self) -> bool:
        return self.sent == self.ok + sum(self.errors.values())


def error_kind(e: BaseException) -> str:
    """timeout (the client gave up), refused (the server's queue was full or its queue timeout passed: an
    overload answer), rejected (the server refused this request: bad input), connection."""
    status = str(getattr(e, "status", lambda: "")() or "")
    text = str(e)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in text:
        return "timeout"
    if "maximum queue size" in text or "timeout expired" in text.lower():
        return "refused"
    if "UNAVAILABLE" in status or "CANCELLED" in status or "failed to connect" in text.lower():
        return "connection"
    if status:
        return "rejected"
    return "other"


# ------------------------------------------------------------------------------ the expectation
@dataclass
class Expectation:
    """Seeded samples, their outputs alone from the served backend run in this process (batch 1, or padded to
    `pad_to` rows as the server pads), their batch-1 outputs, and the float64 unfolded model's outputs."""

    x: np.ndarray
    alone: np.ndarray  # float32: what the server must answer for each sample, whatever its batch-mates
    batch1: np.ndarray  # float32: each sample at batch 1, unpadded
    ref64: np.ndarray
    backend: str
    pad_to: int


def expectation(
    export_dir: str | Path, backend_name: str, samples: int, seed: int, pad_to: int = 0, threads: int | None = None
) -> Expectation:
    source = load_export_source(export_dir)
    backend = export_backend(export_dir, backend_name, threads=threads)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *source.input_shape, generator=g).numpy()
    with backend:
        batch1 = np.concatenate([backend.run(x[i : i + 1]) for i in range(samples)])
        if pad_to > 1:
            pad = np.zeros((pad_to - 1, *x.shape[1:]), np.float32)
            alone = np.concatenate([backend.run(np.concatenate([x[i : i + 1], pad]))[:1] for i in range(samples)])
        else:
            alone = batch1
    with torch.no_grad():
        ref64 = copy.deepcopy(source.unfolded()).double()(torch.from_numpy(x).double()).numpy()
    return Expectation(x, alone, batch1, ref64, backend_name, pad_to)


def correctness(exp: Expectation, idx: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """Responses `out` for samples `idx`: share bitwise equal to the sample alone (and to batch 1), max ULP
    against alone, max rel L2 against float64, top-1 agreement with float64."""
    if len(idx) == 0:
        return {"responses": 0}
    alone, ref = exp.alone[idx], exp.ref64[idx]
    same = (out.view(np.uint32) == alone.view(np.uint32)).all(axis=1)
    same1 = (out.view(np.uint32) == exp.batch1[idx].view(np.uint32)).all(axis=1)
    rel = np.linalg.norm(out.astype(np.float64) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {
        "responses": int(len(idx)),
        "bitwise_share": float(same.mean()),
        "bitwise_share_vs_batch1": float(same1.mean()),
        "max_ulp": float(ulp_error(out, alone, torch.float32).max()),
        "max_rel_l2_vs_fp64": float(rel.max()),
        "top1_agreement_vs_fp64": float((out.argmax(1) == ref.argmax(1)).mean()),
    }


# -------------------------------------------------------------------------------- the client
class Client:
    """One gRPC connection per thread (one each keeps the threads from queueing on one channel)."""

    def __init__(self, url: str, model: str, input_name: str, output_name: str):
        self.grpc = require("tritonclient.grpc", "serve")
        self.url, self.model, self.input_name, self.output_name = url, model, input_name, output_name
        self.conn = self.grpc.InferenceServerClient(url)

    def infer(self, x: np.ndarray, timeout_s: float, dtype: str = "FP32") -> tuple[np.ndarray, np.ndarray]:
        inp = self.grpc.InferInput(self.input_name, list(x.shape), dtype)
        inp.set_data_from_numpy(x)
        r = self.conn.infer(self.model, [inp], model_version=str(MODEL_VERSION), client_timeout=timeout_s)
        return r.as_numpy(self.output_name), r.as_numpy(BATCH_OUTPUT)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Target:
    """A served model as the load test talks to it."""

    url: str
    model: str
    names: tuple[str, str]  # input, output

    def client(self) -> Client:
        return Client(self.url, self.model, *self.names)


def server_stats(conn: Any, model: str) -> dict[str, Any]:
    s = conn.get_inference_statistics(model, str(MODEL_VERSION), as_json=True)["model_stats"][0]
    inf = s["inference_stats"]
    counts = {
        k: (int(inf[k].get("count", 0)), int(inf[k].get("ns", 0)))
        for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    }
    batches = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
    return {"counts": counts, "batches": batches}


def stats_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-request server times (µs) and executed batch counts between two snapshots."""
    n = b["counts"]["success"][0] - a["counts"]["success"][0]
    out: dict[str, Any] = {"server_requests": n}
    for k in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        out[f"server_{k}_us"] = (b["counts"][k][1] - a["counts"][k][1]) / n / 1e3 if n else None
    out["batch_stats"] = {
        bs: c - a["batches"].get(bs, 0) for bs, c in sorted(b["batches"].items()) if c - a["batches"].get(bs, 0) > 0
    }
    return out


def mean_batch(batch_stats: dict[int, int]) -> float | None:
    total = sum(batch_stats.values())
    return sum(b * c for b, c in batch_stats.items()) / total if total else None


@dataclass
class Record:
    t_done: float
    latency_s: float
    sample: int
    out: np.ndarray
    executed_batch: int


def run_level(target: Target, exp: Expectation, concurrency: int, opts: LoadOptions) -> dict[str, Any]:
    """One concurrency level, closed loop, measured in windows until stable or capped."""
    stop = threading.Event()
    lock = threading.Lock()
    records: list[Record] = []
    tally = Tally()
    budget = [opts.max_requests]

    def worker(k: int) -> None:
        client = target.client()
        i = k
        try:
            while not stop.is_set():
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                    tally.sent += 1
                s = i % len(exp.x)
                i += concurrency
                t0 = time.perf_counter()
                try:
                    out, eb = client.infer(exp.x[s : s + 1], opts.timeout_s)
                    rec = Record(time.perf_counter(), time.perf_counter() - t0, s, out[0], int(eb[0, 0]))
                    with lock:
                        tally.ok += 1
                        records.append(rec)
                except Exception as e:  # noqa: BLE001 - every failure is counted by kind
                    with lock:
                        tally.add_error(error_kind(e), str(e))
        finally:
            client.close()

    stats_conn = target.client()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    windows: list[dict[str, Any]] = []
    settled = False
    snaps = [server_stats(stats_conn.conn, target.model)]
    try:
        while len(windows) < opts.max_windows:
            w0 = time.perf_counter()
            time.sleep(opts.window_s)
            w1 = time.perf_counter()
            snaps.append(server_stats(stats_conn.conn, target.model))
            with lock:
                lat = [r.latency_s for r in records if w0 <= r.t_done < w1]
            windows.append(
                {
                    "t0": w0,
                    "t1": w1,
                    "throughput": len(lat) / (w1 - w0),
                    "p50_ms": float(np.median(lat) * 1e3) if lat else float("nan"),
                }
            )
            last = windows[-opts.stable_windows :]
            if len(last) == opts.stable_windows and all(np.isfinite(w["p50_ms"]) for w in last):
                if all(
                    abs(w[m] - np.mean([v[m] for v in last])) <= opts.stability * np.mean([v[m] for v in last])
                    for w in last
                    for m in ("throughput", "p50_ms")
                ):
                    settled = True
                    break
            if budget[0] <= 0:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(opts.timeout_s + 5)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats_conn.close()
    last = windows[-opts.stable_windows :]
    m0, m1 = last[0]["t0"], last[-1]["t1"]
    measured = [r for r in records if m0 <= r.t_done < m1]
    lat_ms = np.array([r.latency_s for r in measured]) * 1e3
    server = stats_delta(snaps[-len(last) - 1], snaps[-1])
    idx = np.array([r.sample for r in records], dtype=int)
    outs = np.stack([r.out for r in records]) if records else np.zeros((0, exp.alone.shape[1]), np.float32)
    by_batch = {}
    for bs in sorted({r.executed_batch for r in records}):
        sel = np.array([r.executed_batch == bs for r in records])
        by_batch[bs] = correctness(exp, idx[sel], outs[sel])
    return {
        "concurrency": concurrency,
        "windows": len(windows),
        "stable": settled,
        "throughput_ips": len(measured) / (m1 - m0) if measured else 0.0,
        **{f"p{q}_ms": float(np.percentile(lat_ms, q)) if len(lat_ms) else None for q in (50, 90, 95, 99)},
        **server,
        "mean_executed_batch": mean_batch(server["batch_stats"]),
        "client_cpu_cores": cpu / wall,
        "client_cpu_share": cpu / wall / (os.cpu_count() or 1),
        "sent": tally.sent,
        "ok": tally.ok,
        "errors": dict(tally.errors),
        "error_messages": dict(tally.messages),
        "correctness": correctness(exp, idx, outs),
        "correctness_by_batch": by_batch,
    }


# ------------------------------------------------------------------------------------- faults
def bad_requests(max_batch: int, shape: tuple[int, ...]) -> dict[str, tuple[np.ndarray, str]]:
    """One request of each bad kind: (array, Triton datatype)."""
    c, h, w = shape
    nan = np.zeros((1, c, h, w), np.float32)
    nan[0, 0, 0, 0] = np.nan
    return {
        "wrong_shape": (np.zeros((1, c + 1, h, w), np.float32), "FP32"),
        "wrong_dtype": (np.zeros((1, c, h, w), np.float64), "FP64"),
        "batch_above_max": (np.zeros((max_batch + 1, c, h, w), np.float32), "FP32"),
        "non_finite": (nan, "FP32"),
    }


def good_and_bad(
    target: Target,
    exp: Expectation,
    bad: dict[str, tuple[np.ndarray, str]],
    *,
    good_clients: int,
    requests_each: int,
    bad_clients: int,
    timeout_s: float,
) -> dict[str, Any]:
    """`good_clients` each send `requests_each` good requests while `bad_clients` send the bad ones in turn,
    without pause, until the good ones are done. Every good request must get its own answer."""
    good, bad_tally = Tally(), {k: Tally() for k in bad}
    recs: list[tuple[int, np.ndarray, int]] = []
    lock = threading.Lock()
    done = threading.Event()

    def good_worker(k: int) -> None:
        client = target.client()
        try:
            for j in range(requests_each):
                s = (k + j * good_clients) % len(exp.x)
                with lock:
                    good.sent += 1
                try:
                    out, eb = client.infer(exp.x[s : s + 1], timeout_s)
                    with lock:
                        good.ok += 1
                        recs.append((s, out[0], int(eb[0, 0])))
                except Exception as e:  # noqa: BLE001
                    with lock:
                        good.add_error(error_kind(e), str(e))
        finally:
            client.close()

    def bad_worker(k: int) -> None:
        client = target.client()
        kinds = list(bad)
        i = k
        try:
            while not done.is_set():
                kind = kinds[i % len(kinds)]
                i += 1
                x, dtype = bad[kind]
                with lock:
                    bad_tally[kind].sent += 1
                try:
                    client.infer(x, timeout_s, dtype)
                    with lock:
                        bad_tally[kind].ok += 1
                except Exception as e:  # noqa: BLE001
                    with lock:
                        bad_tally[kind].add_error(error_kind(e), str(e))
        finally:
            client.close()

    bads = [threading.Thread(target=bad_worker, args=(k,), daemon=True) for k in range(bad_clients)]
    goods = [threading.Thread(target=good_worker, args=(k,), daemon=True) for k in range(good_clients)]
    for t in bads + goods:
        t.start()
    for t in goods:
        t.join(timeout_s * requests_each + 10)
    done.set()
    for t in bads:
        t.join(timeout_s + 5)
    idx = np.array([s for s, _, _ in recs], dtype=int)
    outs = np.stack([o for _, o, _ in recs]) if recs else np.zeros((0, exp.alone.shape[1]), np.float32)
    shared = sorted({b for _, _, b in recs})
    return {
        "good": {**asdict(good), "correctness": correctness(exp, idx, outs), "executed_batches": shared},
        "bad": {k: asdict(t) for k, t in bad_tally.items()},
        "good_clients": good_clients,
        "bad_clients": bad_clients,
    }


def nan_flood(
    target: Target, exp: Expectation, *, good_clients: int = 8, requests_each: int = 24, timeout_s: float = 10.0
) -> dict[str, Any]:
    """8 clients send good samples while 1 client sends NaN images without pause."""
    nan = np.full((1, *exp.x.shape[1:]), np.nan, np.float32)
    return good_and_bad(
        target,
        exp,
        {"non_finite": (nan, "FP32")},
        good_clients=good_clients,
        requests_each=requests_each,
        bad_clients=1,
        timeout_s=timeout_s,
    )


def burst(
    target: Target, exp: Expectation, *, clients: int, requests_each: int, timeout_s: float = 10.0
) -> dict[str, Any]:
    """`clients` threads start together and each sends `requests_each` requests back to back: sent =
    answered + refused (+ any other error, counted by kind); every answer checked against the sample alone."""
    tally, lock = Tally(), threading.Lock()
    recs: list[tuple[int, np.ndarray]] = []
    conns = [target.client() for _ in range(clients)]  # connected before the start, so the burst is the requests
    start = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        start.wait()
        for j in range(requests_each):
            s = (k + j * clients) % len(exp.x)
            with lock:
                tally.sent += 1
            try:
                out, _ = conns[k].infer(exp.x[s : s + 1], timeout_s)
                with lock:
                    tally.ok += 1
                    recs.append((s, out[0]))
            except Exception as e:  # noqa: BLE001
                with lock:
                    tally.add_error(error_kind(e), str(e))

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout_s * requests_each + 10)
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    idx = np.array([s for s, _ in recs], dtype=int)
    outs = np.stack([o for _, o in recs]) if recs else np.zeros((0, exp.alone.shape[1]), np.float32)
    return {
        "clients": clients,
        "requests_each": requests_each,
        **asdict(tally),
        "balanced": tally.balanced(),
        "answered": tally.ok,
        "refused": tally.errors["refused"],
        "wall_s": wall,
        "correctness": correctness(exp, idx, outs),
    }


def fault_disconnect(target: Target, exp: Expectation) -> dict[str, Any]:
    """A client that sends a request and closes its connection before the answer, then the server is
    asked again: still ready, still the sample's output alone."""
    client = target.client()
    inp = client.grpc.InferInput(target.names[0], [1, *exp.x.shape[1:]], "FP32")
    inp.set_data_from_numpy(exp.x[:1])
    client.conn.async_infer(target.model, [inp], callback=lambda *a, **k: None, model_version=str(MODEL_VERSION))
    client.close()  # mid-request
    time.sleep(0.2)
    after = target.client()
    try:
        ready = bool(after.conn.is_server_ready())
        out, _ = after.infer(exp.x[:1], 10.0)
        return {
            "ready_after": ready,
            "bitwise_after": bool((out.view(np.uint32) == exp.alone[:1].view(np.uint32)).all()),
        }
    finally:
        after.close()


def sequential_outputs(target: Target, exp: Expectation) -> np.ndarray:
    client = target.client()
    try:
        return np.concatenate([client.infer(exp.x[i : i + 1], 10.0)[0] for i in range(len(exp.x))])
    finally:
        client.close()


# ------------------------------------------------------------------------------------- speed
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
            t = time.perf_counter()
            try:
                self.clients[k].infer(self.x[i % len(self.x) : i % len(self.x) + 1], self.timeout_s)
                self.latencies_ms.append((time.perf_counter() - t) * 1e3)
            except Exception as e:  # noqa: BLE001 - a failed request makes the timing meaningless: raised by the call
                self.errors.append(one_line(e, 300))
            i += self.concurrency
            with self.cond:
                self.in_flight -= 1
                self.done += 1
                self.cond.notify_all()

    def __call__(self) -> tuple[float, None]:
        if not self.threads:
            t = time.perf_counter()
            for _ in range(self.per_call):
                s = self.sent % len(self.x)
                self.sent += 1
                t1 = time.perf_counter()
                self.clients[0].infer(self.x[s : s + 1], self.timeout_s)
                self.latencies_ms.append((time.perf_counter() - t1) * 1e3)
            return (time.perf_counter() - t) * 1e3 / self.per_call, None
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
        return ms, None

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
) -> dict[str, Any]:
    """Served (at `concurrency`) against the same backend in this process (at `batch`, default: the mean batch
    the batcher formed in a first look at that concurrency), in interleaved rounds: the per-request times,
    their difference and ratio per round with 95% intervals, and the server's per-request cost split."""
    stats_conn = target.client()
    served = ServedTimer(target, exp.x, concurrency, per_call=1 if concurrency == 1 else None)
    try:
        if batch is None:
            s0 = server_stats(stats_conn.conn, target.model)
            for _ in range(max(3, 40 // concurrency)):
                served()
            batch = max(
                1,
                int(
                    round(mean_batch(stats_delta(s0, server_stats(stats_conn.conn, target.model))["batch_stats"]) or 1)
                ),
            )
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
    sv, ip = timed["members"]["served"], timed["members"]["in_process"]
    diffs = [a - b for a, b in zip(sv["round_medians_ms"], ip["round_medians_ms"])]
    # A request's own mean latency (warm-up included: Triton's statistics count those requests too) less the
    # server's time for it: what the client library, gRPC and loopback cost.
    latency_us = float(np.mean(served.latencies_ms)) * 1e3 if served.latencies_ms else None
    split["client_mean_latency_us"] = latency_us
    split["client_and_transport_us"] = (
        latency_us - split["server_success_us"] if latency_us is not None and split["server_success_us"] else None
    )
    ratio = timed["ratios"]["served/in_process"]
    return {
        "concurrency": concurrency,
        "inprocess_batch": batch,
        "served_ms_per_request": sv["median_ms"],
        "served_ci95": sv["median_ci95_ms"],
        "inprocess_ms_per_sample": ip["median_ms"],
        "inprocess_ci95": ip["median_ci95_ms"],
        "difference_ms": summarize(diffs),
        "served_over_inprocess": ratio,
        "throughput_ratio": 1 / ratio["ratio"],
        "throughput_ratio_ci95": [1 / ratio["ci95"][1], 1 / ratio["ci95"][0]],
        "rounds": timed["rounds"],
        "settled": timed["settled"],
        "stopped_by": timed["stopped_by"],
        "cost_split": split,
    }


def compare_served_throughput(
    targets: dict[str, Target], x: np.ndarray, *, concurrency: int, time_s: float = 10.0
) -> dict[str, Any]:
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
    return {
        "concurrency": concurrency,
        "ms_per_request": {k: m["median_ms"] for k, m in timed["members"].items()},
        "ratios": timed["ratios"],
        "rounds": timed["rounds"],
        "settled": timed["settled"],
    }


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
) -> dict[str, Any]:
    """`backend` served twice, without and with --batch-invariant, both up at once: the responses of a load at
    `concurrency` against the sample alone (at batch 1, and padded to max_batch as the mode runs it), then the
    mode's throughput cost in interleaved rounds."""
    common = ["--backend", backend, "--max-batch", str(max_batch), *(["--threads", str(threads)] if threads else [])]
    procs = {
        "off": ServerProcess(export_dir, [*common, "--no-batch-invariant"]),
        "on": ServerProcess(export_dir, [*common, "--batch-invariant"]),
    }
    opts = LoadOptions(concurrency=(concurrency,), window_s=window_s, max_windows=6, samples=samples)
    rows, targets = {}, {}
    try:
        for mode, proc in procs.items():
            proc.start()
            facts = model_facts(proc.url)
            pad_to = int(facts["parameters"].get("nfdeploy.pad_to") or 0)
            exp = expectation(export_dir, backend, samples, 0, pad_to, threads)
            targets[mode] = Target(proc.url, facts["model"], (facts["input"], facts["output"]))
            level = run_level(targets[mode], exp, concurrency, opts)
            padded = exp if pad_to else expectation(export_dir, backend, samples, 0, max_batch, threads)
            idx = np.array([i % samples for i in range(samples)])
            rows[mode] = {
                "pad_to": pad_to,
                "batch_invariance": facts["parameters"].get("nfdeploy.batch_invariance"),
                "responses": level["ok"],
                "errors": sum(level["errors"].values()),
                "executed_batches": level["batch_stats"],
                "throughput_ips_alone": level["throughput_ips"],
                "bitwise_vs_batch1": level["correctness"]["bitwise_share_vs_batch1"],
                "bitwise_vs_alone_as_served": level["correctness"]["bitwise_share"],
                "max_ulp_vs_alone_as_served": level["correctness"]["max_ulp"],
                "batch1_equals_padded_alone": float(
                    (exp.batch1[idx].view(np.uint32) == padded.alone[idx].view(np.uint32)).all(axis=1).mean()
                ),
                "correctness_by_batch": level["correctness_by_batch"],
            }
            log(
                f"{backend} batch-invariant {mode}: "
                f"bitwise vs alone as served {rows[mode]['bitwise_vs_alone_as_served']:.1%}, "
                f"vs batch 1 {rows[mode]['bitwise_vs_batch1']:.1%}, batches {level['batch_stats']}"
            )
        cost = compare_served_throughput(
            {"on": targets["on"], "off": targets["off"]}, exp.x, concurrency=concurrency, time_s=time_s
        )
    finally:
        for proc in procs.values():
            proc.stop()
    r = cost["ratios"]["on/off"]
    log(f"throughput cost: on/off ms per request {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    return {
        "backend": backend,
        "max_batch": max_batch,
        "concurrency": concurrency,
        "samples": samples,
        "modes": rows,
        "throughput": cost,
    }


def write_batch_invariance(rep: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "batch_invariance.json", rep)
    r = rep["throughput"]["ratios"]["on/off"]
    ms = rep["throughput"]["ms_per_request"]
    table = [
        {
            "mode": m,
            "padded to": v["pad_to"] or "-",
            "responses": v["responses"],
            "errors": v["errors"],
            "executed batches": " ".join(f"{b}×{c}" for b, c in v["executed_batches"].items()),
            "bitwise vs alone at batch 1": f"{v['bitwise_vs_batch1']:.1%}",
            "bitwise vs alone as served": f"{v['bitwise_vs_alone_as_served']:.1%}",
            "ms/request (interleaved)": f"{ms[m]:.3f}",
        }
        for m, v in rep["modes"].items()
    ]
    lines = [
        f"# Batch-invariant serving: {rep['backend']}, max batch {rep['max_batch']}, concurrency {rep['concurrency']}",
        "",
        markdown_table(table),
        f"Throughput cost of the mode (ms per request on ÷ off, interleaved rounds): {r['ratio']:.3f} "
        f'[{r["ci95"][0]:.3f}, {r["ci95"][1]:.3f}] over {r["rounds"]} rounds. "Alone as served" = the sample run alone '
        "in this process the way the server runs it (at batch 1 without the mode; padded to the max batch with it).",
        f"A sample alone at batch 1 equals the same sample padded to {rep['max_batch']}: "
        f"{rep['modes']['on']['batch1_equals_padded_alone']:.0%} of samples.",
    ]
    atomic_write_text(out_dir / "batch_invariance.md", "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ a served export
class ServerProcess:
    """`nfdeploy serve PATH` in a child process on free loopback ports (its CPU time is not the client's);
    stopped with SIGTERM, which drains in-flight requests."""

    def __init__(self, path: str | Path, serve_args: Sequence[str] = (), log_file: Path | None = None):
        self.path, self.serve_args = Path(path), list(serve_args)
        self.proc: subprocess.Popen | None = None
        self.log_file = log_file
        self.ready_polls: list[tuple[float, int | None]] = []  # (seconds since start, HTTP status of /v2/health/ready)

    def start(self, ready_timeout_s: float = 300.0) -> ServerProcess:
        self.ports = {k: free_port() for k in ("http", "grpc", "metrics")}
        cmd = [
            sys.executable,
            "-m",
            "nfdeploy",
            "serve",
            str(self.path),
            *[a for k, p in self.ports.items() for a in (f"--{k}-port", str(p))],
            *self.serve_args,
        ]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=terminate_with_parent if sys.platform == "linux" else None,
            )
        finally:
            if self.log_file:
                out.close()  # the child has its own descriptor
        t0, deadline = time.monotonic(), time.monotonic() + ready_timeout_s
        self.ready_polls = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeError(
                    f"`nfdeploy serve` exited with {self.proc.returncode} before it was ready"
                    + (f" (log: {self.log_file})" if self.log_file else "")
                )
            status = ready_status(f"http://{LOOPBACK}:{self.ports['http']}/v2/health/ready")
            self.ready_polls.append((time.monotonic() - t0, status))
            if status == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise ServeError(f"`nfdeploy serve` was not ready within {ready_timeout_s:.0f} s")

    @property
    def url(self) -> str:
        return f"{LOOPBACK}:{self.ports['grpc']}"

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait; the exit code (0 on a clean stop)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


# ---------------------------------------------------------------------------------- the test
def model_facts(url: str, model: str | None = None) -> dict[str, Any]:
    """The served model's name, I/O names, max batch, queue and nfdeploy parameters, as the server states them
    (its repository index names the models)."""
    grpc = require("tritonclient.grpc", "serve")
    conn = grpc.InferenceServerClient(url)
    try:
        meta = conn.get_server_metadata(as_json=True)
        ready = [
            m["name"]
            for m in conn.get_model_repository_index(as_json=True).get("models", [])
            if m.get("state") == "READY"
        ]
        if model is None and len(ready) != 1:
            raise LoadTestError(f"the server at {url} serves {len(ready)} models ({', '.join(ready)}): name one")
        name = model or ready[0]
        cfg = conn.get_model_config(name, str(MODEL_VERSION), as_json=True)["config"]
    finally:
        conn.close()
    params = {k: v.get("string_value") for k, v in cfg.get("parameters", {}).items() if k.startswith("nfdeploy.")}
    out_name = next(o["name"] for o in cfg["output"] if o["name"] != BATCH_OUTPUT)
    batching = cfg.get("dynamic_batching", {})
    return {
        "model": name,
        "server_version": meta.get("version"),
        "input": cfg["input"][0]["name"],
        "output": out_name,
        "max_batch": int(cfg.get("max_batch_size", 0)),
        "parameters": params,
        "max_queue_delay_us": int(batching.get("max_queue_delay_microseconds", 0)),
        "max_queue_size": int(batching.get("default_queue_policy", {}).get("max_queue_size", 0)),
    }


def loadtest(
    export_dir: str | Path,
    out_dir: str | Path,
    opts: LoadOptions | None = None,
    *,
    url: str | None = None,
    serve_args: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load-test a served export: `url` (a running server, loopback) or, without it, `nfdeploy serve EXPORT
    SERVE_ARGS` started here (and restarted once for the restart check). Writes loadtest.json/.md/.png."""
    opts = opts or LoadOptions()
    out_dir = Path(out_dir)
    proc = None
    t_start = time.perf_counter()
    if url is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        proc = ServerProcess(export_dir, serve_args, log_file=out_dir.parent / f"{out_dir.name}-server.log")
        log(f"starting nfdeploy serve {export_dir} {' '.join(serve_args)} (log {proc.log_file})")
        proc.start()
        url = proc.url
    elif url.split(":")[0] not in (LOOPBACK, "localhost"):
        raise LoadTestError(f"--url {url}: the load test runs on loopback only (127.0.0.1 or localhost)")
    overload = faults = speed = None
    try:
        facts = model_facts(url)
        backend = opts.backend or facts["parameters"].get("nfdeploy.backend")
        if not backend:
            raise LoadTestError(f"the model at {url} does not say which nfdeploy backend it serves: pass --backend")
        if model_name_of(load_export_source(export_dir).manifest) != facts["model"]:
            raise LoadTestError(f"the server at {url} serves {facts['model']}, not the model of {export_dir}")
        pad_to = int(facts["parameters"].get("nfdeploy.pad_to") or 0)
        threads = int(facts["parameters"]["nfdeploy.threads"]) if facts["parameters"].get("nfdeploy.threads") else None
        log(
            f"outputs alone of {backend} in this process ({opts.samples} samples"
            f"{f', padded to {pad_to} rows as served' if pad_to else ''}) and the float64 reference"
        )
        exp = expectation(export_dir, backend, opts.samples, opts.seed, pad_to, threads)
        target = Target(url, facts["model"], (facts["input"], facts["output"]))
        rows = []
        for c in opts.concurrency:
            row = run_level(target, exp, int(c), opts)
            rows.append(row)
            log(
                f"concurrency {c}: {row['throughput_ips']:.1f} inf/s, p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, "
                f"bitwise {row['correctness'].get('bitwise_share', float('nan')):.1%}, "
                f"errors {sum(row['errors'].values())}, "
                f"batches {row['batch_stats']}"
            )
        if opts.overload:
            overload = burst(
                target, exp, clients=opts.overload, requests_each=opts.overload_requests, timeout_s=opts.timeout_s
            )
            overload["ready_after"] = (
                ready_status(f"http://{LOOPBACK}:{proc.ports['http']}/v2/health/ready") == 200 if proc else None
            )
            log(
                f"overload {opts.overload} clients × {opts.overload_requests}: sent {overload['sent']} = answered "
                f"{overload['answered']} + refused {overload['refused']} "
                f"+ other {sum(overload['errors'].values()) - overload['refused']}"
            )
        faults = run_faults(target, exp, facts, opts, proc, log) if opts.faults else {}
        if proc is not None:
            url = proc.url
            target = Target(url, target.model, target.names)
        if opts.speed:
            speed = run_speed(target, exp, export_dir, backend, rows, opts, threads, log)
    finally:
        exit_code = proc.stop() if proc is not None else None
    report = {
        "format": "nfdeploy-loadtest-v2",
        "export_dir": str(export_dir),
        "url": url,
        "served": facts,
        "backend": backend,
        "options": asdict(opts),
        "levels": rows,
        "overload": overload,
        "faults": faults,
        "speed": speed,
        "server_exit_code": exit_code,
        "cpu_count": os.cpu_count(),
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_report(report, out_dir)
    return report


def run_faults(
    target: Target,
    exp: Expectation,
    facts: dict[str, Any],
    opts: LoadOptions,
    proc: ServerProcess | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    faults: dict[str, Any] = {
        "nan_flood": nan_flood(target, exp, timeout_s=opts.timeout_s),
        "bad_requests": good_and_bad(
            target,
            exp,
            bad_requests(facts["max_batch"], exp.x.shape[1:]),
            good_clients=4,
            requests_each=24,
            bad_clients=1,
            timeout_s=opts.timeout_s,
        ),
        "disconnect": fault_disconnect(target, exp),
    }
    if opts.burst_clients:
        faults["burst"] = burst(
            target, exp, clients=opts.burst_clients, requests_each=opts.burst_requests, timeout_s=opts.timeout_s
        )
    if proc is not None:
        before = sequential_outputs(target, exp)
        code = proc.stop()
        proc.start()
        after = sequential_outputs(Target(proc.url, target.model, target.names), exp)
        faults["restart"] = {
            "first_exit_code": code,
            "samples": len(before),
            "bitwise_identical": bool((before.view(np.uint32) == after.view(np.uint32)).all()),
            "ready_polls_before_200": sum(1 for _, s in proc.ready_polls if s != 200),
        }
    log(f"faults: {faults_summary(faults)}")
    return faults


def run_speed(
    target: Target,
    exp: Expectation,
    export_dir: str | Path,
    backend: str,
    rows: list[dict[str, Any]],
    opts: LoadOptions,
    threads: int | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Concurrency 1 and the busiest level of the sweep, each served vs in process, interleaved."""
    busiest = max(rows, key=lambda r: r["throughput_ips"]) if rows else None
    out = {
        "c1": speed_side_by_side(
            target, exp, export_dir, backend, concurrency=1, batch=1, time_s=opts.speed_time_s, threads=threads
        )
    }
    if busiest and busiest["concurrency"] > 1:
        formed = max(1, int(round(busiest["mean_executed_batch"] or 1)))
        out["busiest"] = speed_side_by_side(
            target,
            exp,
            export_dir,
            backend,
            concurrency=busiest["concurrency"],
            batch=formed,
            time_s=opts.speed_time_s,
            threads=threads,
        )
    d = out["c1"]["difference_ms"]
    log(
        f"speed: concurrency 1 served − in process {d['median']:.3f} ms [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"
        + (
            f"; concurrency {out['busiest']['concurrency']} throughput ratio {out['busiest']['throughput_ratio']:.3f}"
            if "busiest" in out
            else ""
        )
    )
    return out


def faults_summary(f: dict[str, Any]) -> str:
    parts = []
    if "nan_flood" in f:
        g = f["nan_flood"]["good"]
        parts.append(
            f"NaN flood: good {g['ok']}/{g['sent']} answered "
            f"({g['correctness'].get('bitwise_share', float('nan')):.0%} bitwise), NaN refused "
            f"{f['nan_flood']['bad']['non_finite']['errors']['rejected']}/{f['nan_flood']['bad']['non_finite']['sent']}"
        )
    if "bad_requests" in f:
        g, bad = f["bad_requests"]["good"], f["bad_requests"]["bad"]
        parts.append(
            f"bad kinds: good {g['ok']}/{g['sent']}; refused "
            + ", ".join(f"{k} {t['sent'] - t['ok']}/{t['sent']}" for k, t in bad.items())
        )
    if "burst" in f:
        b = f["burst"]
        parts.append(
            f"burst {b['clients']} × {b['requests_each']}: sent {b['sent']} = answered {b['answered']} + refused "
            f"{b['refused']} + other {sum(b['errors'].values()) - b['refused']} in {b['wall_s']:.2f} s "
            f"({b['correctness'].get('bitwise_share', float('nan')):.0%} bitwise)"
        )
    if "disconnect" in f:
        parts.append(
            f"disconnect: ready after {f['disconnect']['ready_after']}, bitwise {f['disconnect']['bitwise_after']}"
        )
    if "restart" in f:
        parts.append(
            f"restart: exit {f['restart']['first_exit_code']}, bitwise identical {f['restart']['bitwise_identical']}"
        )
    return "; ".join(parts)


def _speed_lines(sp: dict[str, Any]) -> list[str]:
    lines = ["## Speed (interleaved rounds, served vs the same backend in this process)", ""]
    for s in sp.values():
        d = s["difference_ms"]
        split = s["cost_split"]
        lines.append(
            f"- concurrency {s['concurrency']} vs in-process batch {s['inprocess_batch']}: served "
            f"{s['served_ms_per_request']:.3f} ms/request, in process {s['inprocess_ms_per_sample']:.3f} ms/sample; "
            f"difference {d['median']:.3f} ms [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}], throughput ratio "
            f"{s['throughput_ratio']:.3f} [{s['throughput_ratio_ci95'][0]:.3f}, {s['throughput_ratio_ci95'][1]:.3f}] "
            f"over {s['rounds']} rounds{'' if s['settled'] else ' (not settled)'}"
        )
        if split.get("server_success_us") is not None:
            lines.append(
                f"  - per request (Triton's statistics): queue {split['server_queue_us']:.0f} µs, compute input "
                f"{split['server_compute_input_us']:.0f} µs, infer {split['server_compute_infer_us']:.0f} µs, output "
                f"{split['server_compute_output_us']:.0f} µs; client and transport "
                f"{split['client_and_transport_us']:.0f} µs"
            )
    return lines


def write_report(rep: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "loadtest.json", rep)
    table = [
        {
            "concurrency": r["concurrency"],
            "inf/s": r["throughput_ips"],
            "p50 ms": r["p50_ms"],
            "p90 ms": r["p90_ms"],
            "p95 ms": r["p95_ms"],
            "p99 ms": r["p99_ms"],
            "queue µs": r["server_queue_us"],
            "infer µs": r["server_compute_infer_us"],
            "in+out µs": (r["server_compute_input_us"] or 0) + (r["server_compute_output_us"] or 0),
            "batches": " ".join(f"{b}×{c}" for b, c in r["batch_stats"].items()),
            "bitwise": f"{r['correctness'].get('bitwise_share', float('nan')):.1%}",
            "max ULP": r["correctness"].get("max_ulp"),
            "top-1 vs fp64": r["correctness"].get("top1_agreement_vs_fp64"),
            "sent": r["sent"],
            "errors": sum(r["errors"].values()),
            "client CPU": f"{r['client_cpu_share']:.0%}",
            "stable": "yes" if r["stable"] else f"NO ({r['windows']} windows)",
        }
        for r in rep["levels"]
    ]
    s = rep["served"]
    pad = int(s["parameters"].get("nfdeploy.pad_to") or 0)
    lines = [
        f"# Load test: {s['model']} served by {rep['backend']}",
        "",
        f"Triton {s['server_version']}, max batch {s['max_batch']}, queue delay {s['max_queue_delay_us']} µs, queue "
        f"size {s['max_queue_size']}, parity: {s['parameters'].get('nfdeploy.check.parity')}, batch invariance: "
        f"{s['parameters'].get('nfdeploy.batch_invariance')}; {rep['cpu_count']} CPUs shared by client and server "
        "(client CPU = the load generator's share of all cores). Server times are per request, from Triton's "
        "statistics over the measured windows.",
        "",
        markdown_table(table),
        "Bitwise = share of responses equal to the same sample run alone in this process "
        f"({f'padded to {pad} rows, as the server pads' if pad else 'at batch 1'}). "
        "Every request sent is an answer or a counted error.",
        "",
    ]
    by_batch = [
        {"concurrency": r["concurrency"], "executed batch": bs, **c}
        for r in rep["levels"]
        for bs, c in r["correctness_by_batch"].items()
    ]
    lines += ["## Correctness per executed batch size", "", markdown_table(by_batch)]
    if rep["speed"]:
        lines += _speed_lines(rep["speed"])
    if rep["overload"]:
        o = rep["overload"]
        lines += [
            "",
            f"## Overload: {o['clients']} clients × {o['requests_each']} requests at once",
            "",
            f"sent {o['sent']} = answered {o['answered']} + refused {o['refused']} + other errors "
            f"{sum(o['errors'].values()) - o['refused']} ({'balanced' if o['balanced'] else 'NOT balanced'}); "
            f"answers bitwise {o['correctness'].get('bitwise_share', float('nan')):.1%}; {o['wall_s']:.2f} s; "
            f"server ready afterwards: {o['ready_after']}",
        ]
        if o["messages"].get("refused"):
            lines.append(f"refusal: {o['messages']['refused']}")
    if rep["faults"]:
        lines += ["", "## Faults", "", faults_summary(rep["faults"])]
    atomic_write_text(out_dir / "loadtest.md", "\n".join(lines) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["p99_ms"] for r in rep["levels"]], [r["throughput_ips"] for r in rep["levels"]], "o-")
    for r in rep["levels"]:
        ax.annotate(f"c={r['concurrency']}", (r["p99_ms"], r["throughput_ips"]), fontsize=8)
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title(f"{s['model']} · {rep['backend']}", fontsize=9)
    save_figure(fig, out_dir / "loadtest.png")


__all__ = [
    "ERROR_KINDS",
    "Expectation",
    "LoadOptions",
    "LoadTestError",
    "ServedTimer",
    "ServerProcess",
    "Tally",
    "Target",
    "bad_requests",
    "batch_invariance_study",
    "burst",
    "compare_served_throughput",
    "correctness",
    "error_kind",
    "expectation",
    "fault_disconnect",
    "good_and_bad",
    "inprocess_timer",
    "loadtest",
    "mean_batch",
    "model_facts",
    "nan_flood",
    "run_faults",
    "run_level",
    "run_speed",
    "sequential_outputs",
    "server_stats",
    "speed_side_by_side",
    "stats_delta",
    "write_batch_invariance",
    "write_report",
]
