"""Prepare the GPU run on the CPU machine: the carried bundle and the CPU half of the comparison.

    python bench/gpu_prepare.py [--bundle .gpu/bundle] [--cpu-out .gpu/cpu] [--epochs 10]

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

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.gpu.parity_outputs import run_parity  # noqa: E402
from bench.gpu.sources import BUNDLE_EXPORT, BUNDLE_INFO, BUNDLE_RUN  # noqa: E402
from bench.gpu.steps import write_json  # noqa: E402
from nfdeploy.artifacts import Manifest  # noqa: E402
from nfdeploy.errors import one_line  # noqa: E402

HOPPER_CC = "9.0"


def build_rtx(export: Path, dest: Path, log) -> dict:
    """What TensorRT-RTX's builder says for Hopper, and an engine for its default targets."""
    from nfdeploy.export.presets import trt_options
    from nfdeploy.export.tensorrt import build_engine

    manifest = Manifest.read(export, verify_files=False)
    shape = manifest.input.chw
    onnx = export / manifest.onnx["fp32"].file
    dest.mkdir(parents=True, exist_ok=True)
    rec: dict = {"onnx": onnx.name, "input_shape": list(shape)}
    try:
        r = build_engine(
            onnx,
            dest / "hopper.engine",
            "fp32",
            shape,
            trt_options(flavour="tensorrt-rtx", profiles=("1:8:32",), compute_capabilities=(HOPPER_CC,)),
        )
        rec["hopper"] = {"built": True, "record": r}
    except Exception as e:  # noqa: BLE001 - the builder's refusal is the finding
        rec["hopper"] = {"built": False, "error": one_line(e, 1000)}
    log(f"  TensorRT-RTX for CC {HOPPER_CC}: {rec['hopper'].get('error') or 'built'}")
    try:
        r = build_engine(
            onnx, dest / "default.engine", "fp32", shape, trt_options(flavour="tensorrt-rtx", profiles=("1:8:32",))
        )
        rec["default_targets"] = {"built": True, "record": r}
        log(f"  TensorRT-RTX default targets: {r.get('compute_capabilities')}")
    except Exception as e:  # noqa: BLE001
        rec["default_targets"] = {"built": False, "error": one_line(e, 1000)}
        log(f"  TensorRT-RTX default targets: {rec['default_targets']['error']}")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / ".gpu" / "bundle")
    ap.add_argument("--cpu-out", type=Path, default=REPO / ".gpu" / "cpu")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--preset", default="all_precisions")
    ap.add_argument("--samples", type=int, default=512, help="parity samples (the GPU suite uses 512 for digits)")
    ap.add_argument("--no-rtx", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from nfdeploy.artifacts import sha256_file
    from nfdeploy.config import load_recipe
    from nfdeploy.export import export_options, export_run
    from nfdeploy.train import train

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    log = lambda m: print(f"[+{time.perf_counter() - t0:6.1f}s] {m}", flush=True)  # noqa: E731
    bundle = args.bundle.resolve()
    if bundle.exists():
        shutil.rmtree(bundle)
    run, export = bundle / BUNDLE_RUN, bundle / BUNDLE_EXPORT

    t = time.perf_counter()
    recipe = load_recipe("nf_digits", {"train.epochs": args.epochs})
    res = train(recipe, run, progress=False, log=lambda m: log("  " + str(m)))
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    export_run(run, export, export_options(args.preset), log=lambda m: log("  " + str(m)))
    timings["export"] = time.perf_counter() - t
    rtx = None
    if not args.no_rtx:
        t = time.perf_counter()
        try:
            rtx = build_rtx(export, bundle / "rtx", log)
        except Exception as e:  # noqa: BLE001 - no tensorrt_rtx here: say so in the bundle
            rtx = {"error": one_line(e, 400)}
        write_json(bundle / "trt_rtx.json", rtx)
        timings["tensorrt_rtx"] = time.perf_counter() - t
    files = {
        str(p.relative_to(bundle)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    }
    info = {
        "created_by": "bench/gpu_prepare.py",
        "recipe": "nf_digits",
        "epochs": args.epochs,
        "seed": recipe.train.seed,
        "torch": torch.__version__,
        "train_summary": {k: res.summary.get(k) for k in ("test_accuracy", "device", "seconds") if k in res.summary},
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
    }
    write_json(bundle / BUNDLE_INFO, info)
    log(f"bundle {bundle}: {len(files)} files, {info['total_bytes'] / 2**20:.2f} MiB")

    t = time.perf_counter()
    rep = run_parity(
        export,
        args.cpu_out.resolve() / "parity-nf_digits",
        only=["torch-cpu", "onnxruntime-cpu"],
        max_samples=args.samples,
        log=lambda m: log("  " + str(m)),
    )
    timings["cpu_parity"] = time.perf_counter() - t
    write_json(
        args.cpu_out.resolve() / "prepare.json",
        {"timings_s": timings, "bundle": str(bundle), "inputs_sha256": rep["inputs_sha256"], "ok": rep["ok"]},
    )
    log(
        f"CPU half: ok={rep['ok']} failed={rep['failed']}; inputs sha256 {rep['inputs_sha256'][:16]}…; "
        f"timings {json.dumps({k: round(v, 1) for k, v in timings.items()})}"
    )
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
