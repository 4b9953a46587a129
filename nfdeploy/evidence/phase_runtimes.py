"""Phases 3 and 4: the runtimes beside torch.

3. ONNX Runtime CUDA EP (fp32, TF32, fp16 ONNX; IO binding): parity and latency. Needs onnxruntime-gpu on
   PYTHONPATH (docs/gpu-runbook.md); nf_resnet50's ONNX is exported here, from the same seeded weights.
   Without the CUDA EP, ONNX Runtime CPU stands in.
4. TensorRT-RTX: what the builder said on the CPU machine (the bundle's trt_rtx.json) and what the runtime
   says on this GPU, when tensorrt_rtx is importable here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nfdeploy.artifacts import MANIFEST, read_json
from nfdeploy.errors import one_line
from nfdeploy.evidence.bundle import BUNDLE_RTX, RTX_RECORD
from nfdeploy.evidence.context import Suite, capabilities
from nfdeploy.evidence.fold_latency import latency_digest
from nfdeploy.evidence.saved_parity import parity_digest, parity_with_outputs
from nfdeploy.evidence.steps import Phase
from nfdeploy.perf import BenchOptions, bench_report


def run_phase3(suite: Suite) -> None:
    ph = suite.phase(3)
    caps = ph.step("onnxruntime", lambda: capabilities()["onnxruntime"], limit=60)
    cuda_ep = bool(caps and "CUDAExecutionProvider" in caps.get("providers", []))
    if not cuda_ep:
        ph.skip(
            "ONNX Runtime CUDA EP",
            "CUDAExecutionProvider not available: "
            + json.dumps(caps)[:300]
            + " (install onnxruntime-gpu first: docs/gpu-runbook.md)",
        )
    only = ["onnxruntime-cuda"] if cuda_ep else ["onnxruntime-cpu"]
    p = suite.plan
    ph.step(
        "parity nf_digits (carried ONNX)",
        lambda: ort_parity(suite, ph, "nf_digits", suite.digits_export(), only, p.digits_samples, p.digits_invariance),
        limit=60,
    )
    r50 = suite.exports / "nf_resnet50"
    ph.step("export nf_resnet50 (fp32, fp16 ONNX)", lambda: {"dir": str(suite.r50_onnx_export())}, limit=150)
    if (r50 / MANIFEST).is_file():
        ph.step(
            "parity nf_resnet50",
            lambda: ort_parity(suite, ph, "nf_resnet50", r50, only, p.r50_samples, p.r50_invariance),
            limit=60,
        )
    for name, export in (("nf_digits", suite.digits_export()), ("nf_resnet50", r50)):
        if not (export / MANIFEST).is_file():
            ph.skip(f"ONNX Runtime latency {name}", "no ONNX export")
            continue
        ph.step(
            f"latency {name}",
            lambda name=name, export=export: ort_latency(
                suite, ph, name, export, only, max(ph.left() - 10, 5) * (0.4 if name == "nf_digits" else 1.0)
            ),
            reserve=5,
        )
    ph.save()


def ort_parity(
    suite: Suite, ph: Phase, name: str, export: Path, only: list[str], samples: int, inv: int
) -> dict[str, Any]:
    """Parity (outputs saved) of ONNX Runtime on this machine's EP, beside ONNX Runtime CPU fp32."""
    rep = parity_with_outputs(
        export,
        ph.dir / f"parity-{name}",
        only=only + ["onnxruntime-cpu-fp32"],
        max_samples=samples,
        invariance_samples=inv,
        log=suite.sublog,
    )
    ph.results[f"parity {name}"] = parity_digest(rep)
    return {"ok": rep["ok"], "failed": rep["failed"], "inputs_sha256": rep["inputs_sha256"]}


def ort_latency(suite: Suite, ph: Phase, name: str, export: Path, only: list[str], budget: float) -> dict[str, Any]:
    """Latency of the export's ONNX Runtime backends named by `only` (nfdeploy.perf.bench_report; the one call
    of it in the suite). Without the fold comparison: its two extra graph exports per model do not fit phase 3's
    budget, and phase 2 measures the fold's speed on the same device."""
    settings = BenchOptions(
        batches=tuple(suite.plan.batches), only=tuple(only), min_time=1.0, warmup=0.5, compare=False, budget_s=budget
    )
    rep = bench_report(export, ph.dir / f"bench-{name}", settings, log=suite.sublog).to_dict()
    ph.results[f"latency {name}"] = bench_digest(rep)
    return {"cells": len(rep["results"]), "failed": len(rep["failed"]), "over_budget": len(rep["over_budget"])}


def bench_digest(rep: dict[str, Any]) -> dict[str, Any]:
    """A bench report's digest: no fold comparison in phase 3 (ort_latency says why); phase 2 has the ratios."""
    return latency_digest({**rep, "ratios": []})


def run_phase4(suite: Suite) -> None:
    ph = suite.phase(4)
    built = suite.options.bundle / RTX_RECORD
    if built.is_file():
        ph.results["TensorRT-RTX build (CPU machine)"] = read_json(built, "TensorRT-RTX build record")
    else:
        ph.skip("TensorRT-RTX build record", f"{built} not in the bundle")
    ph.step("TensorRT-RTX runtime on this GPU", lambda: trt_rtx_runtime(suite, ph), limit=60)
    ph.save()


def trt_rtx_runtime(suite: Suite, ph: Phase) -> dict[str, Any]:
    """Deserialize the carried engines with tensorrt_rtx's own runtime and record every message it logs."""
    try:
        import tensorrt_rtx as trt
    except Exception as e:  # noqa: BLE001 - not importable here: the reason is the finding
        ph.skip(
            "TensorRT-RTX runtime",
            f"tensorrt_rtx is not importable here ({one_line(e, 200)}); its wheels "
            "were not carried (over 100 MB: see docs/gpu-runbook.md)",
        )
        return {"importable": False}
    if not suite.cuda:
        ph.skip("TensorRT-RTX runtime", "no CUDA device visible to torch: an engine cannot be deserialized here")
        return {"importable": True, "cuda": False}
    messages: list[str] = []

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            messages.append(f"{severity}: {msg}")

    engines = sorted((suite.options.bundle / BUNDLE_RTX).glob("*.engine"))
    out: dict[str, Any] = {"version": trt.__version__, "engines": {}}
    for path in engines:
        engine = trt.Runtime(Logger()).deserialize_cuda_engine(path.read_bytes())
        out["engines"][path.name] = {"deserialized": engine is not None, "messages": messages[:]}
        messages.clear()
    ph.results["TensorRT-RTX runtime"] = out
    return {"engines": len(engines)}


__all__ = ["bench_digest", "ort_latency", "ort_parity", "run_phase3", "run_phase4", "trt_rtx_runtime"]
