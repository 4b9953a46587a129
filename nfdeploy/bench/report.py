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

Besides the backends of ``export_backends``, ``bench_report`` times, side by side on the same backend
type, the unfolded NF model, the folded NF model and the folded BatchNorm twin (same topology, random
weights: its speed does not depend on their values), and reports folded / unfolded speedup and
NF-folded / BN-folded latency ratio.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.backends import (ExportSource, default_report_dir, export_backends, load_export_source,
                               select_backends)
from nfdeploy.bench.compare import comparison_backends, ratio_rows
from nfdeploy.bench.machine import machine_info
from nfdeploy.bench.timing import DEVICE_TIMING, HOST_TIMING, time_backend
from nfdeploy.errors import UserError, one_line
from nfdeploy.reports import markdown_table, pyplot, save_figure
from nfdeploy.runtime.base import Backend, BackendUnavailable

BENCH_JSON, BENCH_MD = "bench.json", "bench.md"


class BenchError(UserError, ValueError):
    """Bad bench settings; one line."""
LATENCY_PNG, THROUGHPUT_PNG = "latency_vs_batch.png", "throughput_vs_batch.png"


def parse_batches(text: str | Sequence[int]) -> tuple[int, ...]:
    """"1,8,32" (or a sequence) -> (1, 8, 32): positive integers, or a one-line BenchError."""
    items = [t for t in str(text).split(",") if t.strip()] if isinstance(text, str) else list(text)
    try:
        out = tuple(int(t) for t in items)
    except (TypeError, ValueError):
        raise BenchError(f"batch sizes must be a comma list of integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise BenchError(f"batch sizes must be positive integers, got {text!r}")
    return out


def bench_report(export_dir: str | Path | ExportSource, out_dir: str | Path | None = None, batches: Sequence[int] = (1, 8, 32),
                 only: Sequence[str] | None = None, min_time: float = 2.0, warmup: float = 1.0,
                 log: Callable[[str], None] = print, *, cpu_batches: Sequence[int] | None = None,
                 min_iters: int = 10, compile: bool = True, tensorrt: bool = True, compare: bool = True,
                 budget_s: float | None = None, backends: Sequence[Backend] | None = None) -> dict[str, Any]:
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
        raise BenchError(f"batch sizes must be >= 1, got {batches}")
    source = export_dir if isinstance(export_dir, ExportSource) else load_export_source(export_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(source.export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_shape = source.input_shape
    model_name = source.manifest.get("model", "?")
    log(f"bench {model_name} ({source.export_dir}), input {list(input_shape)}, batches {batches}"
        + (f" (CPU backends: {cpu_batches})" if cpu_batches != batches else ""))

    every = backends if backends is not None else export_backends(source, compile=compile, tensorrt=tensorrt)
    main = [b for b in every if any(o in b.name for o in only)] if only else list(every)
    skipped: list[dict[str, Any]] = []
    runnable: list[Backend] = []
    for b in main:
        reason = b.unavailable_reason()
        if reason:
            skipped.append({"name": b.name, "reason": reason})
            log(f"  skipped {b.name}: {reason}")
        else:
            runnable.append(b)

    own = source.manifest.get("norm") or "nf"
    comp: dict[str, Backend] = {}
    comp_skipped: list[dict[str, Any]] = []
    tmp = tempfile.TemporaryDirectory(prefix=".bench-tmp-", dir=out_dir)
    if compare:
        t0 = time.perf_counter()
        for dev in ("cpu", "cuda"):
            live, dead = comparison_backends(source, dev, tmp_dir=tmp.name, only=only)
            comp.update(live)
            comp_skipped += dead
        log(f"  comparison backends built in {time.perf_counter() - t0:.1f} s")
    for s_ in comp_skipped:
        log(f"  comparison skipped {s_['name']}: {s_['reason']}")
    if only and not main and not comp and not comp_skipped:
        select_backends(every, only)  # raises: --only matched nothing at all

    def batches_for(b: Backend) -> list[int]:
        return cpu_batches if b.device == "cpu" else batches

    # One backend active at a time: its cells are timed together, then it is torn down.
    plan = [("main", b.name, b) for b in runnable] + [("comparison", k, b) for k, b in comp.items()]
    n_cells = sum(len(batches_for(b)) for _, _, b in plan)
    eff_warm, eff_min = warmup, min_time
    max_time_s = None
    if budget_s is not None:
        left = budget_s - (time.perf_counter() - t_start) - 5.0  # 5 s for the report itself
        per_cell = max(left, 0.0) / max(n_cells, 1)
        scale = min(1.0, 0.6 * per_cell / max(warmup + min_time, 1e-9))
        eff_warm, eff_min = warmup * scale, min_time * scale
        max_time_s = max(3 * (eff_warm + eff_min), 1.0)
        log(f"  budget {budget_s:.0f} s, {n_cells} cells: warm-up {eff_warm:.2f} s, min time {eff_min:.2f} s per cell")

    results: list[dict[str, Any]] = []
    comp_results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    over_budget: list[dict[str, Any]] = []
    for section, key, b in plan:
        try:
            b.activate()
        except Exception as e:  # noqa: BLE001 - a backend that cannot start is a finding, not a crash
            reason = str(e) if isinstance(e, BackendUnavailable) else one_line(e)
            (skipped if section == "main" else comp_skipped).append({"name": b.name, "key": key, "reason": reason})
            log(f"  skipped {b.name}: {reason}")
            continue
        try:
            for n in batches_for(b):
                if budget_s is not None and time.perf_counter() - t_start > budget_s - 5.0:
                    over_budget.append({"name": b.name, "batch": n, "section": section,
                                        "reason": f"time budget of {budget_s:.0f} s exhausted"})
                    continue
                try:
                    row = time_backend(b, n, input_shape, warmup_s=eff_warm, min_time_s=eff_min, min_iters=min_iters,
                                       max_time_s=max_time_s)
                except Exception as e:  # noqa: BLE001 - one failing cell (OOM, profile range) must not sink the report
                    msg = one_line(e)
                    failed.append({"name": b.name, "batch": n, "section": section, "reason": msg})
                    log(f"  FAILED {b.name} batch {n}: {msg}")
                    if b.device == "cuda":
                        torch.cuda.empty_cache()
                    continue
                row["backend"] = b.describe()
                if section == "comparison":
                    row["group"], row["variant"] = key.split("/", 1)
                    comp_results.append(row)
                else:
                    results.append(row)
                log(f"  {b.name:<40} batch {n:>4}: median {row['median_ms']:9.3f} ms ({row['scope']}), "
                    f"p90 {row[row['primary']]['p90']:.3f}, {row['throughput_ips']:10.1f} img/s, {row['iterations']} it"
                    + (" (truncated)" if row["truncated"] else ""))
        finally:
            b.deactivate()
    tmp.cleanup()

    report: dict[str, Any] = {
        "format": "nfdeploy-bench-v1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_dir": str(source.export_dir), "out_dir": str(out_dir), "model": model_name, "norm": own,
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
            "rows": ratio_rows(comp_results, own),
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
    plt = pyplot()
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


__all__ = ["BENCH_JSON", "BENCH_MD", "LATENCY_PNG", "THROUGHPUT_PNG", "BenchError", "bench_report", "parse_batches",
           "render_markdown"]
