"""Latency of every backend that can run an export dir: batch sweep, percentiles, throughput, memory.

What a number is, is part of the number:

- ``host_ms``: host wall time (``time.perf_counter``) of one call, synchronisation included.
  CPU backends: ``backend.run(numpy batch) -> numpy logits``. CUDA torch backends: ``run_tensor`` on a
  pre-allocated device input, then a wait for the device (no host<->device copies). ONNX Runtime and
  TensorRT CUDA backends: the synchronous ``backend.run(numpy batch)``, which *includes* the
  host->device copy of the input and the device->host copy of the logits.
- ``device_ms`` (CUDA only): elapsed time between two CUDA events recorded around the same call.
  For torch backends the events bracket only the device work of ``run_tensor`` (device compute
  time). ONNX Runtime and TensorRT run on their own streams inside a synchronous ``run()``; the
  events (on the backend's stream when it has one, else torch's current stream) then measure the GPU
  clock span of the whole call, copies included: scope ``run() incl. copies`` in the tables.

Per backend and batch: warm-up by time, then iterations until both ``min_time_s`` and ``min_iters``
are reached; min, median, p90, p99, mean; throughput = batch / median of the primary timing (device
on CUDA, host on CPU); peak memory (CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, torch's allocator only; CPU: the process's max RSS from
``resource.getrusage``, which only grows over a process's life); thread count.

Besides the backends of ``make_backends``, ``bench_report`` times, side by side on the same backend
type, the unfolded NF model, the folded NF model and the folded BatchNorm twin (same topology, random
weights: its speed does not depend on their values), and reports folded / unfolded speedup and
NF-folded / BN-folded latency ratio.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.reports import _pyplot, markdown_table, save_figure
from nfdeploy.runtime.base import Backend, BackendUnavailable
from nfdeploy.runtime.registry import REFERENCE, ExportSource, Skipped, _folded, load_export_source, make_backends

BENCH_JSON, BENCH_MD = "bench.json", "bench.md"
LATENCY_PNG, THROUGHPUT_PNG = "latency_vs_batch.png", "throughput_vs_batch.png"

HOST_TIMING = {
    "cpu": "host wall time (time.perf_counter) of backend.run(numpy batch) -> numpy logits",
    "cuda-torch": "host wall time of run_tensor on a pre-allocated device input + wait for the device (no host<->device copies)",
    "cuda-run": "host wall time of the synchronous backend.run(numpy batch), host->device and device->host copies included",
}
DEVICE_TIMING = {
    "cuda-torch": "CUDA events around run_tensor on a device-resident input: device compute only",
    "cuda-run": "CUDA events around the synchronous run(): GPU-clock span of the whole call, copies included",
}
SCOPE = {"cpu": "run() host", "cuda-torch": "device compute", "cuda-run": "run() incl. copies"}


# --------------------------------------------------------------------------------------- timing

def _stats(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"min": float(a.min()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


def _max_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if platform.system() == "Darwin" else r / 1024


def _threads(backend: Backend) -> int | None:
    from nfdeploy.runtime.torch_backend import TorchBackend

    if isinstance(backend, TorchBackend) and backend.device == "cpu":
        return torch.get_num_threads()
    try:
        return backend.describe().get("threads")
    except Exception:  # noqa: BLE001 - describe() is informational
        return None


def time_backend(backend: Backend, batch_size: int, input_shape: Sequence[int], warmup_s: float = 1.0,
                 min_time_s: float = 2.0, min_iters: int = 10, max_iters: int = 10_000, *,
                 max_time_s: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Time `backend` on a random N(0,1) float32 batch of `batch_size` x `input_shape`.

    Warm-up: calls until `warmup_s` has passed (at least one; two on CUDA, where the first may
    compile or capture a graph). Timed: calls until both `min_time_s` and `min_iters` are reached,
    or `max_iters`; `max_time_s` (optional) stops a very slow backend early, after at least 3 calls
    ("truncated": true in the result). See the module docstring for what host_ms / device_ms mean."""
    from nfdeploy.runtime.torch_backend import TorchBackend

    x = np.random.default_rng(seed).standard_normal((batch_size, *input_shape)).astype(np.float32)
    cuda = backend.device == "cuda"
    is_torch = isinstance(backend, TorchBackend)
    events = stream = None
    if cuda:
        if not torch.cuda.is_available():
            raise BackendUnavailable("CUDA backend but torch sees no CUDA device")
        mode = "cuda-torch" if is_torch else "cuda-run"
        if is_torch:
            xd = torch.from_numpy(x).to(device="cuda", dtype=backend.dtype)
            call: Callable[[], Any] = lambda: backend.run_tensor(xd)  # noqa: E731
            stream = torch.cuda.current_stream()
        else:
            call = lambda: backend.run(x)  # noqa: E731
            stream = getattr(backend, "stream", None) or torch.cuda.current_stream()
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        sync = events[1].synchronize
    else:
        mode = "cpu"
        call = lambda: backend.run(x)  # noqa: E731
        sync = lambda: None  # noqa: E731

    # Warm-up by time.
    t_w0 = time.perf_counter()
    n_warm, min_warm = 0, 2 if cuda else 1
    while True:
        call()
        if cuda:
            torch.cuda.synchronize()
        n_warm += 1
        if time.perf_counter() - t_w0 >= warmup_s and n_warm >= min_warm:
            break
    warm_s = time.perf_counter() - t_w0

    if cuda:
        torch.cuda.synchronize()
        start_alloc = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    host: list[float] = []
    dev: list[float] = []
    truncated = False
    t0_all = time.perf_counter()
    while len(host) < max_iters:
        if cuda:
            t0 = time.perf_counter()
            events[0].record(stream)
            call()
            events[1].record(stream)
            sync()
            t1 = time.perf_counter()
            dev.append(events[0].elapsed_time(events[1]))
        else:
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
        host.append((t1 - t0) * 1e3)
        elapsed = t1 - t0_all
        if elapsed >= min_time_s and len(host) >= min_iters:
            break
        if max_time_s is not None and elapsed >= max_time_s and len(host) >= 3:
            truncated = len(host) < min_iters
            break
    timed_s = time.perf_counter() - t0_all

    row: dict[str, Any] = {
        "name": backend.name, "device": backend.device, "precision": backend.precision,
        "math_mode": backend.math_mode, "batch": int(batch_size), "input_shape": [int(s) for s in input_shape],
        "iterations": len(host), "warmup_iterations": n_warm, "warmup_s": warm_s, "timed_s": timed_s,
        "truncated": truncated,
        "host_ms": _stats(host), "device_ms": _stats(dev) if dev else None,
        "primary": "device_ms" if dev else "host_ms",
        "timing": {"host_ms": HOST_TIMING[mode], "device_ms": DEVICE_TIMING.get(mode)},
        "scope": SCOPE[mode],
        "threads": _threads(backend),
    }
    med = row[row["primary"]]["median"]
    row["median_ms"] = med
    row["throughput_ips"] = batch_size / (med / 1e3)
    row["host_throughput_ips"] = batch_size / (row["host_ms"]["median"] / 1e3)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        row.update(peak_memory_mb=peak / 2**20, peak_memory_above_start_mb=max(0, peak - start_alloc) / 2**20,
                   peak_memory_kind="torch.cuda.max_memory_allocated (torch's allocator, whole process; "
                                    "ONNX Runtime / TensorRT internal allocations not counted)")
    else:
        row.update(peak_memory_mb=_max_rss_mb(), peak_memory_kind="process max RSS (getrusage ru_maxrss; "
                                                                   "monotonic over the whole process)")
    return row


# ----------------------------------------------------------------------------- NF vs BN, side by side

def _folded_twin(source: ExportSource) -> torch.nn.Module:
    """The BN (or NF) twin of the export's model: same topology, random constants, folded."""
    from nfdeploy.fold import fold_model, randomize_
    from nfdeploy.models.nf_resnet import NFResNet, NFResNetCfg

    twin = randomize_(NFResNet(NFResNetCfg.from_dict(source.manifest["source"]["model_config"]).twin()).eval())
    return fold_model(twin.double(), dtype=torch.float32)[0]


def comparison_backends(source: ExportSource, device: str = "cpu", *, tmp_dir: str | Path | None = None,
                        only: Sequence[str] | None = None) -> dict[str, Backend | Skipped]:
    """Unfolded model, folded model and folded twin, on each backend type of `device`.

    Keys are "GROUP/VARIANT", e.g. "torch-cpu-fp32/nf-unfolded", "onnxruntime-cpu-fp32/bn-folded".
    device "cpu": torch CPU fp32 and ONNX Runtime CPU (the unfolded model and the twin are exported to
    ONNX under `tmp_dir`, which may be deleted once this returns; the folded model is the export's own
    model.onnx). device "cuda": torch CUDA fp32 (TF32 off) and ONNX Runtime's CUDA EP. What cannot be
    built is a `Skipped` with its reason (no CUDA, no onnxscript, a timm source without a twin, ...)."""
    from nfdeploy.runtime.ort import OrtBackend
    from nfdeploy.runtime.torch_backend import TorchBackend

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    kind = source.manifest["source"].get("kind")
    own = source.manifest.get("norm") or (source.manifest["source"].get("model_config") or {}).get("norm", "nf")
    other = "bn" if own == "nf" else "nf"
    variants = (f"{own}-unfolded", f"{own}-folded", f"{other}-folded")
    groups = [f"torch-{device}-fp32", f"onnxruntime-{device}-fp32"]
    if only:
        groups = [g for g in groups if any(o in g for o in only)]
    out: dict[str, Backend | Skipped] = {}
    if not groups:
        return out
    tmp_owner = None
    if tmp_dir is None:
        tmp_owner = tempfile.TemporaryDirectory(prefix="nfdeploy-bench-")
        tmp_dir = tmp_owner.name
    tmp_dir = Path(tmp_dir)
    cache: dict[str, Any] = {}

    def twin_net():
        if kind != "run":
            raise BackendUnavailable(f"no {other.upper()} twin for a {kind!r} source (the twin is built from a run's "
                                     "model_config)")
        if "twin" not in cache:
            cache["twin"] = _folded_twin(source)
        return cache["twin"]

    def folded_net():
        if "folded" not in cache:
            cache["folded"] = _folded(source)
        return cache["folded"]

    def net_for(role: str) -> torch.nn.Module:
        return source.model if role == "unfolded" else folded_net() if role == "folded" else twin_net()

    def onnx_file(variant: str, role: str) -> Path:
        from nfdeploy.errors import require
        from nfdeploy.export.onnx_graph import export_module

        if role == "folded":  # the export's own graph
            entry = (source.manifest.get("onnx") or {}).get("fp32")
            path = source.export_dir / entry["file"] if entry else None
            if path is None or not path.is_file():
                raise BackendUnavailable("the export has no fp32 ONNX file")
            return path
        net = net_for(role)  # the twin raises its reason here, before any export work
        require("onnxscript", "onnx")  # torch.onnx's dynamo exporter needs it
        path = tmp_dir / f"{variant}.onnx"
        if not path.is_file():
            opset = ((source.manifest.get("onnx") or {}).get("fp32") or {}).get("opset", 18)
            export_module(copy.deepcopy(net).float().eval(), path, source.input_shape, opset=opset)
        return path

    for group in groups:
        for variant, role in zip(variants, ("unfolded", "folded", "twin")):
            name = f"{group}-{variant}"
            key = f"{group}/{variant}"
            try:
                if group.startswith("torch-"):
                    b: Backend = TorchBackend(net_for(role), name, device, "fp32")
                else:
                    if device == "cuda" and not torch.cuda.is_available():
                        raise BackendUnavailable("no CUDA device visible to torch")
                    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
                    b = OrtBackend(onnx_file(variant, role), provider=provider, precision="fp32")
                    b.name = name
                out[key] = b
            except BackendUnavailable as e:
                out[key] = Skipped(name, str(e))
            except ImportError as e:
                out[key] = Skipped(name, f"missing dependency: {e}")
            except Exception as e:  # noqa: BLE001 - an export failure is a reason, not a crash of the report
                out[key] = Skipped(name, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    if tmp_owner is not None:
        tmp_owner.cleanup()
    return out


def _ratio_rows(comp_results: list[dict[str, Any]], own: str) -> list[dict[str, Any]]:
    other = "bn" if own == "nf" else "nf"
    by: dict[tuple[str, int], dict[str, float]] = {}
    for r in comp_results:
        by.setdefault((r["group"], r["batch"]), {})[r["variant"]] = r["median_ms"]
    rows = []
    for (group, batch), m in by.items():
        unf, fol, twin = m.get(f"{own}-unfolded"), m.get(f"{own}-folded"), m.get(f"{other}-folded")
        nf_fol = fol if own == "nf" else twin
        bn_fol = twin if own == "nf" else fol
        rows.append({"backend_type": group, "batch": batch, "model": own, "unfolded_ms": unf,
                     "nf_folded_ms": nf_fol, "bn_folded_ms": bn_fol,
                     "speedup_folded_vs_unfolded": unf / fol if unf and fol else None,
                     "ratio_nf_folded_to_bn_folded": nf_fol / bn_fol if nf_fol and bn_fol else None})
    return rows


# ------------------------------------------------------------------------------------ machine info

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


# ---------------------------------------------------------------------------------------- report

def bench_report(export_dir: str | Path | ExportSource, out_dir: str | Path, batches: Sequence[int] = (1, 8, 32),
                 only: Sequence[str] | None = None, min_time: float = 2.0, warmup: float = 1.0,
                 log: Callable[[str], None] = print, *, cpu_batches: Sequence[int] | None = None,
                 min_iters: int = 10, compile: bool = True, tensorrt: bool = True, compare: bool = True,
                 budget_s: float | None = None) -> dict[str, Any]:
    """Time every backend of the export (skipped ones listed with their reason) at each batch size,
    plus the unfolded/folded/twin comparison; write bench.json, bench.md and two PNGs to `out_dir`.

    `export_dir` may also be an already loaded ExportSource. `only`: substrings of backend names
    (the float64 reference is timed only when a substring matches it); it also selects comparison
    groups ("torch-cpu-fp32", "onnxruntime-cpu-fp32", "torch-cuda-fp32", "onnxruntime-cuda-fp32").
    `cpu_batches`: batch sizes for CPU backends (default: `batches`). `budget_s`: a wall-time budget
    for the whole call: warm-up and min_time shrink to fit, and cells that would start after it are
    listed as skipped."""
    t_start = time.perf_counter()
    batches = sorted({int(b) for b in batches})
    cpu_batches = sorted({int(b) for b in cpu_batches}) if cpu_batches else batches
    if not batches or min(batches + cpu_batches) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batches}")
    source = export_dir if isinstance(export_dir, ExportSource) else load_export_source(export_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_shape = source.input_shape
    model_name = source.manifest.get("model", "?")
    log(f"bench {model_name} ({source.export_dir}), input {list(input_shape)}, batches {batches}"
        + (f" (CPU backends: {cpu_batches})" if cpu_batches != batches else ""))

    built = make_backends(source, only=list(only) if only else None, compile=compile, tensorrt=tensorrt)
    if only:
        built = [b for b in built if b.name != REFERENCE or any(o in REFERENCE for o in only)]
    runnable = [b for b in built if isinstance(b, Backend)]
    skipped = [b.describe() for b in built if isinstance(b, Skipped)]
    for s in skipped:
        log(f"  skipped {s['name']}: {s['reason']}")

    own = source.manifest.get("norm") or "nf"
    comp: dict[str, Backend | Skipped] = {}
    if compare:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=".bench-tmp-", dir=out_dir) as tmp:
            for dev in ("cpu", "cuda"):
                if dev == "cuda" and not torch.cuda.is_available():
                    for g in ("torch-cuda-fp32", "onnxruntime-cuda-fp32"):
                        if not only or any(o in g for o in only):
                            comp[f"{g}/*"] = Skipped(f"{g} (comparison)", "no CUDA device visible to torch")
                    continue
                comp.update(comparison_backends(source, dev, tmp_dir=tmp, only=only))
        log(f"  comparison backends built in {time.perf_counter() - t0:.1f} s")
    comp_skipped = [{**b.describe(), "key": k} for k, b in comp.items() if isinstance(b, Skipped)]
    for s in comp_skipped:
        log(f"  comparison skipped {s['name']}: {s['reason']}")

    def batches_for(b: Backend) -> list[int]:
        return cpu_batches if b.device == "cpu" else batches

    cells = [("main", b.name, b, n) for b in runnable for n in batches_for(b)]
    comp_live = {k: b for k, b in comp.items() if isinstance(b, Backend)}
    all_comp_batches = sorted(set(batches) | set(cpu_batches))
    for n in all_comp_batches:
        for k, b in comp_live.items():
            if n in batches_for(b):
                cells.append(("comparison", k, b, n))

    eff_warm, eff_min = warmup, min_time
    max_time_s = None
    if budget_s is not None:
        left = budget_s - (time.perf_counter() - t_start) - 5.0  # 5 s for the report itself
        per_cell = max(left, 0.0) / max(len(cells), 1)
        scale = min(1.0, 0.6 * per_cell / max(warmup + min_time, 1e-9))
        eff_warm, eff_min = warmup * scale, min_time * scale
        max_time_s = max(3 * (eff_warm + eff_min), 1.0)
        log(f"  budget {budget_s:.0f} s, {len(cells)} cells: warm-up {eff_warm:.2f} s, min time {eff_min:.2f} s per cell")

    results: list[dict[str, Any]] = []
    comp_results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    over_budget: list[dict[str, Any]] = []
    for section, key, b, n in cells:
        if budget_s is not None and time.perf_counter() - t_start > budget_s - 5.0:
            over_budget.append({"name": b.name, "batch": n, "section": section,
                                "reason": f"time budget of {budget_s:.0f} s exhausted"})
            continue
        try:
            row = time_backend(b, n, input_shape, warmup_s=eff_warm, min_time_s=eff_min, min_iters=min_iters,
                               max_time_s=max_time_s)
        except Exception as e:  # noqa: BLE001 - one failing cell (OOM, profile range) must not sink the report
            msg = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            failed.append({"name": b.name, "batch": n, "section": section, "reason": msg})
            log(f"  FAILED {b.name} batch {n}: {msg}")
            if b.device == "cuda":
                torch.cuda.empty_cache()
            continue
        row["backend"] = _describe(b)
        if section == "comparison":
            row["group"], row["variant"] = key.split("/", 1)
            comp_results.append(row)
        else:
            results.append(row)
        log(f"  {b.name:<40} batch {n:>4}: median {row['median_ms']:9.3f} ms ({row['scope']}), "
            f"p90 {row[row['primary']]['p90']:.3f}, {row['throughput_ips']:10.1f} img/s, {row['iterations']} it"
            + (" (truncated)" if row["truncated"] else ""))

    report: dict[str, Any] = {
        "format": "nfdeploy-bench-v1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_dir": str(source.export_dir), "model": model_name, "norm": own,
        "input_shape": list(input_shape), "batches": batches, "cpu_batches": cpu_batches,
        "settings": {"warmup_s": eff_warm, "min_time_s": eff_min, "min_iters": min_iters, "max_time_s": max_time_s,
                     "requested_warmup_s": warmup, "requested_min_time_s": min_time, "budget_s": budget_s,
                     "only": list(only) if only else None, "compile": compile, "input": "N(0,1) float32, seed 0"},
        "machine": machine_info(),
        "timing_method": {"host_ms": HOST_TIMING, "device_ms": DEVICE_TIMING,
                          "primary": "device_ms on CUDA, host_ms on CPU; median_ms and throughput_ips use it",
                          "throughput": "batch / median of the primary timing (images per second)"},
        "results": results,
        "skipped": skipped,
        "failed": failed,
        "over_budget": over_budget,
        "comparison": {
            "metric": "median of the primary timing (device_ms on CUDA, host_ms on CPU)",
            "ratios": {"speedup_folded_vs_unfolded": "unfolded median / folded median (> 1: folding is faster)",
                       "ratio_nf_folded_to_bn_folded": "NF folded median / BN twin folded median (< 1: NF is faster)"},
            "twin": "same topology and widths with the other norm, random constants, folded the same way",
            "rows": _ratio_rows(comp_results, own),
            "results": comp_results,
            "skipped": comp_skipped,
        },
    }
    report["wall_seconds"] = time.perf_counter() - t_start
    atomic_write_json(out_dir / BENCH_JSON, report)
    atomic_write_text(out_dir / BENCH_MD, render_markdown(report))
    _plots(report, out_dir)
    log(f"  wrote {out_dir / BENCH_JSON}, {BENCH_MD}, {LATENCY_PNG}, {THROUGHPUT_PNG} "
        f"({report['wall_seconds']:.1f} s)")
    return report


def _describe(b: Backend) -> dict[str, Any]:
    try:
        return b.describe()
    except Exception as e:  # noqa: BLE001
        return {"name": b.name, "describe_error": str(e)}


def _fmt_ms(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def render_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    cpu, gpu, ver = m["cpu"], m["gpu"], m["versions"]
    s = r["settings"]
    lines = [f"# Latency: {r['model']}", "",
             f"Export `{r['export_dir']}`, input {r['input_shape']} (N(0,1) float32), created {r['created']}.",
             f"Warm-up {s['warmup_s']:.2g} s by time, then at least {s['min_time_s']:.2g} s and {s['min_iters']} "
             f"iterations per backend and batch. Wall time of the report: {r['wall_seconds']:.1f} s.", "",
             "## Machine", ""]
    mrows = [{"item": "CPU", "value": f"{cpu['model']} ({cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical "
                                       f"CPUs; {cpu['mhz_as_found']} MHz as found)"},
             {"item": "torch threads", "value": f"{m['torch_threads']} intra-op, {m['torch_interop_threads']} inter-op"},
             {"item": "GPU", "value": "none" if not gpu else
              f"{gpu['name']} (CC {gpu['compute_capability']}, {gpu['memory_gib']:.0f} GiB, CUDA {gpu['cuda_runtime']}, "
              f"cuDNN {gpu['cudnn']})" + (f"; nvidia-smi as found: {gpu['nvidia_smi_as_found']}"
                                          if gpu.get("nvidia_smi_as_found") else "")},
             {"item": "versions", "value": ", ".join(f"{k} {v}" for k, v in ver.items()
                                                     if k not in ("onnxruntime_providers", "onnxruntime_module"))},
             {"item": "ONNX Runtime providers", "value": ", ".join(ver.get("onnxruntime_providers") or []) or "n/a"},
             {"item": "platform", "value": m["platform"]}]
    lines += [markdown_table(mrows), "## Timing method", ""]
    lines += [f"- **host_ms**, CPU backends: {HOST_TIMING['cpu']}.",
              f"- **host_ms**, torch CUDA: {HOST_TIMING['cuda-torch']}.",
              f"- **host_ms**, ONNX Runtime / TensorRT CUDA: {HOST_TIMING['cuda-run']}.",
              f"- **device_ms**, torch CUDA: {DEVICE_TIMING['cuda-torch']}.",
              f"- **device_ms**, ONNX Runtime / TensorRT CUDA: {DEVICE_TIMING['cuda-run']}.",
              "- *median* / *throughput* use device_ms on CUDA and host_ms on CPU (column *metric*; *scope* says "
              "what the interval covers). Peak memory: CUDA = torch.cuda.max_memory_allocated (torch's allocator "
              "only; TensorRT buffers are torch tensors, ONNX Runtime's arena is not counted); CPU = process max RSS "
              "(monotonic over the process).", ""]
    lines += ["## Backends × batch", ""]
    rows = []
    for x in r["results"]:
        p = x[x["primary"]]
        rows.append({"backend": x["name"], "batch": x["batch"], "precision": x["precision"], "math mode": x["math_mode"],
                     "metric": x["primary"], "scope": x["scope"], "median ms": _fmt_ms(p["median"]),
                     "min": _fmt_ms(p["min"]), "p90": _fmt_ms(p["p90"]), "p99": _fmt_ms(p["p99"]),
                     "mean": _fmt_ms(p["mean"]),
                     "host median ms": _fmt_ms(x["host_ms"]["median"]) if x["device_ms"] else "",
                     "img/s": f"{x['throughput_ips']:.1f}", "iters": x["iterations"] if not x["truncated"]
                     else f"{x['iterations']} (truncated)",
                     "threads": x["threads"], "peak MiB": f"{x['peak_memory_mb']:.0f}"})
    lines.append(markdown_table(rows))
    if r["skipped"]:
        lines += ["### Skipped", "", markdown_table([{"backend": s["name"], "reason": s["reason"]} for s in r["skipped"]])]
    if r["failed"]:
        lines += ["### Failed", "", markdown_table([{"backend": s["name"], "batch": s["batch"], "reason": s["reason"]}
                                                     for s in r["failed"]])]
    if r["over_budget"]:
        lines += ["### Not run (time budget)", "",
                  markdown_table([{"backend": s["name"], "batch": s["batch"], "section": s["section"]}
                                  for s in r["over_budget"]])]
    c = r["comparison"]
    lines += ["## Unfolded vs folded vs BN twin", "",
              f"Same backend type, side by side; metric: {c['metric']}. "
              f"speedup = {c['ratios']['speedup_folded_vs_unfolded']}; "
              f"NF/BN = {c['ratios']['ratio_nf_folded_to_bn_folded']}. Twin: {c['twin']}.", ""]
    crows = [{"backend type": x["backend_type"], "batch": x["batch"], "unfolded ms": _fmt_ms(x["unfolded_ms"]),
              "NF folded ms": _fmt_ms(x["nf_folded_ms"]), "BN folded ms": _fmt_ms(x["bn_folded_ms"]),
              "folded speedup": "" if x["speedup_folded_vs_unfolded"] is None else f"{x['speedup_folded_vs_unfolded']:.3f}×",
              "NF/BN folded": "" if x["ratio_nf_folded_to_bn_folded"] is None
              else f"{x['ratio_nf_folded_to_bn_folded']:.3f}"}
             for x in sorted(c["rows"], key=lambda x: (x["backend_type"], x["batch"]))]
    lines.append(markdown_table(crows))
    if c["skipped"]:
        lines += ["Comparison entries skipped:", "",
                  markdown_table([{"entry": s["name"], "reason": s["reason"]} for s in c["skipped"]])]
    lines += ["## Plots", "", f"![latency]({LATENCY_PNG})", "", f"![throughput]({THROUGHPUT_PNG})", ""]
    return "\n".join(lines)


def _plots(r: dict[str, Any], out_dir: Path) -> None:
    plt = _pyplot()
    from matplotlib import ticker

    panels = [("backends", r["results"], lambda x: x["name"]),
              ("unfolded / folded / twin", r["comparison"]["results"], lambda x: f"{x['group']}/{x['variant']}")]
    for fname, key, ylabel in ((LATENCY_PNG, "median_ms", "median latency (ms)"),
                               (THROUGHPUT_PNG, "throughput_ips", "throughput (images/s)")):
        fig, axes = plt.subplots(1, 2, figsize=(14, 5))
        for ax, (title, rows, label) in zip(axes, panels):
            series: dict[str, list[tuple[int, float]]] = {}
            for x in rows:
                series.setdefault(label(x), []).append((x["batch"], x[key]))
            for name, pts in series.items():
                pts.sort()
                style = "--" if ("unfolded" in name or "bn-folded" in name) else "-"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            bs = sorted({x["batch"] for x in rows}) or r["batches"]
            ax.set_xticks(bs)
            ax.set_xticklabels([str(b) for b in bs])
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{r['model']}: {title}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            if series:
                ax.legend(fontsize=7, loc="best")
        save_figure(fig, out_dir / fname)


__all__ = ["BENCH_JSON", "BENCH_MD", "LATENCY_PNG", "THROUGHPUT_PNG", "bench_report", "comparison_backends",
           "machine_info", "render_markdown", "time_backend"]
