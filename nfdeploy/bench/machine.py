"""What machine a number was measured on: CPU, GPU (clocks as found), thread counts, versions; and
how busy it was (machine_load: load average and the busiest other processes, before and after)."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from nfdeploy.runtime.base import cuda_gpu

def _cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or "unknown", "mhz_as_found": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
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


def _gpu_info() -> dict[str, Any] | None:
    from nfdeploy.runtime.base import cuda_gpu

    base = cuda_gpu()
    if base is None:
        return None
    p = torch.cuda.get_device_properties(0)
    g: dict[str, Any] = {**base, "memory_gib": p.total_memory / 2**30, "multiprocessors": p.multi_processor_count,
                         "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if shutil.which("nvidia-smi"):
        q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
        try:
            r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader", "-i", "0"],
                               capture_output=True, text=True, timeout=10)
            if r.returncode == 0 and r.stdout.strip():
                g["nvidia_smi_as_found"] = dict(zip(q.split(","), (v.strip() for v in r.stdout.strip().split(","))))
        except (OSError, subprocess.SubprocessError):
            pass
    return g


def _versions() -> dict[str, Any]:
    import nfdeploy

    v: dict[str, Any] = {"nfdeploy": nfdeploy.__version__, "python": platform.python_version(),
                         "torch": torch.__version__}
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
    return {"platform": platform.platform(), "cpu": _cpu_info(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "gpu": _gpu_info(), "versions": _versions()}


# A machine counts as busy when other processes together use this share of one core or more, or the
# 1-minute load average reaches the number of usable CPUs: either takes CPU time from the timed backends.
BUSY_OTHER_CORES = 0.25


def _proc_cpu_ticks() -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # comm is in parentheses and may contain spaces; fields after it start at state (field 3).
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2:].split()
        out[int(d.name)] = (name, int(rest[11]) + int(rest[12]))  # utime + stime
    return out


def machine_load(sample_s: float = 0.5, top: int = 5) -> dict[str, Any]:
    """Load average and the `top` busiest other processes (CPU share of one core over `sample_s`,
    read from /proc), this process excluded; "busy" and a one-line "warning" when the machine is
    busy (BUSY_OTHER_CORES). Where /proc cannot be read, only the load average."""
    usable = _cpu_info()["usable_cpus"] or 1
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    procs: list[dict[str, Any]] = []
    try:
        hz = os.sysconf("SC_CLK_TCK")
        a = _proc_cpu_ticks()
        t0 = time.perf_counter()
        time.sleep(sample_s)
        b = _proc_cpu_ticks()
        dt = time.perf_counter() - t0
        me = os.getpid()
        for pid, (name, ticks) in b.items():
            if pid == me or pid not in a:
                continue
            share = (ticks - a[pid][1]) / hz / dt
            if share > 0:
                procs.append({"pid": pid, "name": name, "cpu_share": round(share, 3)})
    except (OSError, ValueError, IndexError):
        procs = []
    procs.sort(key=lambda p: -p["cpu_share"])
    others = sum(p["cpu_share"] for p in procs)
    busy = others >= BUSY_OTHER_CORES or (load is not None and load[0] >= usable)
    out: dict[str, Any] = {"loadavg_1_5_15": load, "usable_cpus": usable, "other_processes_cores": round(others, 3),
                           "busiest_other_processes": procs[:top], "sample_s": sample_s, "busy": busy}
    if busy:
        out["warning"] = (f"busy machine: other processes use {others:.2f} of {usable} cores, load average "
                          f"{load[0]:.2f}" if load else f"busy machine: other processes use {others:.2f} cores")
    return out


__all__ = ["BUSY_OTHER_CORES", "machine_info", "machine_load"]
