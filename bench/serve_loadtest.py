"""Serving on the bundled tritonserver, as a Triton operator would try it: a digits export at --max-batch 8
(the sweep, the NaN flood beside 8 good clients, a burst of 64 clients × 16 requests, bad requests, a
restart, concurrency-1 speed against the same backend in process, interleaved), an overload beyond a
queue of 16 (sent = answered + refused), the batch-invariant mode for torch-cpu-fp32-folded (bitwise
share against the sample alone without and with it, and its throughput cost), and nf_resnet50 224² at
concurrency 8 (throughput served vs in process at the batch the batcher formed), at queue delays 0 and 5 ms.

    python -m bench.serve_loadtest [--digits EXPORT] [--r50 EXPORT] [--out bench/results/serve-cpu-DATE]
        [--only digits|overload|invariance|nf_resnet50|nf_resnet50-delay5ms]

Without --digits, trains nf_digits for 2 epochs and exports it; without --r50, writes a randomised
nf_resnet50 run and exports it. Each export gets a parity report for the served backends first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

from nfdeploy.artifacts import atomic_write_json
from nfdeploy.check.backends import default_report_dir
from nfdeploy.check.parity import PARITY_MD, parity_report
from nfdeploy.check.parity_options import ParityOptions
from nfdeploy.export import OnnxOverrides, export_options, export_run
from nfdeploy.machine import machine_info
from nfdeploy.serve.loadtest import LoadOptions, batch_invariance_study, loadtest
from nfdeploy.serve.loadtest_report import write_batch_invariance
from nfdeploy.train.random_run import write_random_run

SERVED = "onnxruntime-cpu-fp32"
TORCH = "torch-cpu-fp32-folded"
RUNS = {
    "digits": dict(
        export="digits",
        serve=["--backend", SERVED, "--max-batch", "8"],
        opts=LoadOptions(concurrency=(1, 2, 4, 8, 16), window_s=1.0, max_windows=10, samples=32, speed_time_s=15.0),
    ),
    "overload": dict(
        export="digits",
        serve=["--backend", SERVED, "--max-batch", "8", "--max-queue-size", "16"],
        opts=LoadOptions(
            concurrency=(1,),
            window_s=1.0,
            max_windows=3,
            samples=32,
            overload=64,
            overload_requests=16,
            faults=False,
            speed=False,
        ),
    ),
    "nf_resnet50": dict(
        export="nf_resnet50",
        serve=["--backend", SERVED, "--max-batch", "8"],
        opts=LoadOptions(
            concurrency=(1, 8),
            window_s=5.0,
            max_windows=4,
            samples=16,
            timeout_s=60.0,
            burst_clients=0,
            speed_time_s=30.0,
        ),
    ),
    # The same at a 5 ms queue delay: a closed loop of 8 clients otherwise alternates batches of 1 and 7.
    "nf_resnet50-delay5ms": dict(
        export="nf_resnet50",
        serve=["--backend", SERVED, "--max-batch", "8", "--max-queue-delay-us", "5000"],
        opts=LoadOptions(
            concurrency=(8,), window_s=5.0, max_windows=4, samples=16, timeout_s=60.0, faults=False, speed_time_s=30.0
        ),
    ),
}


def make_export(kind: str, root: Path) -> Path:
    if kind == "digits":
        from nfdeploy.config import load_recipe
        from nfdeploy.train import train

        run = train(load_recipe("nf_digits", {"train.epochs": 2}), root / "run", progress=False).run_dir
    else:
        run = write_random_run(root / "run", "nf_resnet50", input_size=224)
    export_run(run, root / "export", export_options(onnx=OnnxOverrides(precisions=["fp32"], check=False)))
    parity_report(root / "export", options=ParityOptions(only=[SERVED, TORCH], max_samples=64, invariance_samples=8))
    return root / "export"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"serve-cpu-{date.today()}")
    ap.add_argument("--digits", type=Path, default=None)
    ap.add_argument("--r50", type=Path, default=None)
    ap.add_argument("--only", choices=[*RUNS, "invariance"], default=None)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "machine.json", machine_info())
    with tempfile.TemporaryDirectory() as td:
        exports = {"digits": args.digits, "nf_resnet50": args.r50}

        def export(kind: str) -> Path:
            if exports[kind] is None:
                exports[kind] = make_export(kind, Path(td) / kind)
            return exports[kind]

        for name, run in RUNS.items():
            if args.only and name != args.only:
                continue
            out = args.out / name
            loadtest(export(run["export"]), out, run["opts"], serve_args=run["serve"])
            (out.parent / f"{out.name}-server.log").unlink(missing_ok=True)  # the server's own log stays out
            shutil.copy(default_report_dir(export(run["export"])) / PARITY_MD, out / PARITY_MD)
        if args.only in (None, "invariance"):
            rep = batch_invariance_study(export("digits"), TORCH, max_batch=8, concurrency=8, threads=2)
            write_batch_invariance(rep, args.out / "invariance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
