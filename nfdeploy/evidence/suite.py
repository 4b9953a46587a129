"""The suite's entry: the phases in the order asked for, each inside its budget and the invocation's deadline;
a phase that breaks outside its steps is logged and the next one runs."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from nfdeploy.errors import one_line
from nfdeploy.evidence.context import Suite, SuiteOptions
from nfdeploy.evidence.phase_latency import run_phase2
from nfdeploy.evidence.phase_parity import run_phase1
from nfdeploy.evidence.phase_runtimes import run_phase3, run_phase4
from nfdeploy.evidence.phase_serving import run_phase5

PHASES: dict[int, Callable[[Suite], None]] = {
    1: run_phase1,
    2: run_phase2,
    3: run_phase3,
    4: run_phase4,
    5: run_phase5,
}


def run_suite(options: SuiteOptions) -> int:
    """Run the phases of `options`; every file that comes back is under options.out. Returns 0: what failed
    is in the summaries, as a finding."""
    suite = Suite(options)
    suite.log(
        f"gpu suite: phases {list(options.phases)}, device {suite.dev}, torch {torch.__version__}, "
        f"bundle {options.bundle}, work {suite.work}, deadline {options.deadline_s:.0f} s"
    )
    try:
        for n in options.phases:
            try:
                PHASES[n](suite)
            except Exception as e:  # noqa: BLE001 - a phase that breaks outside its steps must not sink the next
                suite.log(f"phase {n} broke: {one_line(e)}")
        suite.log(
            f"done in {time.perf_counter() - suite.t0:.0f} s; files in {suite.out}: "
            + ", ".join(sorted(p.name for p in suite.out.iterdir()))
        )
    finally:
        suite.close()
    return 0


__all__ = ["PHASES", "run_suite"]
