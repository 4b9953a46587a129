"""Prepare the GPU run on the CPU machine: the carried bundle and the CPU half of the comparison.

1. trains the digits model (recipe nf_digits, its fixed seed) into BUNDLE/runs/nf_digits;
2. exports it (fp32, fp16, bf16 ONNX: preset all_precisions) into BUNDLE/exports/nf_digits;
3. asks the TensorRT-RTX builder for an engine for the GPU's compute capability (9.0, Hopper) and records
   exactly what it says in BUNDLE/trt_rtx.json; builds an engine for its default targets into
   BUNDLE/rtx/ so the GPU machine can say what its runtime makes of one;
4. writes BUNDLE/bundle.json (every file's size and sha256);
5. runs the CPU half: parity of the very same ONNX files on this machine's CPU backends, outputs saved,
   into CPU_OUT/parity-nf_digits (not carried: the GPU half is compared against it here).

BUNDLE is what travels (carry it: `.gpu/bundle`); it must stay well under 64 MiB with the repo.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nfdeploy.artifacts import Manifest, atomic_write_json
from nfdeploy.config import load_recipe
from nfdeploy.errors import one_line
from nfdeploy.evidence.bundle import BUNDLE_EXPORT, BUNDLE_INFO, BUNDLE_RTX, BUNDLE_RUN, RTX_RECORD, bundle_files
from nfdeploy.evidence.saved_parity import parity_with_outputs
from nfdeploy.evidence.workloads import export_onnx
from nfdeploy.train import train

HOPPER_CC = "9.0"


@dataclass
class PrepareOptions:
    bundle: Path
    cpu_out: Path
    epochs: int = 10
    preset: str = "all_precisions"
    samples: int = 512  # parity samples (the GPU suite uses 512 for digits)
    rtx: bool = True


def build_rtx_record(export: Path, dest: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """What TensorRT-RTX's builder says for Hopper, and an engine for its default targets (the one place the
    suite builds engines)."""
    from nfdeploy.export.engine_build import build_engine
    from nfdeploy.export.presets import TrtOverrides, trt_options

    manifest = Manifest.read(export, verify_files=False)
    shape = manifest.input.chw
    onnx = export / manifest.onnx["fp32"].file
    dest.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"onnx": onnx.name, "input_shape": list(shape)}
    targets = {
        "hopper": ("hopper.engine", {"compute_capabilities": (HOPPER_CC,)}),
        "default_targets": ("default.engine", {}),
    }
    for key, (file, extra) in targets.items():
        try:
            opts = trt_options(None, TrtOverrides(flavour="tensorrt-rtx", profiles=("1:8:32",), **extra))
            rec[key] = {"built": True, "record": build_engine(onnx, dest / file, "fp32", shape, opts)}
        except Exception as e:  # noqa: BLE001 - the builder's refusal is the finding
            rec[key] = {"built": False, "error": one_line(e, 1000)}
    log(f"  TensorRT-RTX for CC {HOPPER_CC}: {rec['hopper'].get('error') or 'built'}")
    default = rec["default_targets"]
    log(f"  TensorRT-RTX default targets: {default.get('error') or default['record'].get('compute_capabilities')}")
    return rec


def prepare_bundle(options: PrepareOptions, log: Callable[[str], None] = print) -> bool:
    """Write the bundle and the CPU half (see the module docstring); True when the CPU half's parity passed.
    Each log line starts with the seconds since the start."""
    t0 = time.perf_counter()

    def stamped(m: Any) -> None:
        log(f"[+{time.perf_counter() - t0:6.1f}s] {m}")

    timings: dict[str, float] = {}
    bundle = options.bundle.resolve()
    if bundle.exists():
        shutil.rmtree(bundle)
    run, export = bundle / BUNDLE_RUN, bundle / BUNDLE_EXPORT

    def sub(m: Any) -> None:
        stamped("  " + str(m))

    t = time.perf_counter()
    recipe = load_recipe("nf_digits", {"train.epochs": options.epochs})
    res = train(recipe, run, progress=False, log=sub)
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    export_onnx(run, export, sub, preset=options.preset)
    timings["export"] = time.perf_counter() - t
    if options.rtx:
        t = time.perf_counter()
        try:
            rtx = build_rtx_record(export, bundle / BUNDLE_RTX, stamped)
        except Exception as e:  # noqa: BLE001 - no tensorrt_rtx here: say so in the bundle
            rtx = {"error": one_line(e, 400)}
        atomic_write_json(bundle / RTX_RECORD, rtx)
        timings["tensorrt_rtx"] = time.perf_counter() - t
    files = bundle_files(bundle)
    info = {
        "created_by": "python -m bench.gpu_prepare (nfdeploy.evidence.prepare)",
        "recipe": "nf_digits",
        "epochs": options.epochs,
        "seed": recipe.train.seed,
        "torch": torch.__version__,
        "train_summary": {k: res.summary.get(k) for k in ("test_accuracy", "device", "seconds") if k in res.summary},
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
    }
    atomic_write_json(bundle / BUNDLE_INFO, info)
    stamped(f"bundle {bundle}: {len(files)} files, {info['total_bytes'] / 2**20:.2f} MiB")
    return cpu_half(options, export, timings, bundle, stamped)


def cpu_half(
    options: PrepareOptions, export: Path, timings: dict[str, float], bundle: Path, log: Callable[[str], None]
) -> bool:
    """Parity of the bundle's ONNX on this machine's CPU backends, outputs saved, and prepare.json beside it."""
    cpu_out = options.cpu_out.resolve()
    t = time.perf_counter()
    rep = parity_with_outputs(
        export,
        cpu_out / "parity-nf_digits",
        only=["torch-cpu", "onnxruntime-cpu"],
        max_samples=options.samples,
        log=lambda m: log("  " + str(m)),
    )
    timings["cpu_parity"] = time.perf_counter() - t
    atomic_write_json(
        cpu_out / "prepare.json",
        {"timings_s": timings, "bundle": str(bundle), "inputs_sha256": rep["inputs_sha256"], "ok": rep["ok"]},
    )
    log(
        f"CPU half: ok={rep['ok']} failed={rep['failed']}; inputs sha256 {rep['inputs_sha256'][:16]}…; "
        f"timings {json.dumps({k: round(v, 1) for k, v in timings.items()})}"
    )
    return bool(rep["ok"])


__all__ = ["HOPPER_CC", "PrepareOptions", "build_rtx_record", "cpu_half", "prepare_bundle"]
