"""What 7-bit weights (reduce_range, the int8-ort form's default) cost or save on THIS CPU: the same fp32
graph quantized by nfdeploy's quantize_graph in the ONNX Runtime form (U8S8, QDQ, per-channel weights,
minmax) with --int8-ort-weight-bits 8 and 7, run on ONNX Runtime's CPU EP, logits compared with
the fp32 graph (SQNR, top-1 agreement). On CPUs without VNNI, u8 x s8 pairs summed in int16 saturate
with 8-bit weights; with VNNI they do not, and 7 bits only cost resolution. The CPU's flags are recorded.

Model: nf_resnet50 (randomised, folded, 224²), calibrated on alternate 224² tiles of scikit-learn's two
sample photographs, measured on the others.

    python -m bench.int8_weight_bits --out bench/results/int8-weight-bits-cpu-DATE
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from nfdeploy.artifacts import atomic_write_json, atomic_write_text
from nfdeploy.export.onnx_graph import run_with_values
from nfdeploy.export.quantize import CalibrationData, CalibrationOptions, quantize_graph
from nfdeploy.export.study_inputs import export_randomised, photo_tiles
from nfdeploy.machine import cpu_flags
from nfdeploy.metrics import sqnr_db
from nfdeploy.perf import machine_info
from nfdeploy.render import markdown_table

NOTED_FLAGS = ("avx512", "avx_vnni", "amx")  # what decides whether u8 x s8 pairs saturate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    tiles = photo_tiles()
    calib, x = tiles[0::2], tiles[1::2]
    rows = []
    with tempfile.TemporaryDirectory() as td:
        fp32 = export_randomised("nf_resnet50", Path(td) / "nf_resnet50.onnx")
        ref = run_with_values(fp32, [], x)[1]
        for bits in (8, 7):
            q = Path(td) / f"int8-ort-{bits}bit.onnx"
            quantize_graph(
                fp32,
                q,
                "int8-ort",
                CalibrationData(calib, "sklearn sample photos (alternate 224² tiles)", "photos"),
                CalibrationOptions(samples=len(calib), ort_weight_bits=bits),
            )
            y = run_with_values(q, [], x)[1]
            rows.append(
                {
                    "weights": f"{bits}-bit" + (" (reduce_range, the default)" if bits == 7 else ""),
                    "logits SQNR dB": float(sqnr_db(ref, y)),
                    "top-1 agreement": float(np.mean(y.argmax(1) == ref.argmax(1))),
                    "tiles": int(len(x)),
                }
            )
            print(rows[-1], flush=True)
    command = "python -m bench.int8_weight_bits " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = {"command": command, "machine": machine_info(), "cpu_flags": cpu_flags(NOTED_FLAGS), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "int8_weight_bits.json", report)
    md = [
        "# int8-ort: 8-bit vs 7-bit weights on this CPU (nf_resnet50, randomised, 224², photo tiles)",
        "",
        f"Command: `{command}`. CPU flags of note: {', '.join(report['cpu_flags']) or 'none (no AVX-512, no VNNI)'}.",
        "",
        markdown_table(rows, floatfmt="{:.3g}"),
        "",
    ]
    atomic_write_text(args.out / "int8_weight_bits.md", "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
