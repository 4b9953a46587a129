"""The load test's results as data: what a concurrency level, each fault, the speed comparison and the
batch-invariance study measured, each with `to_dict()` (the JSON form: loadtest.json, batch_invariance.json)
and `from_dict()` (reads it back). Nothing here measures or renders.

A fault's `status` is its verdict on the expectation written beside it (`EXPECTED`), in the one status
vocabulary: derived from the figures, so loadtest.json keeps exactly the keys of its format v2 and a v2 file
read back gives the same verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from nfdeploy.artifacts import read_json
from nfdeploy.errors import UserError, one_line
from nfdeploy.status import Status

LOADTEST_FORMAT = "nfdeploy-loadtest-v2"
LOADTEST_JSON = "loadtest.json"
BATCH_INVARIANCE_JSON = "batch_invariance.json"
ERROR_KINDS = ("timeout", "rejected", "refused", "connection", "other")


class LoadTestError(UserError, RuntimeError):
    """A load test that cannot run as asked, or a report that is not a load test's; one line."""


def int_keys(d: Mapping[Any, Any]) -> dict[int, Any]:
    """JSON writes batch sizes as string keys; in memory they are ints."""
    return {int(k): v for k, v in d.items()}


def judged(ok: bool) -> Status:
    return Status.PASS if ok else Status.FAIL


@dataclass
class LoadOptions:
    concurrency: tuple[int, ...] | list[int] = (1, 2, 4, 8, 16)
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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoadOptions:
        return cls(**d)


@dataclass
class Correctness:
    """Responses against the sample alone: share bitwise equal to it (and to batch 1), max ULP against it,
    max rel L2 and top-1 agreement against the float64 unfolded model. Only `responses` when there were none."""

    responses: int
    bitwise_share: float | None = None
    bitwise_share_vs_batch1: float | None = None
    max_ulp: float | None = None
    max_rel_l2_vs_fp64: float | None = None
    top1_agreement_vs_fp64: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Correctness:
        return cls(**d)


@dataclass
class Tally:
    """What one level (or fault phase) sent and got back; sent = ok + sum(errors)."""

    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    messages: dict[str, str] = field(default_factory=dict)  # one example message per kind

    def add_error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        self.messages.setdefault(kind, one_line(message, 4000, with_type=False))

    def balanced(self) -> bool:
        return self.sent == self.ok + sum(self.errors.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "ok": self.ok, "errors": dict(self.errors), "messages": dict(self.messages)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tally:
        return cls(d["sent"], d["ok"], dict(d["errors"]), dict(d.get("messages", {})))


@dataclass
class ServerTimes:
    """Per-request server times (µs) from Triton's cumulative statistics between two snapshots, and how many
    batches of each size the server executed."""

    server_requests: int
    server_success_us: float | None
    server_queue_us: float | None
    server_compute_input_us: float | None
    server_compute_infer_us: float | None
    server_compute_output_us: float | None
    batch_stats: dict[int, int]

    @property
    def mean_executed_batch(self) -> float | None:
        total = sum(self.batch_stats.values())
        return sum(b * c for b, c in self.batch_stats.items()) / total if total else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServerTimes:
        return cls(**{f.name: d[f.name] for f in fields(cls)} | {"batch_stats": int_keys(d["batch_stats"])})


@dataclass
class CostSplit(ServerTimes):
    """Triton's per-request times beside the client's own mean latency: the rest is the client and transport."""

    client_mean_latency_us: float | None = None
    client_and_transport_us: float | None = None


@dataclass
class LevelResult:
    """One concurrency level of the closed-loop sweep, measured over its last (stable) windows."""

    concurrency: int
    windows: int
    stable: bool
    throughput_ips: float
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    server: ServerTimes
    client_cpu_cores: float
    client_cpu_share: float
    tally: Tally
    correctness: Correctness
    correctness_by_batch: dict[int, Correctness]

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("concurrency", "windows", "stable", "throughput_ips")},
            **{k: getattr(self, k) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms")},
            **self.server.to_dict(),
            "mean_executed_batch": self.server.mean_executed_batch,
            "client_cpu_cores": self.client_cpu_cores,
            "client_cpu_share": self.client_cpu_share,
            "sent": self.tally.sent,
            "ok": self.tally.ok,
            "errors": dict(self.tally.errors),
            "error_messages": dict(self.tally.messages),
            "correctness": self.correctness.to_dict(),
            "correctness_by_batch": {b: c.to_dict() for b, c in self.correctness_by_batch.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LevelResult:
        return cls(
            **{k: d[k] for k in ("concurrency", "windows", "stable", "throughput_ips")},
            **{k: d[k] for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms")},
            server=ServerTimes.from_dict(d),
            client_cpu_cores=d["client_cpu_cores"],
            client_cpu_share=d["client_cpu_share"],
            tally=Tally(d["sent"], d["ok"], dict(d["errors"]), dict(d["error_messages"])),
            correctness=Correctness.from_dict(d["correctness"]),
            correctness_by_batch={b: Correctness.from_dict(c) for b, c in int_keys(d["correctness_by_batch"]).items()},
        )


# ------------------------------------------------------------------------------------- faults
@dataclass
class GoodAndBadResult:
    """Good clients beside clients sending bad requests (NaN images, or every bad kind in turn)."""

    EXPECTED: ClassVar[str] = (
        "every good request answered (or refused for room in the queue), none failed for a bad batch-mate; "
        "no bad request answered"
    )

    good: Tally
    good_correctness: Correctness
    executed_batches: list[int]  # the batch sizes the good answers were executed in
    bad: dict[str, Tally]  # per bad kind
    good_clients: int
    bad_clients: int

    @property
    def status(self) -> Status:
        if not any(t.sent for t in self.bad.values()):
            return Status.UNCHECKED
        good_ok = self.good.ok > 0 and all(n == 0 for k, n in self.good.errors.items() if k != "refused")
        return judged(good_ok and all(t.ok == 0 for t in self.bad.values()))

    def to_dict(self) -> dict[str, Any]:
        good = {**self.good.to_dict(), "correctness": self.good_correctness.to_dict()}
        return {
            "good": {**good, "executed_batches": list(self.executed_batches)},
            "bad": {k: t.to_dict() for k, t in self.bad.items()},
            "good_clients": self.good_clients,
            "bad_clients": self.bad_clients,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GoodAndBadResult:
        g = d["good"]
        return cls(
            Tally.from_dict(g),
            Correctness.from_dict(g["correctness"]),
            list(g["executed_batches"]),
            {k: Tally.from_dict(t) for k, t in d["bad"].items()},
            d["good_clients"],
            d["bad_clients"],
        )


@dataclass
class BurstResult:
    """`clients` threads started together, each sending `requests_each` requests back to back."""

    EXPECTED: ClassVar[str] = "sent = answered + refused at once (no timeout, no other error)"

    clients: int
    requests_each: int
    tally: Tally
    wall_s: float
    correctness: Correctness

    @property
    def answered(self) -> int:
        return self.tally.ok

    @property
    def refused(self) -> int:
        return self.tally.errors["refused"]

    @property
    def status(self) -> Status:
        return judged(self.tally.sent > 0 and self.tally.sent == self.answered + self.refused)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "requests_each": self.requests_each,
            **self.tally.to_dict(),
            "balanced": self.tally.balanced(),
            "answered": self.answered,
            "refused": self.refused,
            "wall_s": self.wall_s,
            "correctness": self.correctness.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BurstResult:
        fixed = (d["clients"], d["requests_each"], Tally.from_dict(d), d["wall_s"])
        return cls(*fixed, Correctness.from_dict(d["correctness"]))


@dataclass
class OverloadResult(BurstResult):
    """A burst beyond the server's queue; then whether the server is still ready (None: a server not started
    here, whose readiness URL the load test does not know)."""

    EXPECTED: ClassVar[str] = "sent = answered + refused at once (no timeout, no other error); ready afterwards"

    ready_after: bool | None = None

    @property
    def status(self) -> Status:
        return judged(super().status is Status.PASS and self.ready_after is not False)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ready_after": self.ready_after}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OverloadResult:
        burst = BurstResult.from_dict(d)
        return cls(**{f.name: getattr(burst, f.name) for f in fields(BurstResult)}, ready_after=d["ready_after"])


@dataclass
class DisconnectResult:
    """A client closed its connection mid-request; then the server was asked again."""

    EXPECTED: ClassVar[str] = "still ready, and the next answer bitwise the sample's output alone"

    ready_after: bool
    bitwise_after: bool

    @property
    def status(self) -> Status:
        return judged(self.ready_after and self.bitwise_after)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DisconnectResult:
        return cls(**d)


@dataclass
class RestartResult:
    """The server stopped with SIGTERM and started again; every sample asked before and after."""

    EXPECTED: ClassVar[str] = "a clean stop (exit 0), and every answer after bitwise the one before"

    first_exit_code: int | None
    samples: int
    bitwise_identical: bool
    ready_polls_before_200: int

    @property
    def status(self) -> Status:
        return judged(self.first_exit_code == 0 and self.bitwise_identical)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RestartResult:
        return cls(**d)


FAULT_KINDS: dict[str, type] = {
    "nan_flood": GoodAndBadResult,
    "bad_requests": GoodAndBadResult,
    "disconnect": DisconnectResult,
    "burst": BurstResult,
    "restart": RestartResult,
}


@dataclass
class FaultResults:
    """The faults that ran (None: not run), in the order they run."""

    nan_flood: GoodAndBadResult | None = None
    bad_requests: GoodAndBadResult | None = None
    disconnect: DisconnectResult | None = None
    burst: BurstResult | None = None
    restart: RestartResult | None = None

    def ran(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FAULT_KINDS if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in self.ran().items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FaultResults:
        return cls(**{k: FAULT_KINDS[k].from_dict(v) for k, v in (d or {}).items()})


# ------------------------------------------------------------------------------------- speed
@dataclass
class SpeedComparison:
    """The served model at `concurrency` against the same backend in this process at `inprocess_batch`, in
    interleaved rounds: per-request times, their per-round difference and ratio (nfdeploy.perf.rounds' summaries,
    with 95% intervals), and the server's per-request cost split."""

    concurrency: int
    inprocess_batch: int
    served_ms_per_request: float
    served_ci95: list[float]
    inprocess_ms_per_sample: float
    inprocess_ci95: list[float]
    difference_ms: dict[str, Any]
    served_over_inprocess: dict[str, Any]
    throughput_ratio: float
    throughput_ratio_ci95: list[float]
    rounds: int
    settled: bool
    stopped_by: str
    cost_split: CostSplit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpeedComparison:
        return cls(**{**d, "cost_split": CostSplit.from_dict(d["cost_split"])})


@dataclass
class SpeedResults:
    """Concurrency 1, and the busiest level of the sweep when it is above 1."""

    c1: SpeedComparison
    busiest: SpeedComparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"c1": self.c1.to_dict(), **({"busiest": self.busiest.to_dict()} if self.busiest else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpeedResults:
        busiest = SpeedComparison.from_dict(d["busiest"]) if "busiest" in d else None
        return cls(SpeedComparison.from_dict(d["c1"]), busiest)


# ----------------------------------------------------------------------------------- the test
@dataclass
class ModelFacts:
    """The served model as the server states it: name, I/O names, max batch, queue, nfdeploy parameters."""

    model: str
    server_version: str | None
    input: str
    output: str
    max_batch: int
    parameters: dict[str, str | None]
    max_queue_delay_us: int
    max_queue_size: int

    @property
    def pad_to(self) -> int:
        return int(self.parameters.get("nfdeploy.pad_to") or 0)

    @property
    def threads(self) -> int | None:
        return int(self.parameters["nfdeploy.threads"]) if self.parameters.get("nfdeploy.threads") else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelFacts:
        return cls(**d)


@dataclass
class LoadTestResult:
    """Everything one load test measured (loadtest.json is its `to_dict()`)."""

    export_dir: str
    url: str
    served: ModelFacts
    backend: str
    options: LoadOptions
    levels: list[LevelResult]
    overload: OverloadResult | None
    faults: FaultResults
    speed: SpeedResults | None
    server_exit_code: int | None
    cpu_count: int | None
    wall_seconds: float

    def verdicts(self) -> list[tuple[str, Status, str]]:
        """(fault, status, what was expected) for the overload and every fault that ran."""
        ran = {**({"overload": self.overload} if self.overload else {}), **self.faults.ran()}
        return [(k, v.status, v.EXPECTED) for k, v in ran.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LOADTEST_FORMAT,
            "export_dir": self.export_dir,
            "url": self.url,
            "served": self.served.to_dict(),
            "backend": self.backend,
            "options": asdict(self.options),
            "levels": [r.to_dict() for r in self.levels],
            "overload": self.overload.to_dict() if self.overload else None,
            "faults": self.faults.to_dict(),
            "speed": self.speed.to_dict() if self.speed else None,
            "server_exit_code": self.server_exit_code,
            "cpu_count": self.cpu_count,
            "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoadTestResult:
        if d.get("format") != LOADTEST_FORMAT:
            raise LoadTestError(f"not a load test report of format {LOADTEST_FORMAT} (format: {d.get('format')!r})")
        return cls(
            export_dir=d["export_dir"],
            url=d["url"],
            served=ModelFacts.from_dict(d["served"]),
            backend=d["backend"],
            options=LoadOptions.from_dict(d["options"]),
            levels=[LevelResult.from_dict(r) for r in d["levels"]],
            overload=OverloadResult.from_dict(d["overload"]) if d.get("overload") else None,
            faults=FaultResults.from_dict(d.get("faults")),
            speed=SpeedResults.from_dict(d["speed"]) if d.get("speed") else None,
            server_exit_code=d["server_exit_code"],
            cpu_count=d["cpu_count"],
            wall_seconds=d["wall_seconds"],
        )


def read_loadtest(path: str | Path) -> LoadTestResult:
    """A saved load test (loadtest.json, or the dir holding it); a file that is not one is a one-line error."""
    path = Path(path)
    path = path / LOADTEST_JSON if path.is_dir() else path
    d = read_json(path, "load test report")
    try:
        return LoadTestResult.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise LoadTestError(f"{path}: not a load test report ({one_line(e, 200)})") from None
    except LoadTestError as e:
        raise LoadTestError(f"{path}: {e}") from None


# ------------------------------------------------------------------------ batch-invariant mode
@dataclass
class InvarianceMode:
    """One server (the mode off or on) under a load at the study's concurrency."""

    pad_to: int
    batch_invariance: str | None  # what the model's parameters say
    responses: int
    errors: int
    executed_batches: dict[int, int]
    throughput_ips_alone: float
    bitwise_vs_batch1: float
    bitwise_vs_alone_as_served: float
    max_ulp_vs_alone_as_served: float
    batch1_equals_padded_alone: float
    correctness_by_batch: dict[int, Correctness]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "correctness_by_batch": {b: c.to_dict() for b, c in self.correctness_by_batch.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InvarianceMode:
        by_batch = {b: Correctness.from_dict(c) for b, c in int_keys(d["correctness_by_batch"]).items()}
        return cls(**{**d, "executed_batches": int_keys(d["executed_batches"]), "correctness_by_batch": by_batch})


@dataclass
class ServedThroughput:
    """Two or more served models at one concurrency in interleaved rounds: ms per request each, and the ratio of
    the first to each other one (nfdeploy.perf.rounds' ratio summaries)."""

    concurrency: int
    ms_per_request: dict[str, float]
    ratios: dict[str, dict[str, Any]]
    rounds: int
    settled: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServedThroughput:
        return cls(**d)


@dataclass
class BatchInvarianceStudy:
    """A backend served without and with --batch-invariant: responses against the sample alone, and the cost."""

    backend: str
    max_batch: int
    concurrency: int
    samples: int
    modes: dict[str, InvarianceMode]  # "off", "on"
    throughput: ServedThroughput

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "modes": {m: v.to_dict() for m, v in self.modes.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchInvarianceStudy:
        modes = {m: InvarianceMode.from_dict(v) for m, v in d["modes"].items()}
        return cls(**{**d, "modes": modes, "throughput": ServedThroughput.from_dict(d["throughput"])})


__all__ = [
    "BATCH_INVARIANCE_JSON",
    "ERROR_KINDS",
    "FAULT_KINDS",
    "LOADTEST_FORMAT",
    "LOADTEST_JSON",
    "BatchInvarianceStudy",
    "BurstResult",
    "Correctness",
    "CostSplit",
    "DisconnectResult",
    "FaultResults",
    "GoodAndBadResult",
    "InvarianceMode",
    "LevelResult",
    "LoadOptions",
    "LoadTestError",
    "LoadTestResult",
    "ModelFacts",
    "OverloadResult",
    "RestartResult",
    "ServedThroughput",
    "ServerTimes",
    "SpeedComparison",
    "SpeedResults",
    "Tally",
    "int_keys",
    "read_loadtest",
]
