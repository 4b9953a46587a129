"""What machine a number was measured on: CPU, GPU (clocks as found), thread counts, versions; and
how busy it was (machine_load: load average and the busiest other processes, before and after)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

CPUINFO = Path("/proc/cpuinfo")  # Linux: the CPU's model, clock and instruction-set flags


def _cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or "unknown", "mhz_as_found": None}
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name") and info.get("_m") is None:
                info["model"] = info["_m"] = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz") and info["mhz_as_found"] is None:
                info["mhz_as_found"] = float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    info.pop("_m", None)
    info["logical_cpus"] = os.cpu_count()
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["usable_cpus"] = os.cpu_count()
    return info


def cpu_flags(prefixes: Sequence[str] = ()) -> list[str]:
    """The sorted flags of the first CPU in /proc/cpuinfo that start with one of `prefixes` (every flag when
    empty); [] where there is no such file (not Linux)."""
    try:
        line = next(ln for ln in CPUINFO.read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({f for f in line.split(":", 1)[1].split() if not prefixes or f.startswith(tuple(prefixes))})


def cuda_gpu() -> dict[str, Any] | None:
    """{"name", "compute_capability": "8.6"} of CUDA device 0 as torch sees it, or None."""
    try:
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - a broken driver/runtime is "no usable GPU"
        return None


def _gpu_info() -> dict[str, Any] | None:
    base = cuda_gpu()
    if base is None:
        return None
    p = torch.cuda.get_device_properties(0)
    g: dict[str, Any] = {
        **base,
        "memory_gib": p.total_memory / 2**30,
        "multiprocessors": p.multi_processor_count,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    if shutil.which("nvidia-smi"):
        q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
        try:
            r = subprocess.run(
                ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if r.returncode == 0 and r.stdout.strip():
                g["nvidia_smi_as_found"] = dict(zip(q.split(","), (v.strip() for v in r.stdout.strip().split(","))))
        except (OSError, subprocess.SubprocessError):
            pass
    return g


def _versions() -> dict[str, Any]:
    import nfdeploy

    v: dict[str, Any] = {
        "nfdeploy": nfdeploy.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for pkg in ("numpy", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-rtx"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort

        v["onnxruntime_module"] = ort.__version__
        v["onnxruntime_providers"] = ort.get_available_providers()
    except Exception:  # noqa: BLE001 - informational
        pass
    return v


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpu": _gpu_info(),
        "versions": _versions(),
        # libgomp (torch's OpenMP) reads it once, when torch loads; `nfdeploy bench` sets PASSIVE before that
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


# A machine counts as busy when other processes together use this share of one core or more, or the
# 1-minute load average reaches the number of usable CPUs: either takes CPU time from the timed backends.
BUSY_OTHER_CORES = 0.25


def _proc_cpu_ticks() -> dict[int, tuple[str, int, int]]:
    """{pid: (name, parent pid, utime + stime ticks)} of every readable process."""
    out: dict[int, tuple[str, int, int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # comm is in parentheses and may contain spaces; fields after it start at state (field 3).
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        out[int(d.name)] = (name, int(rest[1]), int(rest[11]) + int(rest[12]))  # ppid, utime + stime
    return out


def own_processes(parents: dict[int, int], me: int) -> set[int]:
    """`me` and its descendants ({pid: parent pid}): the bench's own work (e.g. compile workers), not load."""
    mine = {me}
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in mine and pid not in mine}
        mine |= new
        grew = bool(new)
    return mine


def judge_load(
    load_1min: float | None, usable: int, others_cores: float, own_threads: int
) -> tuple[bool, float | None]:
    """(busy, load average left after the bench's own threads). The 1-minute load average counts the bench's
    own running threads too (up to one per usable CPU): they are subtracted before other processes are
    blamed. Busy: other processes use BUSY_OTHER_CORES of a core or more, or what is left of the load
    average still reaches the number of usable CPUs."""
    others_load = None if load_1min is None else max(0.0, load_1min - min(max(own_threads, 0), usable))
    busy = others_cores >= BUSY_OTHER_CORES or (others_load is not None and others_load >= usable)
    return busy, others_load


def machine_load(sample_s: float = 0.5, top: int = 5, own_threads: int | None = None) -> dict[str, Any]:
    """Load average and the `top` busiest other processes (CPU share of one core over `sample_s`, read
    from /proc), this process and its children excluded; "busy" and a one-line "warning" when the machine
    is busy (judge_load). `own_threads`: the threads the bench runs on (default: torch's intra-op threads).
    Where /proc cannot be read, only the load average."""
    usable = _cpu_info()["usable_cpus"] or 1
    own_threads = torch.get_num_threads() if own_threads is None else own_threads
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    procs: list[dict[str, Any]] = []
    try:
        hz = os.sysconf("SC_CLK_TCK")
        a = _proc_cpu_ticks()
        t0 = time.perf_counter()
        time.sleep(sample_s)
        b = _proc_cpu_ticks()
        dt = time.perf_counter() - t0
        mine = own_processes({pid: v[1] for pid, v in b.items()}, os.getpid())
        for pid, (name, _, ticks) in b.items():
            if pid in mine or pid not in a:
                continue
            share = (ticks - a[pid][2]) / hz / dt
            if share > 0:
                procs.append({"pid": pid, "name": name, "cpu_share": round(share, 3)})
    except (OSError, ValueError, IndexError):
        procs = []
    procs.sort(key=lambda p: -p["cpu_share"])
    others = sum(p["cpu_share"] for p in procs)
    busy, others_load = judge_load(load[0] if load else None, usable, others, own_threads)
    out: dict[str, Any] = {
        "loadavg_1_5_15": load,
        "usable_cpus": usable,
        "other_processes_cores": round(others, 3),
        "own_threads": own_threads,
        "loadavg_1_without_own_threads": others_load,
        "busiest_other_processes": procs[:top],
        "sample_s": sample_s,
        "busy": busy,
    }
    if busy:
        out["warning"] = f"busy machine: other processes use {others:.2f} of {usable} cores" + (
            f", load average {load[0]:.2f} ({others_load:.2f} without the bench's own {own_threads} threads)"
            if load
            else ""
        )
    return out


def describe_loads(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Two machine_load() records (before and after a measurement) on one line for a report."""
    return (
        f"Load average (1, 5, 15 min) before {before['loadavg_1_5_15']}, after {after['loadavg_1_5_15']}; other "
        f"processes used {before['other_processes_cores']} / {after['other_processes_cores']} of "
        f"{before['usable_cpus']} cores"
        + (" — **busy machine: shared-machine figures**" if before["busy"] or after["busy"] else "")
    )


__all__ = ["BUSY_OTHER_CORES", "describe_loads", "judge_load", "machine_info", "machine_load", "own_processes"]
