"""Steps with hard time limits, a log, a summary written after every step, and packing of what comes back.

The GPU machine returns at most 8 files of at most 16 MiB from $OUT, no deeper than $OUT/a/b/file, and
a command stopped at its limit returns only what is already there. So every step ends by rewriting the
phase's summary (phaseN.json / phaseN.md) and its packed reports (phaseN.tar.gz) under --out: a run cut
short still returns every step it finished.

A step ends as one of nfdeploy.status's words: "ok" (Status.DONE), "crashed" (it raised; summaries written
before the status table said "failed", read back through Status.parse), "timeout" or "skipped".
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from nfdeploy.errors import one_line
from nfdeploy.render import markdown_table
from nfdeploy.status import Status

# What travels back inside a phase's tar: reports and saved outputs, never weights, ONNX or engines.
PACK_SUFFIXES = (".json", ".md", ".png", ".log", ".jsonl", ".npz", ".txt")
PACK_LIMIT_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have
SUMMARY_JSON = "summary.json"


class StepTimeout(Exception):
    """A step ran past its time limit."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise StepTimeout in the main thread after `seconds` (SIGALRM: between Python bytecodes, so a
    long C call finishes first)."""
    if seconds is None or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise StepTimeout(f"exceeded its time limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Phase:
    """One phase of the suite: its steps, each under a time limit and inside the phase's deadline."""

    def __init__(
        self,
        number: int,
        title: str,
        out: Path,
        work: Path,
        budget_s: float,
        deadline: float,
        log: Callable[[str], None],
    ):
        self.number, self.title, self.out, self.work = number, title, out, work
        self.dir = work / f"phase{number}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.deadline = min(deadline, self.t0 + budget_s)  # perf_counter time at which the phase must end
        self.log = log
        self.summary: dict[str, Any] = {
            "phase": number,
            "title": title,
            "budget_s": budget_s,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "steps": [],
            "skipped": [],
            "results": {},
        }

    @property
    def results(self) -> dict[str, Any]:
        return self.summary["results"]

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def skip(self, what: str, reason: str) -> None:
        """Something that did not run here, with its reason (shown in the report, never as a number)."""
        self.summary["skipped"].append({"what": what, "reason": reason})
        self.log(f"SKIP {what}: {reason}")
        self.save()

    def step(self, name: str, fn: Callable[[], Any], limit: float | None = None, reserve: float = 5.0) -> Any:
        """Run fn under min(limit, time left - reserve); record status, seconds, and the reason of a failure."""
        allowed = self.left() - reserve
        if limit is not None:
            allowed = min(allowed, limit)
        rec: dict[str, Any] = {"name": name, "limit_s": round(allowed, 1)}
        if allowed < 2:
            rec.update(status=Status.SKIPPED, seconds=0.0, reason="no time left in the phase's budget")
            self.summary["steps"].append(rec)
            self.skip(name, rec["reason"])
            return None
        self.log(f"== phase {self.number}: {name} (limit {allowed:.0f} s)")
        t = time.perf_counter()
        value = None
        try:
            with time_limit(allowed):
                value = fn()
            rec["status"] = Status.DONE
        except StepTimeout as e:
            rec.update(status=Status.TIMEOUT, reason=str(e))
        except Exception as e:  # noqa: BLE001 - a step that raised is a finding; the phase goes on
            # Some libraries (torch.onnx's exporter) catch the alarm's StepTimeout and raise their own error.
            timed_out = time.perf_counter() - t >= allowed - 0.5
            rec.update(
                status=Status.TIMEOUT if timed_out else Status.CRASHED,
                reason=(f"exceeded its time limit of {allowed:.0f} s, surfacing as " if timed_out else "")
                + one_line(e),
            )
            (self.dir / f"traceback-{len(self.summary['steps'])}.txt").write_text(traceback.format_exc())
        rec["seconds"] = round(time.perf_counter() - t, 2)
        if isinstance(value, dict):
            rec["detail"] = value
        self.summary["steps"].append(rec)
        self.log(
            f"   {name}: {rec['status']} in {rec['seconds']:.1f} s" + (f" ({rec['reason']})" if "reason" in rec else "")
        )
        self.save()
        return value

    def save(self) -> None:
        """phaseN.json + phaseN.md in the phase dir, and phaseN.tar.gz + summary.json under --out."""
        self.summary["wall_seconds"] = round(time.perf_counter() - self.t0, 2)
        atomic_write_json(self.dir / f"phase{self.number}.json", self.summary)
        atomic_write_text(self.dir / f"phase{self.number}.md", render_phase_md(self.summary))
        atomic_write_bytes(self.out / f"phase{self.number}.tar.gz", pack_reports(self.dir))
        # One summary.json under --out for every phase of this invocation: with a tar per phase and the
        # log, at most 6 files come back (the limit is 8).
        every = read_summary(self.out / SUMMARY_JSON)
        every[f"phase{self.number}"] = {k: v for k, v in self.summary.items() if k != "results"} | {
            "results": {
                k: {a: b for a, b in v.items() if a != "markdown"} if isinstance(v, dict) else v
                for k, v in self.summary["results"].items()
            }
        }
        atomic_write_json(self.out / SUMMARY_JSON, every)


def read_summary(path: Path) -> dict[str, Any]:
    """summary.json ({"phaseN": phase summary}) with every step's status as a Status (older words such as
    "failed" read as what they meant); {} when there is none or it does not parse."""
    try:
        every = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    for phase in every.values():
        for rec in phase.get("steps", []) if isinstance(phase, dict) else []:
            if "status" in rec:
                rec["status"] = Status.parse(rec["status"])
    return every


def pack_reports(root: Path, limit: int = PACK_LIMIT_BYTES) -> bytes:
    """A tar.gz (in memory) of the small report files under root; the largest saved outputs (.npz) are
    left out first when the archive would exceed `limit`, and the list of what was left out is inside it."""
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in PACK_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    dropped: list[str] = []
    while True:
        data = _tar(root, files, dropped)
        npz = [p for p in files if p.suffix == ".npz"]
        if len(data) <= limit or not npz:
            return data
        biggest = max(npz, key=lambda p: p.stat().st_size)
        files.remove(biggest)
        dropped.append(f"{biggest.relative_to(root)} ({biggest.stat().st_size} bytes)")


def _tar(root: Path, files: list[Path], dropped: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(root)))
        if dropped:
            note = (
                "left out to keep this archive under the 16 MiB a returned file may have:\n" + "\n".join(dropped) + "\n"
            ).encode()
            info = tarfile.TarInfo("LEFT_OUT.txt")
            info.size = len(note)
            tar.addfile(info, io.BytesIO(note))
    return buf.getvalue()


def render_phase_md(s: dict[str, Any]) -> str:
    """phaseN.md: the steps with their status, what did not run here, and each result's Markdown table."""
    lines = [
        f"# GPU suite, phase {s['phase']}: {s['title']}",
        "",
        f"Started {s['started']}; wall time {s.get('wall_seconds', 0):.0f} s of a {s['budget_s']:.0f} s budget.",
        "",
        "## Steps",
        "",
        markdown_table(
            [
                {
                    "step": r["name"],
                    "status": r["status"],
                    "seconds": r["seconds"],
                    "limit s": r["limit_s"],
                    "note": r.get("reason", ""),
                }
                for r in s["steps"]
            ]
        ),
    ]
    if s["skipped"]:
        lines += ["## Did not run here", "", markdown_table(s["skipped"])]
    for key, val in s["results"].items():
        if isinstance(val, dict) and val.get("markdown"):
            lines += [f"## {key}", "", val["markdown"]]
    return "\n".join(lines) + "\n"


__all__ = [
    "PACK_LIMIT_BYTES",
    "PACK_SUFFIXES",
    "SUMMARY_JSON",
    "Phase",
    "StepTimeout",
    "pack_reports",
    "read_summary",
    "render_phase_md",
    "time_limit",
]
