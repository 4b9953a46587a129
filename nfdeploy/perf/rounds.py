"""Interleaved rounds, stability windows, and ratios with bootstrap intervals.

Everything that is compared in a ratio is timed in alternating rounds: each round runs every member
for a fixed number of iterations (fixed per member after warm-up), so a slow phase of a shared
machine hits all members alike instead of whichever happened to be timed then. The start of each
round rotates (A B C, B C A, C A B, ...) so no member always follows the same one. While a group is
timed, all its members are active at once (for the comparison groups: three small models in memory
together); their memory is measured one by one at activation (see timing.py).

A member's latency is the median of its per-round medians; a ratio A/B is the median of the per-round
ratios (A's round median / B's round median of the same round); both come with a 95% percentile
bootstrap interval over rounds (BOOTSTRAP_SAMPLES resamples, fixed seed: the same data give the same
interval). Timing goes on until the medians of the last WINDOWS windows of WINDOW_ROUNDS rounds agree
within +-band (STABILITY_BAND) for every member and every ratio, or a time cap passes; a quantity whose
windows did not agree is "noisy", reported with its coefficient of variation over rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# +-3% (the band issue 10 names): tight enough for the ratios this project reports (folded vs unfolded
# differ by tens of percent), loose enough that a quiet 2-core machine settles in a few seconds.
STABILITY_BAND = 0.03
WINDOW_ROUNDS = 4  # rounds per stability window
WINDOWS = 3  # windows that must agree
BOOTSTRAP_SAMPLES = 2000
# A cell stops at its time cap only after this many rounds: fewer give no median and interval worth reporting.
MIN_ROUNDS_BEFORE_CAP = 5
CI_LEVEL = 0.95

Timer = Callable[[], tuple[float, float | None]]  # one timed call -> (host_ms, device_ms or None)


@dataclass(frozen=True)
class RoundPlan:
    """warmup_s and min_time_s are per member; max_time_s caps the timed phase of the whole group
    (None: 5 x min_time_s per member, at least 2 s). The iterations of a member in one round are fixed
    after warm-up so that a round takes about min_time_s / min_rounds per member, and all rounds
    together give at least min_iters iterations."""

    warmup_s: float = 1.0
    min_time_s: float = 2.0
    min_iters: int = 10
    max_time_s: float | None = None
    max_iters: int = 100_000
    band: float = STABILITY_BAND
    window_rounds: int = WINDOW_ROUNDS
    windows: int = WINDOWS
    min_warmup_calls: int = 1

    @property
    def min_rounds(self) -> int:
        return self.window_rounds * self.windows

    def cap_s(self, members: int) -> float:
        return self.max_time_s if self.max_time_s is not None else max(5.0 * self.min_time_s * members, 2.0)


# ------------------------------------------------------------------------------------- statistics


def window_medians(values: Sequence[float], window_rounds: int, windows: int) -> list[float]:
    """Medians of the last `windows` consecutive windows of `window_rounds` values (oldest first);
    [] when there are fewer than window_rounds * windows values."""
    n = window_rounds * windows
    if len(values) < n:
        return []
    tail = np.asarray(values[-n:], dtype=np.float64)
    return [float(np.median(tail[i * window_rounds : (i + 1) * window_rounds])) for i in range(windows)]


def is_settled(
    values: Sequence[float], band: float = STABILITY_BAND, window_rounds: int = WINDOW_ROUNDS, windows: int = WINDOWS
) -> bool:
    """True when the medians of the last `windows` windows all lie within +-band of their own median."""
    meds = window_medians(values, window_rounds, windows)
    if not meds:
        return False
    center = float(np.median(meds))
    return center > 0 and all(abs(m / center - 1.0) <= band for m in meds)


def cv(values: Sequence[float]) -> float | None:
    """Coefficient of variation (sample standard deviation / mean); None for fewer than two values."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 2 or a.mean() == 0:
        return None
    return float(a.std(ddof=1) / a.mean())


def bootstrap_ci(
    values: Sequence[float], level: float = CI_LEVEL, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of `values` (scipy.stats.bootstrap, fixed seed: the same
    data give the same interval)."""
    from scipy.stats import bootstrap

    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("bootstrap of no values")
    if a.size == 1 or np.all(a == a[0]):  # no spread: the interval is the value (scipy warns on degenerate data)
        return float(a[0]), float(a[0])
    res = bootstrap(
        (a,),
        np.median,
        confidence_level=level,
        n_resamples=samples,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
        axis=-1,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values: Sequence[float], plan: RoundPlan | None = None) -> dict[str, Any]:
    """Median, bootstrap interval, CV and stability of per-round values (latencies or ratios)."""
    plan = plan or RoundPlan()
    a = [float(v) for v in values]
    settled = is_settled(a, plan.band, plan.window_rounds, plan.windows)
    c = cv(a)
    return {
        "median": float(np.median(a)),
        "ci95": list(bootstrap_ci(a)),
        "rounds": len(a),
        "cv": c,
        "window_medians": window_medians(a, plan.window_rounds, plan.windows),
        "settled": settled,
        "noisy": not settled,
    }


def ratio_summary(
    a_rounds: Sequence[float], b_rounds: Sequence[float], plan: RoundPlan | None = None
) -> dict[str, Any]:
    """A/B from paired rounds: the median of the per-round ratios, its bootstrap interval, CV, stability."""
    if len(a_rounds) != len(b_rounds) or not a_rounds:
        raise ValueError(f"ratio needs paired rounds, got {len(a_rounds)} and {len(b_rounds)}")
    ratios = np.asarray(a_rounds, dtype=np.float64) / np.asarray(b_rounds, dtype=np.float64)
    out = summarize(ratios.tolist(), plan)
    out["ratio"] = out.pop("median")
    return out


def stats(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {
        "min": float(a.min()),
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def describe_ratio(r: Mapping[str, Any]) -> str:
    """A ratio_summary on one line: '1.002 [0.998, 1.024] over 13 rounds' (+ ' NOISY (cv 12.0%)')."""
    return f"{r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] over {r['rounds']} rounds" + (
        f" NOISY (cv {100 * (r['cv'] or 0):.1f}%)" if r["noisy"] else ""
    )


def ratio_table_rows(ratios: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """{name: ratio_summary} as rows of a report table: ratio, median, 95% interval, rounds, noisy."""
    return [
        {
            "ratio": k,
            "median": v["ratio"],
            "95% interval": f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]",
            "rounds": v["rounds"],
            "noisy": "NOISY" if v["noisy"] else "",
        }
        for k, v in ratios.items()
    ]


# ------------------------------------------------------------------------------------------ rounds


def warm_up(timers: Mapping[str, Timer], plan: RoundPlan, budget_end: float | None = None) -> dict[str, dict[str, Any]]:
    """Interleaved warm-up: every member until it has had warmup_s and min_warmup_calls (or the budget ends).
    Returns {name: {"s": wall seconds, "calls": n, "last_ms": wall ms of the last (up to 5) calls}}."""
    warm = {n: {"s": 0.0, "calls": 0, "last_ms": []} for n in timers}

    def pending(n: str) -> bool:
        return warm[n]["s"] < plan.warmup_s or warm[n]["calls"] < plan.min_warmup_calls

    while any(pending(n) for n in timers):
        for n in timers:
            if not pending(n):
                continue
            t0 = time.perf_counter()
            timers[n]()
            wall = time.perf_counter() - t0
            warm[n]["s"] += wall
            warm[n]["calls"] += 1
            warm[n]["last_ms"] = (warm[n]["last_ms"] + [wall * 1e3])[-5:]
        if budget_end is not None and time.perf_counter() > budget_end:
            break
    return warm


def round_iterations(wall_ms: Mapping[str, Sequence[float]], plan: RoundPlan) -> dict[str, int]:
    """Iterations per round: about min_time_s / min_rounds per member, and min_iters over the minimum rounds; but
    never so many that the MIN_ROUNDS_BEFORE_CAP rounds the cap waits for would outlast the cap (the cap
    wins over min_iters), nor more than max_iters allows. Sized from WALL time per call (`wall_ms`: what a
    round costs), not from the reported timing: device time can be far below the host's cost of a call."""
    members = len(wall_ms)
    round_s = plan.min_time_s / plan.min_rounds
    cap = plan.cap_s(members)
    iters = {}
    for n, last in wall_ms.items():
        est_ms = max(float(np.median(last)), 1e-6) if len(last) else 1e-6
        # min_iters over the MIN_ROUNDS_BEFORE_CAP rounds a capped cell may stop after, not only over min_rounds
        want = max(math.ceil(round_s * 1e3 / est_ms), math.ceil(plan.min_iters / MIN_ROUNDS_BEFORE_CAP), 1)
        fit = max(math.floor(cap * 1e3 / (MIN_ROUNDS_BEFORE_CAP * members * est_ms)), 1)
        iters[n] = int(min(want, fit, max(plan.max_iters // members, 1), 10_000))
    return iters


def interleaved_rounds(
    timers: Mapping[str, Timer],
    plan: RoundPlan,
    *,
    ratios: Sequence[tuple[str, str]] = (),
    primary: str = "host_ms",
    budget_end: float | None = None,
) -> dict[str, Any]:
    """Time every member of `timers` in alternating rounds until stable (see the module docstring).

    `ratios`: (A, B) member pairs whose per-round ratio must settle too. `primary`: "host_ms" or
    "device_ms" (the value of each call that the rounds, latencies and ratios use). `budget_end`: a
    perf_counter() time after which no new round starts (whatever the stability).
    Returns {"members": {name: {...}}, "ratios": {"A/B": {...}}, "rounds", "settled", "stopped_by",
    "warmup_s", "timed_s"}."""
    names = list(timers)
    if not names:
        raise ValueError("no members to time")
    pick = 1 if primary == "device_ms" else 0
    t_w0 = time.perf_counter()
    warm = warm_up(timers, plan, budget_end)
    warmup_s = time.perf_counter() - t_w0
    iters = round_iterations({n: warm[n]["last_ms"] for n in names}, plan)
    cap = plan.cap_s(len(names))

    host: dict[str, list[float]] = {n: [] for n in names}
    dev: dict[str, list[float]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}
    timed = {n: 0.0 for n in names}
    t0_all = time.perf_counter()
    r = 0
    while True:
        for n in names[r % len(names) :] + names[: r % len(names)]:  # rotating start
            vals = []
            t_round = time.perf_counter()
            for _ in range(iters[n]):
                h, d = timers[n]()
                host[n].append(h)
                if d is not None:
                    dev[n].append(d)
                vals.append(d if pick and d is not None else h)
            timed[n] += time.perf_counter() - t_round  # wall time: min_time_s is time spent, whatever is reported
            round_medians[n].append(float(np.median(vals)))
        r += 1
        stopped_by = _stop_reason(
            plan,
            r,
            round_medians,
            ratios,
            timed,
            time.perf_counter() - t0_all,
            cap,
            budget_end,
            sum(len(v) for v in host.values()),
        )
        if stopped_by:
            break
    timed_s = time.perf_counter() - t0_all

    members = {
        n: member_summary(round_medians[n], plan, host[n], dev[n], warm[n], rounds=r, iters=iters[n], timed_s=timed[n])
        for n in names
    }
    ratio_out = {f"{a}/{b}": ratio_summary(round_medians[a], round_medians[b], plan) for a, b in ratios}
    return {
        "members": members,
        "ratios": ratio_out,
        "rounds": r,
        "order": "rotating (A B C, B C A, ...)",
        "settled": stopped_by == "settled",
        "stopped_by": stopped_by,
        "warmup_s": warmup_s,
        "timed_s": timed_s,
        "cap_s": cap,
        "band": plan.band,
        "window_rounds": plan.window_rounds,
        "windows": plan.windows,
    }


def member_summary(
    round_medians: Sequence[float],
    plan: RoundPlan,
    host: Sequence[float],
    dev: Sequence[float],
    warm: Mapping[str, Any],
    *,
    rounds: int,
    iters: int,
    timed_s: float,
) -> dict[str, Any]:
    """One member's figures after its rounds: median of round medians with its interval, stability, the
    rounds and calls it took, and the statistics of every timed call (host, and device where measured)."""
    s = summarize(round_medians, plan)
    return {
        "median_ms": s["median"],
        "median_ci95_ms": s["ci95"],
        "cv": s["cv"],
        "settled": s["settled"],
        "noisy": s["noisy"],
        "window_medians_ms": s["window_medians"],
        "round_medians_ms": list(round_medians),
        "rounds": rounds,
        "round_iters": iters,
        "iterations": len(host),
        "warmup_iterations": warm["calls"],
        "warmup_s": warm["s"],
        "timed_s": timed_s,
        "host_ms": stats(host),
        "device_ms": stats(dev) if dev else None,
    }


def _stop_reason(
    plan: RoundPlan,
    r: int,
    round_medians: Mapping[str, Sequence[float]],
    ratios: Sequence[tuple[str, str]],
    timed: Mapping[str, float],
    elapsed: float,
    cap: float,
    budget_end: float | None,
    calls: int,
) -> str | None:
    """Why timing stops after round `r` ("settled", "time cap", "time budget", "max iterations"), or None."""
    enough = r >= plan.min_rounds and all(t >= plan.min_time_s for t in timed.values())
    if (
        enough
        and all(is_settled(v, plan.band, plan.window_rounds, plan.windows) for v in round_medians.values())
        and all(
            is_settled(
                (np.asarray(round_medians[a]) / np.asarray(round_medians[b])).tolist(),
                plan.band,
                plan.window_rounds,
                plan.windows,
            )
            for a, b in ratios
        )
    ):
        return "settled"
    if elapsed >= cap and r >= MIN_ROUNDS_BEFORE_CAP:
        return "time cap"
    if budget_end is not None and time.perf_counter() >= budget_end and r >= 3:
        return "time budget"
    if calls >= plan.max_iters:
        return "max iterations"
    return None


__all__ = [
    "BOOTSTRAP_SAMPLES",
    "CI_LEVEL",
    "MIN_ROUNDS_BEFORE_CAP",
    "STABILITY_BAND",
    "WINDOWS",
    "WINDOW_ROUNDS",
    "RoundPlan",
    "Timer",
    "bootstrap_ci",
    "cv",
    "describe_ratio",
    "interleaved_rounds",
    "is_settled",
    "member_summary",
    "ratio_summary",
    "ratio_table_rows",
    "round_iterations",
    "stats",
    "summarize",
    "warm_up",
    "window_medians",
]
