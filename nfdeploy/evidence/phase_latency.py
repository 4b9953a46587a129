"""Phase 2: latency on torch CUDA.

Unfolded NF, folded NF and folded BN twin, fp32/TF32/fp16/bf16, eager and CUDA graph, batches 1..256,
CUDA-event device time; the three variants of each precision and mode timed together in interleaved rounds
(fold_latency.py), so the folded speedup and NF/BN come from the same rounds as the latencies. Model TFLOP/s
and its share of a matmul peak measured in the same run for the same precision (best of before and after).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nfdeploy.artifacts import atomic_write_json
from nfdeploy.check.backends import load_export_source
from nfdeploy.errors import one_line
from nfdeploy.evidence.context import TORCH_PRECISIONS, Suite
from nfdeploy.evidence.fold_latency import fold_groups, fold_latency, fold_latency_digest
from nfdeploy.evidence.steps import Phase
from nfdeploy.evidence.workloads import twin_backends
from nfdeploy.perf.flops import torch_macs
from nfdeploy.perf.peak import cpu_matmul_peak, cuda_matmul_peak
from nfdeploy.render import markdown_table

FLOPS_METHOD = (
    "FLOPs = 2 x MACs of convolutions and matmuls (torch.utils.flop_counter) of the NF model per image (the twin "
    "has the same convs); peak = best of the matmul peaks measured before/after in this run, same precision"
)


def run_phase2(suite: Suite) -> None:
    ph = suite.phase(2)
    precs = TORCH_PRECISIONS if suite.cuda else ("fp32",)
    peaks: dict[str, list[dict[str, Any]]] = {}
    ph.step(
        "matmul peak (before)", lambda: measure_peaks(suite, ph, precs, peaks, "before the model timings"), limit=40
    )
    if not suite.cuda:
        ph.skip("torch CUDA latency", "no CUDA device visible to torch: the CPU fp32 backends stand in")
    for name, export_fn in workloads(suite):
        share = suite.plan.bench_budget[name]
        ph.step(
            f"latency {name}",
            lambda name=name, export_fn=export_fn, share=share: torch_latency(
                suite, ph, name, export_fn(), max(ph.left() - 40, 10) * share
            ),
            limit=None,
            reserve=35,
        )
        gc.collect()
        if suite.cuda:
            torch.cuda.empty_cache()
    ph.step(
        "matmul peak (after)",
        lambda: measure_peaks(suite, ph, precs, peaks, "after the model timings"),
        limit=40,
        reserve=2,
    )
    ph.step("TFLOP/s and share of peak", lambda: flops_table(suite, ph), limit=60, reserve=1)
    ph.save()


def workloads(suite: Suite) -> list[tuple[str, Callable[[], Path]]]:
    return [("nf_digits", suite.digits_export), ("nf_resnet50", suite.r50_torch_export)]


def measure_peaks(
    suite: Suite, ph: Phase, precisions: tuple[str, ...], peaks: dict[str, list[dict[str, Any]]], when: str
) -> dict[str, Any]:
    """A matmul peak per precision on this device (nfdeploy.perf.peak), appended to `peaks[precision]`."""
    for prec in precisions:
        try:
            pk = cuda_matmul_peak(prec) if suite.cuda else cpu_matmul_peak()
            peaks.setdefault(prec, []).append({**pk, "tflops": pk["gflops"] / 1e3, "when": when})
        except Exception as e:  # noqa: BLE001 - a precision without a matmul here: recorded, with its reason
            ph.skip(f"matmul peak {prec} ({when})", one_line(e, 200))
    ph.results["matmul peak"] = peaks
    return {p: round(v[-1]["tflops"], 2) for p, v in peaks.items()}


def torch_latency(suite: Suite, ph: Phase, name: str, export: Path, budget: float) -> dict[str, Any]:
    """The export's unfolded/folded/twin groups on torch (CUDA: every precision and mode; CPU: fp32), timed in
    interleaved rounds within `budget` seconds."""
    source = load_export_source(export)
    precs, modes = (TORCH_PRECISIONS, suite.torch_modes()) if suite.cuda else (("fp32",), ("",))
    twins = twin_backends(source, precs, modes, suite.dev)
    groups = fold_groups(source, precs, modes, suite.dev, twins)
    rep = fold_latency(
        source,
        groups,
        ph.dir / f"latency-{name}",
        suite.plan.batches,
        min_time=1.0,
        warmup=0.5,
        budget_s=budget,
        log=suite.sublog,
    )
    ph.results[f"latency {name}"] = fold_latency_digest(rep)
    return {"cells": len(rep["results"]), "failed": len(rep["failed"]), "over_budget": len(rep["over_budget"])}


def flops_table(suite: Suite, ph: Phase) -> dict[str, Any]:
    """Achieved TFLOP/s of every latency row and its share of the best matmul peak of its precision."""
    peaks = ph.results.get("matmul peak", {})
    rows = []
    for name, export_fn in workloads(suite):
        lat = ph.results.get(f"latency {name}")
        if not lat:
            continue
        source = load_export_source(export_fn())
        # The unfolded model has the same convolutions and matmuls as the folded one (WS convs are convs).
        gflop = 2 * torch_macs(source.model, source.input_shape) / 1e9
        for r in lat["results"]:
            peak = max((p["tflops"] for p in peaks.get(r["precision"], [])), default=None)
            tflops = gflop * r["batch"] / (r["median_ms"] * 1e-3) / 1e3
            rows.append(
                {
                    "model": name,
                    "backend": r["backend"],
                    "batch": r["batch"],
                    "GFLOP/img": round(gflop, 4),
                    "median ms": r["median_ms"],
                    "metric": r["metric"],
                    "TFLOP/s": tflops,
                    "matmul peak TFLOP/s": peak,
                    "share of peak": tflops / peak if peak else None,
                }
            )
    # A share above 1 is the model beating this run's matmul (another kernel family or math mode), never a
    # figure to read as a share of the device's limit: named, not left silent.
    above = sorted({f"{r['backend']} batch {r['batch']}" for r in rows if (r["share of peak"] or 0) > 1})
    warnings = [f"above the measured matmul peak: {', '.join(above)}"] if above else []
    atomic_write_json(ph.dir / "flops.json", {"method": FLOPS_METHOD, "rows": rows, "warnings": warnings})
    table = markdown_table(rows, floatfmt="{:.4g}") + "".join(f"\nWARNING {w}\n" for w in warnings)
    ph.results["TFLOP/s"] = {"rows": len(rows), "markdown": table, "warnings": warnings}
    return {"rows": len(rows)}


__all__ = ["flops_table", "measure_peaks", "run_phase2", "torch_latency"]
