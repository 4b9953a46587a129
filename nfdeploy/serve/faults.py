"""The load test's faults, each measured into its result: a NaN flood beside good clients, bad requests of every
kind, a burst of many clients (or an overload beyond the queue), a disconnect mid-request and a restart. Every
loop is bounded in requests and time; every thread is joined and every connection closed before a fault returns."""

from __future__ import annotations

import threading
import time

import numpy as np

from nfdeploy.serve.client import Target, infer_counted, threads_of
from nfdeploy.serve.expectation import Expectation, answers_correctness
from nfdeploy.serve.loadtest_result import (
    BurstResult,
    DisconnectResult,
    FaultResults,
    GoodAndBadResult,
    LoadOptions,
    ModelFacts,
    RestartResult,
    Tally,
)
from nfdeploy.serve.repository import MODEL_VERSION
from nfdeploy.serve.server import ServeProcess


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
) -> GoodAndBadResult:
    """`good_clients` each send `requests_each` good requests while `bad_clients` send the bad ones in turn,
    without pause, until the good ones are done. Every good request must get its own answer."""
    good, bad_tally = Tally(), {k: Tally() for k in bad}
    answers: list[tuple[int, np.ndarray, int]] = []  # (sample, output row, executed batch)
    lock, done = threading.Lock(), threading.Event()

    def good_worker(k: int) -> None:
        client = target.client()
        try:
            for j in range(requests_each):
                s = (k + j * good_clients) % len(exp.x)
                got = infer_counted(client, good, lock, exp.x[s : s + 1], timeout_s)
                if got is not None:
                    with lock:
                        answers.append((s, got.out[0], got.executed_batch))
        finally:
            client.close()

    def bad_worker(k: int) -> None:
        client, kinds, i = target.client(), list(bad), k
        try:
            while not done.is_set():  # until the good clients are done (they are bounded in count and time)
                kind = kinds[i % len(kinds)]
                i += 1
                x, dtype = bad[kind]
                infer_counted(client, bad_tally[kind], lock, x, timeout_s, dtype)
        finally:
            client.close()

    bads, goods = threads_of(bad_worker, bad_clients), threads_of(good_worker, good_clients)
    for t in bads + goods:
        t.start()
    for t in goods:
        t.join(timeout_s * requests_each + 10)
    done.set()
    for t in bads:
        t.join(timeout_s + 5)
    return GoodAndBadResult(
        good=good,
        good_correctness=answers_correctness(exp, [(s, o) for s, o, _ in answers]),
        executed_batches=sorted({b for _, _, b in answers}),
        bad=bad_tally,
        good_clients=good_clients,
        bad_clients=bad_clients,
    )


def nan_flood(
    target: Target, exp: Expectation, *, good_clients: int = 8, requests_each: int = 24, timeout_s: float = 10.0
) -> GoodAndBadResult:
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
) -> BurstResult:
    """`clients` threads start together and each sends `requests_each` requests back to back: sent =
    answered + refused (+ any other error, counted by kind); every answer checked against the sample alone."""
    tally, lock = Tally(), threading.Lock()
    answers: list[tuple[int, np.ndarray]] = []
    conns = [target.client() for _ in range(clients)]  # connected before the start, so the burst is the requests
    start = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        start.wait()
        for j in range(requests_each):
            s = (k + j * clients) % len(exp.x)
            got = infer_counted(conns[k], tally, lock, exp.x[s : s + 1], timeout_s)
            if got is not None:
                with lock:
                    answers.append((s, got.out[0]))

    threads = threads_of(worker, clients)
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout_s * requests_each + 10)
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    return BurstResult(clients, requests_each, tally, wall, answers_correctness(exp, answers))


def fault_disconnect(target: Target, exp: Expectation) -> DisconnectResult:
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
        return DisconnectResult(ready, bool((out.view(np.uint32) == exp.alone[:1].view(np.uint32)).all()))
    finally:
        after.close()


def sequential_outputs(target: Target, exp: Expectation) -> np.ndarray:
    client = target.client()
    try:
        return np.concatenate([client.infer(exp.x[i : i + 1], 10.0)[0] for i in range(len(exp.x))])
    finally:
        client.close()


def fault_restart(target: Target, exp: Expectation, proc: ServeProcess) -> RestartResult:
    """Every sample asked, the server stopped with SIGTERM and started again (new ports), every sample asked again."""
    before = sequential_outputs(target, exp)
    code = proc.stop()
    proc.start()
    after = sequential_outputs(Target(proc.url, target.model, target.names), exp)
    return RestartResult(
        first_exit_code=code,
        samples=len(before),
        bitwise_identical=bool((before.view(np.uint32) == after.view(np.uint32)).all()),
        ready_polls_before_200=sum(1 for _, s in proc.ready_polls if s != 200),
    )


def run_faults(
    target: Target, exp: Expectation, facts: ModelFacts, opts: LoadOptions, proc: ServeProcess | None
) -> FaultResults:
    """The NaN flood, the bad kinds, a disconnect, the burst (unless opts.burst_clients is 0) and, with a server
    started here, the restart."""
    faults = FaultResults(
        nan_flood=nan_flood(target, exp, timeout_s=opts.timeout_s),
        bad_requests=good_and_bad(
            target,
            exp,
            bad_requests(facts.max_batch, exp.x.shape[1:]),
            good_clients=4,
            requests_each=24,
            bad_clients=1,
            timeout_s=opts.timeout_s,
        ),
        disconnect=fault_disconnect(target, exp),
    )
    if opts.burst_clients:
        faults.burst = burst(
            target, exp, clients=opts.burst_clients, requests_each=opts.burst_requests, timeout_s=opts.timeout_s
        )
    if proc is not None:
        faults.restart = fault_restart(target, exp, proc)
    return faults


__all__ = [
    "bad_requests",
    "burst",
    "fault_disconnect",
    "fault_restart",
    "good_and_bad",
    "nan_flood",
    "run_faults",
    "sequential_outputs",
]
