"""Plain calls timed in interleaved rounds (nfdeploy.perf.call_timing): real calls of known duration
(sleeps of 2 and 4 ms) give their durations and a ratio of 1/2, and every call made is a warm-up or a
timed iteration."""

import time
from collections import Counter
from functools import partial

from nfdeploy.perf import RoundPlan
from nfdeploy.perf.call_timing import CallTimer, time_calls


def test_a_call_timer_times_its_call():
    host, device = CallTimer(partial(time.sleep, 0.005))()
    assert 5.0 <= host < 50.0 and device is None


def test_calls_of_known_duration_give_their_times_and_ratio():
    made = Counter()

    def sleeper(name, s):
        def call():
            made[name] += 1
            time.sleep(s)

        return call

    plan = RoundPlan(warmup_s=0.02, min_time_s=0.1, min_iters=10, max_time_s=20.0)
    members, ratios, info = time_calls(
        {"short": sleeper("short", 0.002), "long": sleeper("long", 0.004)},
        plan,
        ratios={"short/long": ("short", "long")},
    )
    assert info["rounds"] >= plan.min_rounds and info["stopped_by"] in ("settled", "time cap")
    for name, ms in (("short", 2.0), ("long", 4.0)):
        m = members[name]
        assert ms <= m["median_ms"] < 2 * ms and m["median_ci95_ms"][0] <= m["median_ms"] <= m["median_ci95_ms"][1]
        assert m["iterations"] >= plan.min_iters and made[name] == m["iterations"] + m["warmup_iterations"]
        assert m["device_ms"] is None
    r = ratios["short/long"]
    assert 0.4 < r["ratio"] < 0.6 and r["ci95"][0] <= r["ratio"] <= r["ci95"][1] and r["rounds"] == info["rounds"]
