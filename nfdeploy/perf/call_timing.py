"""Interleaved rounds over plain calls: work that is not a Backend's run (an eager module on an input already
laid out, a training step) timed by the method of rounds.py, so that its figures and ratios mean what the
bench's do: a latency is the median of per-round medians, a ratio the median of per-round ratios, each with
its 95% bootstrap interval over rounds."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from nfdeploy.perf.rounds import RoundPlan, interleaved_rounds


class CallTimer:
    """One timed call of `fn()`: (host wall time in ms (time.perf_counter), None: no device timing)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def __call__(self) -> tuple[float, None]:
        t0 = time.perf_counter()
        self.fn()
        return (time.perf_counter() - t0) * 1e3, None


def time_calls(
    calls: Mapping[str, Callable[[], Any]], plan: RoundPlan, *, ratios: Mapping[str, tuple[str, str]] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Time `calls` ({label: fn}) side by side in interleaved rounds (warm-up, rotating start, until stable or
    capped: `plan`). `ratios`: {name: (label A, label B)}, each A/B from paired rounds.
    Returns ({label: rounds.member_summary}, {name: rounds.ratio_summary}, {"rounds", "settled", "stopped_by",
    "warmup_s", "timed_s", "cap_s"})."""
    ratios = dict(ratios or {})
    res = interleaved_rounds({k: CallTimer(f) for k, f in calls.items()}, plan, ratios=list(ratios.values()))
    out_ratios = {name: res["ratios"][f"{a}/{b}"] for name, (a, b) in ratios.items()}
    info = {k: res[k] for k in ("rounds", "settled", "stopped_by", "warmup_s", "timed_s", "cap_s")}
    return res["members"], out_ratios, info


__all__ = ["CallTimer", "time_calls"]
