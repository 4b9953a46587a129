"""Status: the one vocabulary of outcomes (floor 0: imports nothing of nfdeploy).

Every check and every step says how it ended with one of these words: a parity row, the export's
check, a bench row, a load-test fault, a per-block row, a step of the GPU suite. The table below is the
only place the words and what they mean are written down; reports print `status.value`, and JSON
files hold the same word (a `Status` is a `str`).

Only three kinds of end are verdicts on the thing under test (pass, FAIL, broken/crashed/timeout are
failures); "skipped" is a reason (cannot run here), "unchecked" ran without a verdict, "ok" is a step
or measurement that ran to its end where no tolerance applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    FAIL = "FAIL"
    BROKEN = "broken"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    UNCHECKED = "unchecked"
    DONE = "ok"

    @property
    def info(self) -> StatusInfo:
        return STATUS_TABLE[self]

    @property
    def is_failure(self) -> bool:
        """A failure fails the run that reports it (parity exits 1; a bench or GPU step says so)."""
        return STATUS_TABLE[self].failure is not None

    @classmethod
    def parse(cls, word: str | Status) -> Status:
        """The status a word names, including the words older reports used for it (LEGACY_WORDS)."""
        if isinstance(word, Status):
            return word
        try:
            return cls(LEGACY_WORDS.get(word, word))
        except ValueError:
            raise ValueError(f"not a status word: {word!r}; known: {', '.join(s.value for s in cls)}") from None


@dataclass(frozen=True)
class StatusInfo:
    meaning: str
    failure: str | None  # the words a failure line uses for it ("outside tolerance: a, b"); None: not a failure


STATUS_TABLE: dict[Status, StatusInfo] = {
    Status.PASS: StatusInfo("checked, and within its tolerance", None),
    Status.FAIL: StatusInfo("checked, and outside its tolerance (or a non-finite output)", "outside tolerance"),
    Status.BROKEN: StatusInfo(
        "its artifact exists but does not load (unreadable, or differs from its manifest's sha256)", "failed to load"
    ),
    Status.CRASHED: StatusInfo("loaded, then failed while running", "crashed while running"),
    Status.TIMEOUT: StatusInfo("stopped at its time limit before it ended", "ran past its time limit"),
    Status.SKIPPED: StatusInfo("cannot run here (no GPU, no module, no kernel): a reason, not a verdict", None),
    Status.UNCHECKED: StatusInfo("ran, but nothing judged it (no labelled data, no parity report)", None),
    Status.DONE: StatusInfo("a step or measurement that ran to its end, where no tolerance applies", None),
}

# Words reports written before this table used for the same outcomes: bench rows and GPU-suite steps said
# "failed" for a backend or step that raised.
LEGACY_WORDS: dict[str, str] = {"failed": Status.CRASHED.value}

FAILURES: tuple[Status, ...] = tuple(s for s in Status if s.is_failure)


def failure_summary(named: list[tuple[str, Status]]) -> str:
    """'outside tolerance: a, b; failed to load: c' for (name, status) pairs; empty when none failed."""
    parts = []
    for status in FAILURES:
        names = [n for n, s in named if s is status]
        if names:
            parts.append(f"{STATUS_TABLE[status].failure}: {', '.join(names)}")
    return "; ".join(parts)


__all__ = ["FAILURES", "LEGACY_WORDS", "STATUS_TABLE", "Status", "StatusInfo", "failure_summary"]
