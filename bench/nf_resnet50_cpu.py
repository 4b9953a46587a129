"""nf_resnet50 (randomised weights) at 224x224 on the CPU backends, batch 1 and 8: unfolded NF vs
folded NF vs folded BN twin in interleaved rounds (torch CPU and ONNX Runtime CPU), ratios with 95%
bootstrap intervals, achieved GFLOP/s and its share of the sgemm peak measured in the same run. The
main-table rows of the group members are the comparison's measurement (one measurement per figure).

    python -m bench.nf_resnet50_cpu [--export EXPORT_DIR] [--out bench/results/nf_resnet50-cpu-DATE]
        [--batches 1,8] [--min-time 2] [--max-time 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

from nfdeploy.export import OnnxOverrides, export_options, export_run
from nfdeploy.perf import BenchOptions, bench_report
from nfdeploy.train.random_run import write_random_run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"nf_resnet50-cpu-{date.today()}")
    ap.add_argument("--export", type=Path, default=None, help="an existing nf_resnet50 export (else made here)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--max-time", type=float, default=20.0, help="cap per member and cell before 'noisy'")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        export = args.export
        if export is None:
            run = write_random_run(Path(td) / "run", "nf_resnet50", input_size=args.size)
            export = Path(td) / "export"
            export_run(run, export, export_options(onnx=OnnxOverrides(precisions=["fp32"], check=False)))
        options = BenchOptions(
            batches=args.batches,
            only=("torch-cpu-fp32", "onnxruntime-cpu-fp32"),
            min_time=args.min_time,
            warmup=1.0,
            max_time=args.max_time,
        )
        bench_report(export, args.out, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
