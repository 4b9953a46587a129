"""What machine a number was measured on: CPU, GPU (clocks as found), thread counts, versions."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
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


__all__ = ["machine_info"]
