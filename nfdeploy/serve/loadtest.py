"""`nfdeploy loadtest`: a load generator on tritonclient (gRPC) reporting what perf_analyzer reports,
plus what it does not: whether every response equals the same sample computed alone.

Each concurrency level runs `c` client threads, each sending one request at a time (closed loop),
and is measured in windows until the last three agree within 10% on throughput and p50 latency, or
a cap on windows passes (perf_analyzer's stability rule). Every request carries one of a fixed set
of seeded samples whose batch-1 output the same backend produced in this process; every response is
compared with it (bitwise, ULPs) and with the float64 unfolded model (rel L2, top-1). Requests sent
= responses + errors, by kind. Loopback only: the load test never leaves the machine.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.backends import export_backends, load_export_source
from nfdeploy.errors import UserError, one_line, require
from nfdeploy.metrics import ulp_error
from nfdeploy.reports import markdown_table, pyplot, save_figure
from nfdeploy.serve.server import BATCH_OUTPUT, LOOPBACK, MODEL_VERSION, ServeError, free_port, model_name_of

ERROR_KINDS = ("timeout", "rejected", "connection", "other")


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
    samples: int = 32  # distinct seeded inputs, each with its batch-1 output
    seed: int = 0
    overload: int = 0  # concurrency of an overload level with a short client timeout (0: none)
    faults: bool = True  # bad requests, a client that disconnects mid-request (and a restart with --serve)
    backend: str | None = None  # the backend whose batch-1 outputs are the expectation (default: the served one)


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


def error_kind(e: BaseException) -> str:
    """timeout (the client gave up), rejected (the server refused: bad input, a full queue), connection."""
    status = str(getattr(e, "status", lambda: "")() or "")
    text = str(e)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in text:
        return "timeout"
    if "maximum queue size" in text:
        return "rejected"
    if "UNAVAILABLE" in status or "CANCELLED" in status or "failed to connect" in text.lower():
        return "connection"
    if status:
        return "rejected"
    return "other"


# ------------------------------------------------------------------------------ the expectation
@dataclass
class Expectation:
    """Seeded samples, their batch-1 outputs from the served backend run in this process, and the
    float64 unfolded model's outputs."""

    x: np.ndarray
    alone: np.ndarray  # float32, each sample run alone at batch 1
    ref64: np.ndarray
    backend: str
    inprocess_ms: dict[int, float]  # batch size -> median ms of backend.run in this process


def time_backend(backend: Any, x: np.ndarray, batch: int, budget_s: float = 2.0, max_runs: int = 200) -> float:
    """Median wall ms of backend.run on `batch` rows, bounded in runs and time."""
    xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    backend.run(xb)
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < 5 or time.perf_counter() < t_end):
        t = time.perf_counter()
        backend.run(xb)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def expectation(export_dir: str | Path, backend_name: str, samples: int, seed: int,
                timed_batches: Sequence[int] = (1,)) -> Expectation:
    source = load_export_source(export_dir)
    backend = next((b for b in export_backends(source, compile=False) if b.name == backend_name), None)
    if backend is None:
        raise LoadTestError(f"backend {backend_name} is not a backend of {export_dir}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *source.input_shape, generator=g).numpy()
    with backend:
        alone = np.concatenate([backend.run(x[i:i + 1]) for i in range(samples)])
        timed = {int(b): time_backend(backend, x, int(b)) for b in sorted(set(timed_batches))}
    with torch.no_grad():
        ref64 = copy.deepcopy(source.model).double()(torch.from_numpy(x).double()).numpy()
    return Expectation(x, alone, ref64, backend_name, timed)


def correctness(exp: Expectation, idx: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """Responses `out` for samples `idx`: share bitwise equal to the batch-1 output, max ULP against it,
    max rel L2 against float64, top-1 agreement with float64."""
    if len(idx) == 0:
        return {"responses": 0}
    alone, ref = exp.alone[idx], exp.ref64[idx]
    same = (out.view(np.uint32) == alone.view(np.uint32)).all(axis=1)
    rel = np.linalg.norm(out.astype(np.float64) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {"responses": int(len(idx)), "bitwise_share": float(same.mean()),
            "max_ulp": float(ulp_error(out, alone, torch.float32).max()),
            "max_rel_l2_vs_fp64": float(rel.max()), "top1_agreement_vs_fp64": float((out.argmax(1) == ref.argmax(1)).mean())}


# -------------------------------------------------------------------------------- the client
class Client:
    """One gRPC connection per thread (tritonclient's gRPC client may be shared; one each keeps the
    threads from queueing on one channel)."""

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


def server_stats(conn: Any, model: str) -> dict[str, Any]:
    s = conn.get_inference_statistics(model, str(MODEL_VERSION), as_json=True)["model_stats"][0]
    inf = s["inference_stats"]
    counts = {k: (int(inf[k].get("count", 0)), int(inf[k].get("ns", 0)))
              for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
    batches = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
    return {"counts": counts, "batches": batches}


def stats_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-request server times (µs) and executed batch counts between two snapshots."""
    n = b["counts"]["success"][0] - a["counts"]["success"][0]
    out: dict[str, Any] = {}
    for k in ("queue", "compute_input", "compute_infer", "compute_output"):
        out[f"server_{k}_us"] = (b["counts"][k][1] - a["counts"][k][1]) / max(n, 1) / 1e3 if n else None
    out["batch_stats"] = {bs: c - a["batches"].get(bs, 0) for bs, c in sorted(b["batches"].items())
                          if c - a["batches"].get(bs, 0) > 0}
    return out


@dataclass
class Record:
    t_done: float
    latency_s: float
    sample: int
    out: np.ndarray | None
    executed_batch: int


def run_level(url: str, model: str, names: tuple[str, str], exp: Expectation, concurrency: int,
              opts: LoadOptions, timeout_s: float | None = None) -> dict[str, Any]:
    """One concurrency level, closed loop, measured in windows until stable or capped."""
    timeout_s = timeout_s or opts.timeout_s
    stop = threading.Event()
    lock = threading.Lock()
    records: list[Record] = []
    tally = Tally()
    budget = [opts.max_requests]

    def worker(k: int) -> None:
        client = Client(url, model, *names)
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
                    out, eb = client.infer(exp.x[s:s + 1], timeout_s)
                    rec = Record(time.perf_counter(), time.perf_counter() - t0, s, out[0], int(eb[0, 0]))
                    with lock:
                        tally.ok += 1
                        records.append(rec)
                except Exception as e:  # noqa: BLE001 - every failure is counted by kind
                    with lock:
                        tally.add_error(error_kind(e), str(e))
        finally:
            client.close()

    stats_conn = Client(url, model, *names)
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    windows: list[dict[str, Any]] = []
    settled = False
    snaps = [server_stats(stats_conn.conn, model)]
    try:
        while len(windows) < opts.max_windows:
            w0 = time.perf_counter()
            time.sleep(opts.window_s)
            w1 = time.perf_counter()
            snaps.append(server_stats(stats_conn.conn, model))
            with lock:
                lat = [r.latency_s for r in records if w0 <= r.t_done < w1]
            windows.append({"t0": w0, "t1": w1, "throughput": len(lat) / (w1 - w0),
                            "p50_ms": float(np.median(lat) * 1e3) if lat else float("nan")})
            last = windows[-opts.stable_windows:]
            if len(last) == opts.stable_windows and all(np.isfinite(w["p50_ms"]) for w in last):
                ok = all(abs(w[m] - np.mean([v[m] for v in last])) <= opts.stability * np.mean([v[m] for v in last])
                         for w in last for m in ("throughput", "p50_ms"))
                if ok:
                    settled = True
                    break
            if budget[0] <= 0:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout_s + 5)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    last = windows[-opts.stable_windows:]
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
    row = {"concurrency": concurrency, "windows": len(windows), "stable": settled,
           "throughput_ips": len(measured) / (m1 - m0) if measured else 0.0,
           **{f"p{q}_ms": float(np.percentile(lat_ms, q)) if len(lat_ms) else None for q in (50, 90, 95, 99)},
           **{k: v for k, v in server.items()},
           "mean_executed_batch": (sum(b * c for b, c in server["batch_stats"].items()) /
                                   max(sum(server["batch_stats"].values()), 1)) if server["batch_stats"] else None,
           "client_cpu_cores": cpu / wall, "client_cpu_share": cpu / wall / (os.cpu_count() or 1),
           "sent": tally.sent, "ok": tally.ok, "errors": dict(tally.errors), "error_messages": dict(tally.messages),
           "correctness": correctness(exp, idx, outs), "correctness_by_batch": by_batch}
    stats_conn.close()
    return row


# ------------------------------------------------------------------------------------- faults
def bad_requests(max_batch: int, shape: tuple[int, ...]) -> dict[str, tuple[np.ndarray, str]]:
    """One request of each bad kind: (array, Triton datatype)."""
    c, h, w = shape
    nan = np.zeros((1, c, h, w), np.float32)
    nan[0, 0, 0, 0] = np.nan
    return {"wrong_shape": (np.zeros((1, c + 1, h, w), np.float32), "FP32"),
            "wrong_dtype": (np.zeros((1, c, h, w), np.float64), "FP64"),
            "batch_above_max": (np.zeros((max_batch + 1, c, h, w), np.float32), "FP32"),
            "non_finite": (nan, "FP32")}


def fault_bad_requests(url: str, model: str, names: tuple[str, str], exp: Expectation, max_batch: int,
                       rounds: int = 5, good_threads: int = 4, timeout_s: float = 10.0) -> dict[str, Any]:
    """Bad requests of every kind interleaved with good ones from other threads; each bad one must get
    an error, and each good one its batch-1 output."""
    bad = bad_requests(max_batch, exp.x.shape[1:])
    good, bad_tally = Tally(), {k: Tally() for k in bad}
    recs: list[tuple[int, np.ndarray]] = []
    co_batched: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def good_worker(k: int) -> None:
        client = Client(url, model, *names)
        i = k
        try:
            while not done.is_set() and i < rounds * 40:
                s = i % len(exp.x)
                i += good_threads
                with lock:
                    good.sent += 1
                try:
                    out, _ = client.infer(exp.x[s:s + 1], timeout_s)
                    with lock:
                        good.ok += 1
                        recs.append((s, out[0]))
                except Exception as e:  # noqa: BLE001
                    with lock:
                        good.add_error(error_kind(e), str(e))
                        if "non-finite" in str(e):
                            co_batched.append(str(e))
        finally:
            client.close()

    threads = [threading.Thread(target=good_worker, args=(k,), daemon=True) for k in range(good_threads)]
    for t in threads:
        t.start()
    client = Client(url, model, *names)
    try:
        for _ in range(rounds):
            for kind, (x, dtype) in bad.items():
                bad_tally[kind].sent += 1
                try:
                    client.infer(x, timeout_s, dtype)
                    bad_tally[kind].ok += 1
                except Exception as e:  # noqa: BLE001
                    bad_tally[kind].add_error(error_kind(e), str(e))
                time.sleep(0.01)
    finally:
        client.close()
        done.set()
        for t in threads:
            t.join(timeout_s + 5)
    idx = np.array([s for s, _ in recs], dtype=int)
    outs = np.stack([o for _, o in recs]) if recs else np.zeros((0, exp.alone.shape[1]), np.float32)
    return {"good": {**asdict(good), "correctness": correctness(exp, idx, outs),
                     "failed_beside_a_bad_request": len(co_batched)},
            "bad": {k: asdict(t) for k, t in bad_tally.items()}}


def fault_disconnect(url: str, model: str, names: tuple[str, str], exp: Expectation) -> dict[str, Any]:
    """A client that sends a request and closes its connection before the answer, then the server is
    asked again: still ready, still the batch-1 output."""
    client = Client(url, model, *names)
    inp = client.grpc.InferInput(names[0], [1, *exp.x.shape[1:]], "FP32")
    inp.set_data_from_numpy(exp.x[:1])
    client.conn.async_infer(model, [inp], callback=lambda *a, **k: None, model_version=str(MODEL_VERSION))
    client.close()  # mid-request
    time.sleep(0.2)
    after = Client(url, model, *names)
    try:
        ready = bool(after.conn.is_server_ready())
        out, _ = after.infer(exp.x[:1], 10.0)
        return {"ready_after": ready, "bitwise_after": bool((out.view(np.uint32) == exp.alone[:1].view(np.uint32)).all())}
    finally:
        after.close()


def sequential_outputs(url: str, model: str, names: tuple[str, str], exp: Expectation) -> np.ndarray:
    client = Client(url, model, *names)
    try:
        return np.concatenate([client.infer(exp.x[i:i + 1], 10.0)[0] for i in range(len(exp.x))])
    finally:
        client.close()


# ------------------------------------------------------------------------------ a served export
def _term_with_parent() -> None:
    """In the child before exec: SIGTERM it when the load test's process dies, however it dies, so no
    server outlives the load test that started it (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class ServerProcess:
    """`nfdeploy serve EXPORT` in a child process on free loopback ports (its CPU time is not the
    client's); stopped with SIGTERM, which drains in-flight requests."""

    def __init__(self, export_dir: str | Path, backend: str | None, max_batch: int, max_queue_delay_us: int,
                 extra: Sequence[str] = (), log_file: Path | None = None):
        self.export_dir, self.backend = Path(export_dir), backend
        self.max_batch, self.delay, self.extra = max_batch, max_queue_delay_us, list(extra)
        self.proc: subprocess.Popen | None = None
        self.log_file = log_file

    def start(self, ready_timeout_s: float = 180.0) -> "ServerProcess":
        self.ports = {k: free_port() for k in ("http", "grpc", "metrics")}
        cmd = [sys.executable, "-m", "nfdeploy", "serve", str(self.export_dir), "--max-batch", str(self.max_batch),
               "--max-queue-delay-us", str(self.delay), *[a for k, p in self.ports.items() for a in (f"--{k}-port", str(p))],
               *(["--backend", self.backend] if self.backend else []), *self.extra]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=_term_with_parent if sys.platform == "linux" else None)
        finally:
            if self.log_file:
                out.close()  # the child has its own descriptor
        grpc = require("tritonclient.grpc", "serve")
        conn = grpc.InferenceServerClient(self.url)
        deadline = time.monotonic() + ready_timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServeError(f"`nfdeploy serve` exited with {self.proc.returncode} before it was ready"
                                     + (f" (log: {self.log_file})" if self.log_file else ""))
                try:  # PyTriton loads the model after the server is up: wait for a ready model
                    stats = conn.get_inference_statistics(as_json=True).get("model_stats", [])
                    if stats and conn.is_model_ready(stats[0]["name"], str(MODEL_VERSION)):
                        return self
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                time.sleep(0.3)
        finally:
            conn.close()
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
def model_facts(url: str) -> dict[str, Any]:
    """The served model's name, I/O names, max batch and nfdeploy parameters, as the server states them."""
    grpc = require("tritonclient.grpc", "serve")
    conn = grpc.InferenceServerClient(url)
    try:
        # The repository index needs PyTriton's token; the statistics name the served model too.
        meta = conn.get_server_metadata(as_json=True)
        stats = conn.get_inference_statistics(as_json=True)["model_stats"]
        name = stats[0]["name"]
        cfg = conn.get_model_config(name, str(MODEL_VERSION), as_json=True)["config"]
    finally:
        conn.close()
    params = {k: v.get("string_value") for k, v in cfg.get("parameters", {}).items() if k.startswith("nfdeploy.")}
    out_name = next(o["name"] for o in cfg["output"] if o["name"] != BATCH_OUTPUT)
    return {"model": name, "server_version": meta.get("version"), "input": cfg["input"][0]["name"], "output": out_name,
            "max_batch": int(cfg.get("max_batch_size", 0)), "parameters": params,
            "max_queue_delay_us": int(cfg.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0))}


def loadtest(export_dir: str | Path, out_dir: str | Path, opts: LoadOptions | None = None, *, url: str | None = None,
             serve_backend: str | None = None, max_batch: int = 32, max_queue_delay_us: int = 1000,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load-test a served export: `url` (a running server, loopback) or, without it, a server started
    here from `export_dir` (and restarted once for the restart check). Writes loadtest.json/.md/.png."""
    opts = opts or LoadOptions()
    out_dir = Path(out_dir)
    proc = None
    if url is None:
        proc = ServerProcess(export_dir, serve_backend, max_batch, max_queue_delay_us,
                             log_file=Path(out_dir).parent / f"{Path(out_dir).name}-server.log")
        out_dir.mkdir(parents=True, exist_ok=True)
        log(f"starting nfdeploy serve {export_dir} (log {proc.log_file})")
        proc.start()
        url = proc.url
    elif url.split(":")[0] not in (LOOPBACK, "localhost"):
        raise LoadTestError(f"--url {url}: the load test runs on loopback only (127.0.0.1 or localhost)")
    t_start = time.perf_counter()
    try:
        facts = model_facts(url)
        backend = opts.backend or facts["parameters"].get("nfdeploy.backend")
        if not backend:
            raise LoadTestError(f"the model at {url} does not say which nfdeploy backend it serves: pass --backend")
        if model_name_of(load_export_source(export_dir).manifest) != facts["model"]:
            raise LoadTestError(f"the server at {url} serves {facts['model']}, not the model of {export_dir}")
        log(f"batch-1 outputs of {backend} in this process ({opts.samples} samples) and the float64 reference")
        exp = expectation(export_dir, backend, opts.samples, opts.seed, timed_batches=(1,))
        names = (facts["input"], facts["output"])
        rows = []
        for c in opts.concurrency:
            row = run_level(url, facts["model"], names, exp, int(c), opts)
            rows.append(row)
            log(f"concurrency {c}: {row['throughput_ips']:.1f} inf/s, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                f"bitwise {row['correctness'].get('bitwise_share', float('nan')):.1%}, errors {sum(row['errors'].values())}, "
                f"batches {row['batch_stats']}")
        overload = None
        if opts.overload:
            t = max(rows[0]["p50_ms"] or 1.0, 1.0) * 2 / 1e3  # two batch-1 latencies: far below the queue's drain time
            overload = run_level(url, facts["model"], names, exp, opts.overload,
                                 LoadOptions(**{**asdict(opts), "max_windows": 3}), timeout_s=t)
            overload["client_timeout_s"] = t
            overload["ready_after"] = _ready(url)
            overload["drained_after_s"] = _drain(url, facts["model"], names, exp)
            log(f"overload {opts.overload} at timeout {t * 1e3:.1f} ms: errors {overload['errors']}, ready after: {overload['ready_after']}")
        faults: dict[str, Any] = {}
        if opts.faults:
            faults["bad_requests"] = fault_bad_requests(url, facts["model"], names, exp, facts["max_batch"])
            faults["disconnect"] = fault_disconnect(url, facts["model"], names, exp)
            if proc is not None:
                before = sequential_outputs(url, facts["model"], names, exp)
                code = proc.stop()
                proc.start()
                url = proc.url
                after = sequential_outputs(url, facts["model"], names, exp)
                faults["restart"] = {"first_exit_code": code, "bitwise_identical": bool(
                    (before.view(np.uint32) == after.view(np.uint32)).all()), "samples": len(before)}
            log(f"faults: {faults_summary(faults)}")
        speed = speed_ratios(rows, exp, export_dir, backend)
    finally:
        exit_code = proc.stop() if proc is not None else None
    report = {"format": "nfdeploy-loadtest-v1", "export_dir": str(export_dir), "url": url, "served": facts,
              "backend": backend, "options": asdict(opts), "levels": rows, "overload": overload, "faults": faults,
              "speed": speed, "server_exit_code": exit_code, "cpu_count": os.cpu_count(),
              "wall_seconds": time.perf_counter() - t_start}
    write_report(report, out_dir)
    return report


def _ready(url: str) -> bool:
    grpc = require("tritonclient.grpc", "serve")
    conn = grpc.InferenceServerClient(url)
    try:
        return bool(conn.is_server_ready())
    except Exception:  # noqa: BLE001
        return False
    finally:
        conn.close()


def _drain(url: str, model: str, names: tuple[str, str], exp: Expectation, timeout_s: float = 60.0) -> float:
    """Seconds until a request is answered again: the queue the overload left behind has drained
    (a probe the full queue rejects is sent again, until `timeout_s`)."""
    client = Client(url, model, *names)
    t = time.perf_counter()
    try:
        while True:
            try:
                client.infer(exp.x[:1], timeout_s)
                return time.perf_counter() - t
            except Exception as e:  # noqa: BLE001
                if error_kind(e) != "rejected" or time.perf_counter() - t > timeout_s:
                    raise
                time.sleep(0.01)
    finally:
        client.close()


def speed_ratios(rows: list[dict[str, Any]], exp: Expectation, export_dir: str | Path, backend: str) -> dict[str, Any]:
    """Served throughput at the best concurrency against the in-process backend at the batch size the
    batcher formed there; the serving overhead at concurrency 1 against in-process batch 1."""
    best = max(rows, key=lambda r: r["throughput_ips"])
    formed = max(1, int(round(best["mean_executed_batch"] or 1)))
    if formed not in exp.inprocess_ms:
        source = load_export_source(export_dir)
        b = next(b for b in export_backends(source, compile=False) if b.name == backend)
        with b:
            exp.inprocess_ms[formed] = time_backend(b, exp.x, formed)
    inproc_ips = formed / exp.inprocess_ms[formed] * 1e3
    c1 = next((r for r in rows if r["concurrency"] == 1), None)
    out = {"best_concurrency": best["concurrency"], "batch_formed": formed, "served_ips": best["throughput_ips"],
           "inprocess_ips_at_batch_formed": inproc_ips, "throughput_ratio": best["throughput_ips"] / inproc_ips,
           "inprocess_batch1_ms": exp.inprocess_ms[1]}
    if c1 and c1["p50_ms"] is not None:
        over = c1["p50_ms"] - exp.inprocess_ms[1]
        out.update({"served_c1_p50_ms": c1["p50_ms"], "overhead_c1_us": over * 1e3,
                    "overhead_c1_ratio": over / exp.inprocess_ms[1]})
    return out


def faults_summary(f: dict[str, Any]) -> str:
    parts = []
    if "bad_requests" in f:
        g = f["bad_requests"]["good"]
        bad = f["bad_requests"]["bad"]
        parts.append(f"good {g['ok']}/{g['sent']} answered ({g['correctness'].get('bitwise_share', float('nan')):.0%} bitwise, "
                     f"{g['failed_beside_a_bad_request']} failed beside a bad request); bad refused: "
                     + ", ".join(f"{k} {t['sent'] - t['ok']}/{t['sent']}" for k, t in bad.items()))
    if "disconnect" in f:
        parts.append(f"disconnect: ready after {f['disconnect']['ready_after']}, bitwise {f['disconnect']['bitwise_after']}")
    if "restart" in f:
        parts.append(f"restart: exit {f['restart']['first_exit_code']}, bitwise identical {f['restart']['bitwise_identical']}")
    return "; ".join(parts)


def write_report(rep: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "loadtest.json", rep)
    table = [{"concurrency": r["concurrency"], "inf/s": r["throughput_ips"], "p50 ms": r["p50_ms"], "p90 ms": r["p90_ms"],
              "p95 ms": r["p95_ms"], "p99 ms": r["p99_ms"], "queue µs": r["server_queue_us"],
              "infer µs": r["server_compute_infer_us"], "in+out µs": (r["server_compute_input_us"] or 0) + (r["server_compute_output_us"] or 0),
              "batches": " ".join(f"{b}×{c}" for b, c in r["batch_stats"].items()),
              "bitwise": f"{r['correctness'].get('bitwise_share', float('nan')):.1%}",
              "max ULP": r["correctness"].get("max_ulp"), "top-1 vs fp64": r["correctness"].get("top1_agreement_vs_fp64"),
              "sent": r["sent"], "errors": sum(r["errors"].values()), "client CPU": f"{r['client_cpu_share']:.0%}",
              "stable": "yes" if r["stable"] else f"NO ({r['windows']} windows)"} for r in rep["levels"]]
    s = rep["served"]
    lines = [f"# Load test: {s['model']} served by {rep['backend']}", "",
             f"Triton {s['server_version']}, max batch {s['max_batch']}, queue delay {s['max_queue_delay_us']} µs, "
             f"parity: {s['parameters'].get('nfdeploy.parity')}; {rep['cpu_count']} CPUs shared by client and server "
             "(client CPU = the load generator's share of all cores). Server times are per request, from Triton's "
             "statistics over the measured windows.", "", markdown_table(table),
             "Bitwise = share of responses equal to the same sample run alone at batch 1 in this process. "
             "Every request sent is an answer or a counted error.", ""]
    by_batch = [{"concurrency": r["concurrency"], "executed batch": bs, **c} for r in rep["levels"]
                for bs, c in r["correctness_by_batch"].items()]
    lines += ["## Correctness per executed batch size", "", markdown_table(by_batch)]
    sp = rep["speed"]
    lines += ["## Speed (side by side in this run)", "",
              f"- served {sp['served_ips']:.1f} inf/s at concurrency {sp['best_concurrency']} vs in-process "
              f"{sp['inprocess_ips_at_batch_formed']:.1f} inf/s at the batch the batcher formed ({sp['batch_formed']}): "
              f"ratio {sp['throughput_ratio']:.2f} (goal ≥ 0.85)"]
    if "overhead_c1_us" in sp:
        lines.append(f"- concurrency 1: served p50 {sp['served_c1_p50_ms']:.3f} ms vs in-process batch 1 "
                     f"{sp['inprocess_batch1_ms']:.3f} ms: overhead {sp['overhead_c1_us']:.0f} µs "
                     f"({sp['overhead_c1_ratio']:.0%}; goal ≤ 20% for nf_resnet50)")
    if rep["overload"]:
        o = rep["overload"]
        lines += ["", f"## Overload: concurrency {o['concurrency']}, client timeout {o['client_timeout_s'] * 1e3:.1f} ms", "",
                  f"sent {o['sent']} = ok {o['ok']} + errors {o['errors']}; server ready afterwards: {o['ready_after']}"]
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


__all__ = ["ERROR_KINDS", "Expectation", "LoadOptions", "LoadTestError", "ServerProcess", "Tally", "bad_requests",
           "correctness", "error_kind", "expectation", "fault_bad_requests", "fault_disconnect", "loadtest",
           "model_facts", "run_level", "sequential_outputs", "server_stats", "speed_ratios", "stats_delta",
           "time_backend", "write_report"]
