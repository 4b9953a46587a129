"""What OpenVINO's CPU plugin computes, on an export's real test data (issue 17 §3 and §4):

A. Precision hints: the fp32 ONNX file compiled with INFERENCE_PRECISION_HINT f32, bf16 and no hint
   (the plugin's default): the precision the compiled model reports, the runtime precision of its
   convolutions/matmuls, rel L2 and top-1 agreement against the float64 reference, beside ONNX Runtime.
B. Instruction-set caps: each cap in a child process (oneDNN and OpenVINO read them once per process):
   ONEDNN_MAX_CPU_ISA (oneDNN's, which OpenVINO's CPU plugin embeds) and OV_CPU_MAX_ISA (OpenVINO's own
   kernels), alone and together; OpenVINO fp32 (hint f32) and both int8 forms, and ONNX Runtime fp32 as
   the control (MLAS dispatches on CPUID, no switch). Each against the uncapped run: share of bitwise
   identical logits, max ULP (float32), rel L2, top-1 agreement; and the kernels the plugin chose.
   One thread everywhere, so only the instruction set differs. A graph whose convolutions the plugin does not
   run in its precision under a cap is not that backend there: it is left out of that cap's rows.

    python -m bench.openvino_hints_isa EXPORT_DIR --out bench/results/openvino-hints-isa-DATE
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.machine import cpu_flags
from nfdeploy.metrics import compare_outputs, top1_agreement
from nfdeploy.precision import get_precision
from nfdeploy.render import markdown_table
from nfdeploy.runtime.base import BackendSpec, BackendUnavailable
from nfdeploy.runtime.ort import OrtBackend

OPENVINO = {"openvino fp32": "fp32", "openvino int8": "int8", "openvino int8-ort": "int8-ort"}  # label -> precision
NOTED_FLAGS = ("avx", "amx", "sse4")
REPO = Path(__file__).resolve().parent.parent
CAPS = {  # label -> environment
    "native": {},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ONEDNN_MAX_CPU_ISA=AVX": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "OV_CPU_MAX_ISA=SSE41": {"OV_CPU_MAX_ISA": "SSE41"},
    "both=AVX": {"ONEDNN_MAX_CPU_ISA": "AVX", "OV_CPU_MAX_ISA": "AVX"},
    "both=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "OV_CPU_MAX_ISA": "SSE41"},
}


def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    return compare_outputs(ref, out)["rel_l2"]


def child(export: Path, x_path: Path, out: Path) -> None:
    """Run every graph once on the saved inputs under this process's environment, on one thread (OpenVINO: hint
    f32, the int8 forms included, latency mode); save outputs and kernels."""
    from nfdeploy.runtime.openvino import OpenVinoBackend, mac_kernels

    x = np.load(x_path)
    shape = tuple(x.shape[1:])
    outs, kernels = {}, {}
    for label, precision in OPENVINO.items():
        path = export / get_precision(precision).onnx_file
        if not path.is_file():
            continue
        try:
            with OpenVinoBackend(BackendSpec("openvino", "cpu", precision), shape, path, threads=1) as b:
                outs[label] = b.run(x)
                kernels[label] = mac_kernels(b.compiled)  # after the run: a dynamic shape's kernels are chosen then
        except BackendUnavailable:
            continue
    fp32 = export / get_precision("fp32").onnx_file
    with OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), shape, fp32, threads=1) as b:
        outs["onnxruntime fp32"] = b.run(x)
    np.savez(out, **outs)
    out.with_suffix(".json").write_text(json.dumps(kernels))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--max-samples", type=int, default=512)
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.export, *args.child)
        return 0
    import onnxruntime as ort
    import openvino as ov
    import torch

    from nfdeploy.check.backends import load_export_source
    from nfdeploy.check.parity import load_parity_data
    from nfdeploy.metrics import ulp_error
    from nfdeploy.runtime.openvino import core, mac_precisions, runtime_precisions

    torch.set_num_threads(1)
    source = load_export_source(args.export)
    data = load_parity_data(source, max_samples=args.max_samples)
    x, desc = data.x, data.description
    x = np.ascontiguousarray(x, dtype=np.float32)
    with torch.no_grad():
        ref = source.model.double()(torch.from_numpy(x).double()).numpy()
    report = {
        "command": "python -m bench.openvino_hints_isa " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "export": str(args.export),
        "data": desc,
        "openvino": ov.__version__,
        "onnxruntime": ort.__version__,
        "cpu": core().get_property("CPU", "FULL_DEVICE_NAME"),
        "capabilities": list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "default_hint": core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name(),
        "cpu_flags": cpu_flags(NOTED_FLAGS),
        "hints": [],
        "caps": [],
    }
    # A. precision hints: ONNX Runtime on its default threads beside OpenVINO compiled by hand, because the hint
    # itself is what varies here (none at all included), which an OpenVinoBackend fixes by its precision.
    fp32 = args.export / get_precision("fp32").onnx_file
    with OrtBackend(BackendSpec("onnxruntime", "cpu", "fp32"), source.input_shape, fp32) as b:
        y = b.run(x)
    report["hints"].append(
        {
            "runtime": "onnxruntime",
            "hint": "-",
            "compiled precision": "-",
            "MAC layers": "-",
            "rel L2 vs fp64": rel_l2(y, ref),
            "top-1 agreement": top1_agreement(y, ref),
        }
    )
    for hint in ("f32", "bf16", None):
        cm = core().compile_model(str(fp32), "CPU", {"INFERENCE_PRECISION_HINT": hint} if hint else {})
        y = np.asarray(cm(x)[0])
        report["hints"].append(
            {
                "runtime": "openvino",
                "hint": hint or "(none: default)",
                "compiled precision": cm.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                "MAC layers": str(mac_precisions(runtime_precisions(cm))),
                "rel L2 vs fp64": rel_l2(y, ref),
                "top-1 agreement": top1_agreement(y, ref),
            }
        )
    # B. instruction-set caps, one child process each
    with tempfile.TemporaryDirectory() as td:
        xp = Path(td) / "x.npy"
        np.save(xp, x)
        runs = {}
        for label, env in CAPS.items():
            out = Path(td) / f"{len(runs)}.npz"
            base = {
                k: v
                for k, v in os.environ.items()
                if k not in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA", "DNNL_MAX_CPU_ISA")
            }
            subprocess.run(  # as a module from the repository root: this file's own nfdeploy, from any directory
                [sys.executable, "-m", "bench.openvino_hints_isa", str(args.export.resolve()), "--child", xp, out],
                cwd=REPO,
                env={**base, **env},
                check=True,
                capture_output=True,
            )
            runs[label] = (dict(np.load(out)), json.loads(out.with_suffix(".json").read_text()))
    native = runs["native"][0]
    for label, (outs, kernels) in runs.items():
        for name, y in outs.items():
            if name not in native:
                continue  # not that backend on this CPU uncapped: nothing to compare with
            n = native[name]
            report["caps"].append(
                {
                    "cap": label,
                    "backend": name,
                    "bitwise identical": float(np.mean(y == n)),
                    "max ULP": float(ulp_error(y, n, torch.float32).max()),
                    "rel L2 vs native": rel_l2(y, n),
                    "rel L2 vs fp64": rel_l2(y, ref),
                    "top-1 agreement vs native": top1_agreement(y, n),
                    "kernels": ", ".join(f"{k}×{v}" for k, v in kernels.get(name, {}).items()) or "(MLAS)",
                }
            )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "hints_isa.json", report)
    md = [
        "# OpenVINO on this CPU: precision hints and instruction-set caps",
        "",
        f"Command: `{report['command']}`. Data: {desc}. OpenVINO {report['openvino']}, "
        f"ONNX Runtime {report['onnxruntime']}.",
        f"CPU: {report['cpu']}; flags {', '.join(report['cpu_flags'])}; "
        f"OpenVINO capabilities {report['capabilities']}; "
        f"default INFERENCE_PRECISION_HINT {report['default_hint']}.",
        "",
        "## A. Precision hints (fp32 ONNX file)",
        "",
        markdown_table(report["hints"], floatfmt="{:.3g}"),
        "",
        "## B. Instruction-set caps (1 thread; each against the uncapped run)",
        "",
        markdown_table(report["caps"], floatfmt="{:.3g}"),
    ]
    atomic_write_text(args.out / "hints_isa.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
