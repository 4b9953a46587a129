"""What 7-bit weights (reduce_range, the int8-ort form's fixed choice) cost or save on THIS CPU: the same
fp32 graph quantized by onnxruntime.quantization in the ONNX Runtime form (U8S8, QDQ, per-channel
weights, minmax) with 8-bit and with 7-bit weights, run on ONNX Runtime's CPU EP, logits compared with
the fp32 graph (SQNR, top-1 agreement). On CPUs without VNNI, u8 x s8 pairs summed in int16 saturate
with 8-bit weights; with VNNI they do not, and 7 bits only cost resolution. The CPU's flags are recorded.

Model: nf_resnet50 (randomised, folded, 224²), calibrated on alternate 224² tiles of scikit-learn's two
sample photographs, measured on the others.

    python bench/int8_weight_bits.py --out bench/results/int8-weight-bits-cpu-DATE
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.int8_study import photo_tiles  # noqa: E402
from nfdeploy.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from nfdeploy.bench import machine_info  # noqa: E402
from nfdeploy.export.onnx_graph import export_module, run_with_values  # noqa: E402
from nfdeploy.metrics import sqnr_db  # noqa: E402
from nfdeploy.reports import markdown_table  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "avx_vnni", "amx")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import onnxruntime.quantization as ortq

    from nfdeploy.fold import fold_model, randomize_
    from nfdeploy.models import create_model

    tiles = photo_tiles()
    calib, x = tiles[0::2], tiles[1::2]
    rows = []
    with tempfile.TemporaryDirectory() as td:
        fp32 = Path(td) / "nf_resnet50.onnx"
        torch.manual_seed(0)
        net, _ = fold_model(randomize_(create_model("nf_resnet50").eval(), seed=0).double(), dtype=torch.float32)
        export_module(net, fp32, (3, 224, 224), opset=18)
        ref = run_with_values(fp32, [], x)[1]
        import onnx

        name = onnx.load(str(fp32)).graph.input[0].name
        for bits, reduce_range in ((8, False), (7, True)):
            q = Path(td) / f"int8-ort-{bits}bit.onnx"

            class Reader(ortq.CalibrationDataReader):
                def __init__(self):
                    self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

                def get_next(self):
                    return next(self.it, None)

            ortq.quantize_static(str(fp32), str(q), Reader(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                                 reduce_range=reduce_range, activation_type=ortq.QuantType.QUInt8,
                                 weight_type=ortq.QuantType.QInt8, calibrate_method=ortq.CalibrationMethod.MinMax,
                                 extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            y = run_with_values(q, [], x)[1]
            rows.append({"weights": f"{bits}-bit" + (" (reduce_range)" if reduce_range else ""),
                         "logits SQNR dB": float(sqnr_db(ref, y)),
                         "top-1 agreement": float(np.mean(y.argmax(1) == ref.argmax(1))), "tiles": int(len(x))})
            print(rows[-1], flush=True)
    command = "python bench/int8_weight_bits.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = {"command": command, "machine": machine_info(), "cpu_flags": cpu_flags(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "int8_weight_bits.json", report)
    md = ["# int8-ort: 8-bit vs 7-bit weights on this CPU (nf_resnet50, randomised, 224², photo tiles)", "",
          f"Command: `{command}`. CPU flags of note: {', '.join(report['cpu_flags']) or 'none (no AVX-512, no VNNI)'}.", "",
          markdown_table(rows, floatfmt="{:.3g}"), ""]
    atomic_write_text(args.out / "int8_weight_bits.md", "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
