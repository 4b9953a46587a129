"""The instruction-set flags this CPU reports (Linux /proc/cpuinfo): what it can run natively, and what the caps
of check.isa cap down from (VNNI decides whether u8 x s8 products saturate, AVX512_BF16 / AMX whether bf16 is
native)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(prefixes: Sequence[str] = ()) -> list[str]:
    """The sorted flags of the first CPU in /proc/cpuinfo that start with one of `prefixes` (every flag when
    empty); [] where there is no such file (not Linux)."""
    try:
        line = next(ln for ln in CPUINFO.read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({f for f in line.split(":", 1)[1].split() if not prefixes or f.startswith(tuple(prefixes))})


__all__ = ["CPUINFO", "cpu_flags"]
