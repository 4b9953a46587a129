"""nf_resnet50 (randomised weights) at 224x224 on the CPU backends, batch 1 and 32: per-backend
latency plus unfolded NF vs folded NF vs folded BN twin side by side (torch CPU and ONNX Runtime CPU).

    python bench/nf_resnet50_cpu.py [--out bench/results/nf_resnet50-cpu-DATE] [--min-time 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_suite import export_random_run, write_random_run  # noqa: E402

from nfdeploy.bench import bench_report  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"nf_resnet50-cpu-{date.today()}")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        run = write_random_run(Path(td) / "run", "nf_resnet50", input_size=args.size)
        export_random_run(run, Path(td) / "export", ("fp32",), None, False, print)
        bench_report(Path(td) / "export", args.out, batches=tuple(int(b) for b in args.batches.split(",")),
                     only=["torch-cpu-fp32", "onnxruntime-cpu-fp32"], min_time=args.min_time, warmup=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
