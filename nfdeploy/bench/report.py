"""Latency of every backend that can run an export dir: batch sweep, percentiles, throughput,
achieved GFLOP/s against a measured peak, each backend's own memory, and side-by-side ratios.

What a number is, is part of the number:

- ``host_ms``: host wall time (``time.perf_counter``) of one call, synchronisation included.
  CPU backends: ``backend.run(numpy batch) -> numpy logits``. CUDA torch backends: ``run_tensor`` on a
  pre-allocated device input, then a wait for the device (no host<->device copies). ONNX Runtime and
  TensorRT CUDA backends: the synchronous ``backend.run(numpy batch)``, which *includes* the
  host->device copy of the input and the device->host copy of the logits.
- ``device_ms`` (CUDA only): elapsed time between two CUDA events recorded around the same call.

How it is measured (rounds.py): warm-up by time, then rounds of a fixed number of iterations until
the medians of the last windows of rounds agree within +-3% or a time cap passes (then the row is
flagged noisy, with its coefficient of variation). A latency is the median of the per-round medians,
with a 95% bootstrap interval over rounds.

One measurement per figure: the comparison groups (per backend type: unfolded model, folded model,
folded twin with the other norm) are timed in interleaved rounds, and their ratios (folded speedup,
NF/BN) are medians of per-round ratios with bootstrap intervals. A backend of the main table that is
a member of a comparison group (torch-cpu-fp32-unfolded, torch-cpu-fp32-folded, onnxruntime-cpu-fp32,
torch-cuda-fp32-folded-eager, onnxruntime-cuda-fp32) is not timed again: its main-table row *is* the
comparison's measurement (``measured_in`` says so). Every other backend is timed alone, one active at
a time.

Achieved GFLOP/s = 2 x multiply-accumulates (counted once from the export's fp32 ONNX graph, the folded
model) x batch / median latency; its share of a peak measured in the same run (peak.py: float32 sgemm
on torch's threads on CPU, a matmul of the row's precision on CUDA). The machine's load (load average,
busiest other processes) is recorded before and after; a busy machine is warned about.
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
from nfdeploy.bench.compare import comparison_backends, comparison_groups, group_ratios, main_name
from nfdeploy.bench.flops import gflops, onnx_macs
from nfdeploy.bench.machine import machine_info, machine_load
from nfdeploy.bench.peak import peak_for
from nfdeploy.bench.rounds import (BOOTSTRAP_SAMPLES, CI_LEVEL, STABILITY_BAND, WINDOW_ROUNDS, WINDOWS, RoundPlan,
                                   describe_ratio)
from nfdeploy.bench.timing import (DEVICE_TIMING, HOST_TIMING, MEMORY_KIND, activate_measured, time_backend,
                                   time_group)
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
                 budget_s: float | None = None, backends: Sequence[Backend] | None = None,
                 max_time: float | None = None) -> dict[str, Any]:
    """Time every backend of the export (skipped ones listed with their reason) at each batch size,
    plus the unfolded/folded/twin comparison in interleaved rounds; write bench.json, bench.md and
    two PNGs to `out_dir`.

    `export_dir` may also be an already loaded ExportSource. `only`: substrings of backend names
    (the float64 reference is timed only when a substring matches it); it also selects comparison
    groups ("torch-cpu-fp32", "onnxruntime-cpu-fp32", "torch-cuda-fp32", "onnxruntime-cuda-fp32").
    `cpu_batches`: batch sizes for CPU backends (default: `batches`). `min_time`: timed seconds per
    backend and batch at least; `max_time`: the cap per cell (group) after which an unsettled row is
    reported as noisy (default 5 x min_time per member). `budget_s`: a wall-time budget for the whole
    call: warm-up, min_time and the cap shrink to fit, and cells that would start after it are listed
    as over budget."""
    t_start = time.perf_counter()
    batches = sorted({int(b) for b in batches})
    cpu_batches = sorted({int(b) for b in cpu_batches}) if cpu_batches else batches
    if not batches or min(batches + cpu_batches) < 1:
        raise BenchError(f"batch sizes must be >= 1, got {batches}")
    if min_time < 0 or warmup < 0 or (max_time is not None and max_time <= 0):
        raise BenchError("min_time and warmup must be >= 0, max_time > 0")
    source = export_dir if isinstance(export_dir, ExportSource) else load_export_source(export_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(source.export_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_shape = source.input_shape
    model_name = source.manifest.get("model", "?")
    log(f"bench {model_name} ({source.export_dir}), input {list(input_shape)}, batches {batches}"
        + (f" (CPU backends: {cpu_batches})" if cpu_batches != batches else ""))
    load_before = machine_load()
    peaks: dict[tuple[str, str], dict[str, Any]] = {}
    peak_for("cpu", "fp32", peaks)  # the CPU peak before timing, under the load the timing starts with
    if load_before["busy"]:
        log(f"  WARNING {load_before['warning']}: latencies will be slower and noisier than on a quiet machine")

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

    own = source.manifest.get("norm") or (source.manifest["source"].get("model_config") or {}).get("norm", "nf")
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

    def batches_for(device: str) -> list[int]:
        return cpu_batches if device == "cpu" else batches

    groups = comparison_groups(comp)
    covered_names = {main_name(k.split("/")[0], k.split("/")[1], own) for k in comp} - {None}
    alone = [b for b in runnable if b.name not in covered_names]
    n_cells = (sum(len(batches_for(b.device)) for b in alone)
               + sum(len(m) * len(batches_for(next(iter(m.values())).device)) for m in groups.values()))
    eff_warm, eff_min, cap = warmup, min_time, max_time
    budget_end = None
    if budget_s is not None:
        budget_end = t_start + budget_s - 5.0  # 5 s for the report itself
        left = budget_end - time.perf_counter()
        per_cell = max(left, 0.0) / max(n_cells, 1)
        scale = min(1.0, 0.5 * per_cell / max(warmup + min_time, 1e-9))
        eff_warm, eff_min = warmup * scale, min_time * scale
        cap = max(2 * (eff_warm + eff_min), 0.5) if max_time is None else min(max_time, max(2 * (eff_warm + eff_min), 0.5))
        log(f"  budget {budget_s:.0f} s, {n_cells} cells: warm-up {eff_warm:.2f} s, min time {eff_min:.2f} s per cell")

    def plan_for(device: str, members: int) -> RoundPlan:
        return RoundPlan(warmup_s=eff_warm, min_time_s=eff_min, min_iters=min_iters,
                         max_time_s=None if cap is None else cap * members, min_warmup_calls=2 if device == "cuda" else 1)

    def over(name: str, n: int, section: str) -> bool:
        if budget_end is not None and time.perf_counter() > budget_end:
            over_budget.append({"name": name, "batch": n, "section": section,
                                "reason": f"time budget of {budget_s:.0f} s exhausted"})
            return True
        return False

    results: list[dict[str, Any]] = []
    comp_results: list[dict[str, Any]] = []
    ratio_rows_: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    over_budget: list[dict[str, Any]] = []
    covering: dict[str, dict[int, dict[str, Any]]] = {}  # main name -> batch -> the comparison row that measured it

    # Comparison groups: all members of a group active together, timed in interleaved rounds.
    for group, members in groups.items():
        device = next(iter(members.values())).device
        act_mb: dict[str, float | None] = {}
        live: dict[str, Backend] = {}
        try:
            for variant, b in members.items():
                try:
                    act_mb[variant] = activate_measured(b)
                    live[variant] = b
                except Exception as e:  # noqa: BLE001 - a backend that cannot start is a finding, not a crash
                    reason = str(e) if isinstance(e, BackendUnavailable) else one_line(e)
                    comp_skipped.append({"name": b.name, "key": f"{group}/{variant}", "reason": reason})
                    log(f"  comparison skipped {b.name}: {reason}")
            if not live:
                continue
            pairs = group_ratios(own, list(live))
            for n in batches_for(device):
                if over(group, n, "comparison"):
                    continue
                try:
                    rows, ratios, info = time_group(live, n, input_shape, plan_for(device, len(live)), ratios=pairs,
                                                    activation_memory_mb=act_mb, budget_end=budget_end)
                except Exception as e:  # noqa: BLE001 - one failing cell (OOM, profile range) must not sink the report
                    failed.append({"name": group, "batch": n, "section": "comparison", "reason": one_line(e)})
                    log(f"  FAILED {group} batch {n}: {one_line(e)}")
                    continue
                for variant, row in rows.items():
                    row.update(group=group, variant=variant, backend=live[variant].describe(),
                               measured_in=f"{group} group, interleaved with {', '.join(v for v in rows if v != variant)}")
                    comp_results.append(row)
                    mn = main_name(group, variant, own)
                    if mn:
                        covering.setdefault(mn, {})[n] = row
                    _log_row(log, f"{group}/{variant}", row)
                ratio_rows_.append(_ratio_row(group, n, own, rows, ratios, info))
                for name, rr in ratios.items():
                    log(f"  {group} batch {n}: {RATIO_LABEL[name]} {describe_ratio(rr)}")
        finally:
            for b in members.values():
                b.deactivate()

    # Main table: one backend active at a time; rows the comparison measured are that measurement.
    for b in runnable:
        todo = []
        for n in batches_for(b.device):
            if n in covering.get(b.name, {}):
                row = {**covering[b.name][n], "name": b.name, "backend": b.describe()}
                for k in ("group", "variant"):
                    row.pop(k, None)
                results.append(row)
            else:
                todo.append(n)
        if not todo:
            continue
        try:
            act = activate_measured(b)
        except Exception as e:  # noqa: BLE001
            reason = str(e) if isinstance(e, BackendUnavailable) else one_line(e)
            skipped.append({"name": b.name, "reason": reason})
            log(f"  skipped {b.name}: {reason}")
            continue
        try:
            for n in todo:
                if over(b.name, n, "main"):
                    continue
                p = plan_for(b.device, 1)
                try:
                    row = time_backend(b, n, input_shape, warmup_s=p.warmup_s, min_time_s=p.min_time_s,
                                       min_iters=min_iters, max_time_s=p.max_time_s, activation_memory_mb=act,
                                       budget_end=budget_end)
                except Exception as e:  # noqa: BLE001 - one failing cell (OOM, profile range) must not sink the report
                    failed.append({"name": b.name, "batch": n, "section": "main", "reason": one_line(e)})
                    log(f"  FAILED {b.name} batch {n}: {one_line(e)}")
                    if b.device == "cuda":
                        torch.cuda.empty_cache()
                    continue
                row["backend"] = b.describe()
                row["measured_in"] = "alone"
                results.append(row)
                _log_row(log, b.name, row)
        finally:
            b.deactivate()
    tmp.cleanup()
    order = {b.name: i for i, b in enumerate(runnable)}
    results.sort(key=lambda r: (order.get(r["name"], 1e9), r["batch"]))

    work = work_model(source)
    for row in results + comp_results:
        annotate_work(row, work, peaks)
    load_after = machine_load()
    if load_after["busy"]:
        log(f"  WARNING after the bench: {load_after['warning']}")
    noisy = [f"{r['name']} batch {r['batch']}" for r in results if r["noisy"]]
    noisy += [f"{r['backend_type']} batch {r['batch']} {RATIO_LABEL[k]}" for r in ratio_rows_
              for k in RATIO_LABEL if r.get(f"{k}_noisy")]
    warnings = [w for w in (load_before.get("warning") and f"before: {load_before['warning']}",
                            load_after.get("warning") and f"after: {load_after['warning']}") if w]
    above = sorted({r["name"] for r in results + comp_results if (r.get("peak_share") or 0) > 1.0})
    if above:
        warnings.append(f"achieved GFLOP/s above the measured peak ({', '.join(above)}): the sgemm peak of this run "
                        "was measured low (a busy machine slows torch's threaded sgemm more than these backends); "
                        "shares of peak are meaningful on a quiet machine only")
        log(f"  WARNING {warnings[-1]}")
    if noisy:
        warnings.append(f"{len(noisy)} figure(s) did not settle within ±{100 * STABILITY_BAND:.0f}% "
                        f"(noisy): {', '.join(noisy)}")
        log(f"  WARNING {warnings[-1]}")

    report: dict[str, Any] = {
        "format": "nfdeploy-bench-v2",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_dir": str(source.export_dir), "out_dir": str(out_dir), "model": model_name, "norm": own,
        "input_shape": list(input_shape), "batches": batches, "cpu_batches": cpu_batches,
        "settings": {"warmup_s": eff_warm, "min_time_s": eff_min, "min_iters": min_iters, "max_time_s": cap,
                     "requested_warmup_s": warmup, "requested_min_time_s": min_time, "budget_s": budget_s,
                     "only": list(only) if only else None, "compile": compile, "input": "N(0,1) float32, seed 0",
                     "stability": {"band": STABILITY_BAND, "window_rounds": WINDOW_ROUNDS, "windows": WINDOWS},
                     "ci": f"{int(CI_LEVEL * 100)}% percentile bootstrap over rounds ({BOOTSTRAP_SAMPLES} resamples)"},
        "machine": machine_info(),
        "machine_load": {"before": load_before, "after": load_after},
        "warnings": warnings,
        "timing_method": {"host_ms": HOST_TIMING, "device_ms": DEVICE_TIMING,
                          "primary": "device_ms on CUDA, host_ms on CPU; median_ms and throughput_ips use it",
                          "median_ms": "median of the per-round medians; median_ci95_ms: bootstrap over rounds",
                          "throughput": "batch / median of the primary timing (images per second)",
                          "memory": MEMORY_KIND,
                          "one_measurement": "main-table rows of comparison members are the comparison's measurement "
                                             "(measured_in); nothing is timed twice"},
        "work": work,
        "peaks": [dict(v) for v in peaks.values()],
        "results": results,
        "skipped": skipped,
        "failed": failed,
        "over_budget": over_budget,
        "comparison": {
            "metric": "median of per-round ratios of the primary timing (device_ms on CUDA, host_ms on CPU), "
                      "members timed in interleaved rounds",
            "ratios": {"speedup_folded_vs_unfolded": "unfolded / folded, per round (> 1: folding is faster)",
                       "ratio_nf_folded_to_bn_folded": "NF folded / BN twin folded, per round (< 1: NF is faster)"},
            "twin": "same topology and widths with the other norm, random constants, folded the same way",
            "rows": ratio_rows_,
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


RATIO_LABEL = {"speedup_folded_vs_unfolded": "folded speedup", "ratio_nf_folded_to_bn_folded": "NF/BN folded"}


def _log_row(log: Callable[[str], None], label: str, row: dict[str, Any]) -> None:
    lo, hi = row["median_ci95_ms"]
    log(f"  {label:<40} batch {row['batch']:>4}: median {row['median_ms']:9.3f} ms [{lo:.3f}, {hi:.3f}] "
        f"({row['scope']}), {row['throughput_ips']:10.1f} img/s, {row['rounds']}x{row['round_iters']} it"
        + (f" NOISY (cv {100 * (row['cv'] or 0):.1f}%, {row['stopped_by']})" if row["noisy"] else ""))


def _ratio_row(group: str, batch: int, own: str, rows: dict[str, dict[str, Any]], ratios: dict[str, Any],
               info: dict[str, Any]) -> dict[str, Any]:
    med = {v: r["median_ms"] for v, r in rows.items()}
    out: dict[str, Any] = {"backend_type": group, "batch": batch, "model": own, "unfolded_ms": med.get(f"{own}-unfolded"),
                           "nf_folded_ms": med.get("nf-folded"), "bn_folded_ms": med.get("bn-folded"),
                           "rounds": info["rounds"], "stopped_by": info["stopped_by"]}
    for key in RATIO_LABEL:
        r = ratios.get(key)
        out[key] = r["ratio"] if r else None
        out[f"{key}_ci95"] = r["ci95"] if r else None
        out[f"{key}_cv"] = r["cv"] if r else None
        out[f"{key}_noisy"] = r["noisy"] if r else None
    return out


def work_model(source: ExportSource) -> dict[str, Any]:
    """Multiply-accumulates per sample from the export's fp32 ONNX graph (the folded model)."""
    onnx = source.manifest.get("onnx") or {}
    entry = onnx.get("fp32") or next(iter(onnx.values()), None)
    if not entry:
        return {"macs_per_sample": None, "reason": "the export has no ONNX graph to count"}
    try:
        macs = onnx_macs(source.export_dir / entry["file"])
    except Exception as e:  # noqa: BLE001 - GFLOP/s is extra information, its absence is reported
        return {"macs_per_sample": None, "reason": one_line(e)}
    return {"macs_per_sample": macs, "graph": entry["file"],
            "what": "Conv/Gemm/MatMul multiply-accumulates of one sample, counted from the folded ONNX graph"}


def annotate_work(row: dict[str, Any], work: dict[str, Any], peaks: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Add achieved GFLOP/s and its share of the measured peak of the row's device and precision."""
    row["gflops"] = gflops(work.get("macs_per_sample"), row["batch"], row["median_ms"])
    peak = peak_for(row["device"], row["precision"], peaks) if row["gflops"] is not None else None
    row["peak_gflops"] = peak["gflops"] if peak else None
    row["peak_share"] = row["gflops"] / peak["gflops"] if peak else None


def _fmt_ms(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _ci(v: Sequence[float] | None, fmt: str = "{:.4g}") -> str:
    return "" if not v else f"[{fmt.format(v[0])}, {fmt.format(v[1])}]"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def informative_table(rows: Sequence[dict[str, Any]], keep: Sequence[str] = ()) -> list[str]:
    """A Markdown table without the columns that are empty on every row, and, when there are at least
    two rows, without those with the same value on every row (listed once under the table instead).
    Columns in `keep` always stay."""
    if not rows:
        return ["(no rows)", ""]
    cols = list(rows[0].keys())
    values = {c: [str(r.get(c, "") if r.get(c) is not None else "") for r in rows] for c in cols}
    shown = [c for c in cols if c in keep or (any(values[c]) and (len(rows) < 2 or len(set(values[c])) > 1))]
    same = [f"{c} = {values[c][0]}" for c in cols if c not in shown and any(values[c])]
    out = [markdown_table(rows, shown)]
    if same:
        out += ["Same on every row: " + "; ".join(same) + ".", ""]
    return out


def render_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    cpu, gpu, ver = m["cpu"], m["gpu"], m["versions"]
    s = r["settings"]
    st = s["stability"]
    lines = [f"# Latency: {r['model']}", "",
             f"Export `{r['export_dir']}`, input {r['input_shape']} (N(0,1) float32), created {r['created']}. "
             f"Wall time of the report: {r['wall_seconds']:.1f} s.", ""]
    if r["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in r["warnings"]] + [""]
    lines += ["## Machine", ""]
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
    for when, ld in r["machine_load"].items():
        busiest = ", ".join(f"{p['name']} ({p['pid']}) {p['cpu_share']:.2f}" for p in ld["busiest_other_processes"][:3])
        mrows.append({"item": f"load {when}", "value": f"load average {ld['loadavg_1_5_15']}; other processes "
                      f"{ld['other_processes_cores']:.2f} cores (busiest: {busiest or 'none'})"
                      + (" — BUSY" if ld["busy"] else "")})
    for p in r["peaks"]:
        mrows.append({"item": f"measured peak {p['device']} {p['precision']}", "value": f"{p['gflops']:.1f} GFLOP/s ({p['what']})"})
    w = r["work"]
    mrows.append({"item": "work per image", "value": f"{w['macs_per_sample'] / 1e9:.4g} GMAC ({w['what']})"
                  if w.get("macs_per_sample") else f"unknown ({w.get('reason')})"})
    lines += [markdown_table(mrows), "## Timing method", ""]
    lines += [f"- **host_ms**, CPU backends: {HOST_TIMING['cpu']}.",
              f"- **host_ms**, torch CUDA: {HOST_TIMING['cuda-torch']}.",
              f"- **host_ms**, ONNX Runtime / TensorRT CUDA: {HOST_TIMING['cuda-run']}.",
              f"- **device_ms**, torch CUDA: {DEVICE_TIMING['cuda-torch']}.",
              f"- **device_ms**, ONNX Runtime / TensorRT CUDA: {DEVICE_TIMING['cuda-run']}.",
              f"- Warm-up {s['warmup_s']:.2g} s per backend, then rounds of a fixed number of iterations (*rounds×it*) "
              f"for at least {s['min_time_s']:.2g} s and {s['min_iters']} iterations, until the medians of the last "
              f"{st['windows']} windows of {st['window_rounds']} rounds agree within ±{100 * st['band']:.0f}% "
              f"(then *settled*), or the cap ({_fmt_ms(s['max_time_s']) or '5 × min time'} s per member) passes "
              "(then **noisy**, with the coefficient of variation of the round medians, *CV*).",
              f"- *median ms* = median of the per-round medians of the primary timing (device_ms on CUDA, host_ms on "
              f"CPU), *95% CI* = {s['ci']}; *img/s* = batch / median.",
              "- *GFLOP/s* = 2 × MACs per image × batch / median; *% peak* = share of the peak measured in this run "
              "(Machine table; CPU rows of every precision against the float32 sgemm peak).",
              f"- *memory MiB*: CPU {MEMORY_KIND['cpu']}; CUDA {MEMORY_KIND['cuda']}.",
              "- *measured in*: rows of comparison members are the comparison group's measurement (interleaved), "
              "not a second one.", ""]
    lines += ["## Backends × batch", ""]
    rows = []
    for x in r["results"]:
        p = x[x["primary"]] or x["host_ms"]
        rows.append({"backend": x["name"], "batch": x["batch"], "precision": x["precision"], "math mode": x["math_mode"],
                     "scope": x["scope"], "median ms": _fmt_ms(x["median_ms"]), "95% CI": _ci(x["median_ci95_ms"]),
                     "p90": _fmt_ms(p["p90"]), "p99": _fmt_ms(p["p99"]),
                     "host median ms": _fmt_ms(x["host_ms"]["median"]) if x["device_ms"] else "",
                     "img/s": f"{x['throughput_ips']:.1f}",
                     "GFLOP/s": "" if x.get("gflops") is None else f"{x['gflops']:.1f}",
                     "% peak": _pct(x.get("peak_share")),
                     "rounds×it": f"{x['rounds']}×{x['round_iters']}", "CV": _pct(x["cv"]),
                     "noisy": "NOISY" if x["noisy"] else "",
                     "threads": x["threads"], "memory MiB": "" if x.get("memory_mb") is None else f"{x['memory_mb']:.0f}",
                     "measured in": x.get("measured_in", "")})
    lines += informative_table(rows, keep=("backend", "batch", "median ms", "noisy"))
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
              f"Same backend type, interleaved rounds; {c['metric']}. "
              f"Folded speedup = {c['ratios']['speedup_folded_vs_unfolded']}; "
              f"NF/BN = {c['ratios']['ratio_nf_folded_to_bn_folded']}. Twin: {c['twin']}. "
              "Intervals: 95% bootstrap over rounds.", ""]
    crows = []
    for x in sorted(c["rows"], key=lambda x: (x["backend_type"], x["batch"])):
        row = {"backend type": x["backend_type"], "batch": x["batch"], "unfolded ms": _fmt_ms(x["unfolded_ms"]),
               "NF folded ms": _fmt_ms(x["nf_folded_ms"]), "BN folded ms": _fmt_ms(x["bn_folded_ms"])}
        for key, label in RATIO_LABEL.items():
            v = x[key]
            row[label] = "" if v is None else f"{v:.3f}" + (" NOISY" if x[f"{key}_noisy"] else "")
            row[f"{label} 95% CI"] = _ci(x[f"{key}_ci95"], "{:.3f}")
        row["rounds"] = x["rounds"]
        crows.append(row)
    lines += informative_table(crows, keep=("backend type", "batch", "folded speedup", "NF/BN folded"))
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


__all__ = ["BENCH_JSON", "BENCH_MD", "LATENCY_PNG", "THROUGHPUT_PNG", "RATIO_LABEL", "BenchError", "annotate_work",
           "bench_report", "informative_table", "parse_batches", "render_markdown", "work_model"]
