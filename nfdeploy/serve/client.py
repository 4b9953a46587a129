"""The load test's side of the wire: a gRPC client per thread (tritonclient), the served model as the load test
talks to it, what the server states about it, its cumulative statistics, and what an error is."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nfdeploy.errors import require
from nfdeploy.serve.loadtest_result import LoadTestError, ModelFacts, ServerTimes, Tally
from nfdeploy.serve.python_model import BATCH_OUTPUT
from nfdeploy.serve.repository import MODEL_VERSION

STAT_KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


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

    @classmethod
    def of(cls, url: str, facts: ModelFacts) -> Target:
        return cls(url, facts.model, (facts.input, facts.output))


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


@dataclass
class Answer:
    out: np.ndarray  # the request's output rows
    executed_batch: int  # the request rows the server ran together with this one's (0: a model without that output)
    t_done: float  # time.perf_counter() when it arrived


def infer_counted(
    client: Client, tally: Tally, lock: threading.Lock, x: np.ndarray, timeout_s: float, dtype: str = "FP32"
) -> Answer | None:
    """One request counted in `tally` (sent, then answered or its error by kind): its answer, or None."""
    with lock:
        tally.sent += 1
    try:
        out, executed = client.infer(x, timeout_s, dtype)
    except Exception as e:  # noqa: BLE001 - every failure is counted by kind
        with lock:
            tally.add_error(error_kind(e), str(e))
        return None
    answer = Answer(out, int(executed[0, 0]) if executed is not None else 0, time.perf_counter())
    with lock:
        tally.ok += 1
    return answer


def threads_of(work: Callable[[int], None], n: int) -> list[threading.Thread]:
    """`n` daemon threads running work(k), k = 0..n-1 (not started)."""
    return [threading.Thread(target=work, args=(k,), daemon=True) for k in range(n)]


def server_stats(conn: Any, model: str) -> dict[str, Any]:
    """A snapshot of Triton's cumulative statistics of the model: (count, ns) per kind, count per batch size."""
    s = conn.get_inference_statistics(model, str(MODEL_VERSION), as_json=True)["model_stats"][0]
    inf = s["inference_stats"]
    counts = {k: (int(inf[k].get("count", 0)), int(inf[k].get("ns", 0))) for k in STAT_KINDS}
    batches = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in s.get("batch_stats", [])}
    return {"counts": counts, "batches": batches}


def stats_delta(a: dict[str, Any], b: dict[str, Any]) -> ServerTimes:
    """Per-request server times (µs) and executed batch counts between two snapshots."""
    n = b["counts"]["success"][0] - a["counts"]["success"][0]
    per_request = {
        f"server_{k}_us": (b["counts"][k][1] - a["counts"][k][1]) / n / 1e3 if n else None
        for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")
    }
    batches = {bs: c - a["batches"].get(bs, 0) for bs, c in sorted(b["batches"].items())}
    return ServerTimes(server_requests=n, **per_request, batch_stats={bs: c for bs, c in batches.items() if c > 0})


def model_facts(url: str, model: str | None = None) -> ModelFacts:
    """The served model's name, I/O names, max batch, queue and nfdeploy parameters, as the server states them
    (its repository index names the models)."""
    grpc = require("tritonclient.grpc", "serve")
    conn = grpc.InferenceServerClient(url)
    try:
        meta = conn.get_server_metadata(as_json=True)
        index = conn.get_model_repository_index(as_json=True).get("models", [])
        ready = [m["name"] for m in index if m.get("state") == "READY"]
        if model is None and len(ready) != 1:
            raise LoadTestError(f"the server at {url} serves {len(ready)} models ({', '.join(ready)}): name one")
        name = model or ready[0]
        cfg = conn.get_model_config(name, str(MODEL_VERSION), as_json=True)["config"]
    finally:
        conn.close()
    params = {k: v.get("string_value") for k, v in cfg.get("parameters", {}).items() if k.startswith("nfdeploy.")}
    batching = cfg.get("dynamic_batching", {})
    return ModelFacts(
        model=name,
        server_version=meta.get("version"),
        input=cfg["input"][0]["name"],
        output=next(o["name"] for o in cfg["output"] if o["name"] != BATCH_OUTPUT),
        max_batch=int(cfg.get("max_batch_size", 0)),
        parameters=params,
        max_queue_delay_us=int(batching.get("max_queue_delay_microseconds", 0)),
        max_queue_size=int(batching.get("default_queue_policy", {}).get("max_queue_size", 0)),
    )


__all__ = [
    "STAT_KINDS",
    "Answer",
    "Client",
    "Target",
    "error_kind",
    "infer_counted",
    "model_facts",
    "server_stats",
    "stats_delta",
    "threads_of",
]
